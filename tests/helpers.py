"""Plain helpers shared by the training-heavy test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# `torch.export` of a size chosen by the data (the forward scores the real tokens of a batch only): torch 2.6-2.9's
# TorchDynamo and meta kernels guard on such a size and fail to export it.
needs_data_dependent_export = pytest.mark.skipif(
    torch.__version__ < "2.10",
    reason=f"torch.export of a data-dependent size needs torch >= 2.10, this is {torch.__version__}",
)


def reset_accelerate() -> None:
    """Forget any Accelerate singleton state left by an earlier run in this process (or inherited by a fork)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def head_lines(src: Path, dst: Path, n: int) -> str:
    """Write the first `n` lines of `src` to `dst`; returns `dst` as a string."""
    with open(src, encoding="utf-8") as handle:
        dst.write_text("".join(next(handle) for _ in range(n)), encoding="utf-8")
    return str(dst)


def load_script(path: Path, module_name: str | None = None, register: bool = False):
    """Import a command-line script (`train_scripts/*.py`, `benchmarks/*.py`) as a module.

    `module_name` defaults to `<stem>_script`; `register=True` also puts the module in `sys.modules`
    (dataclasses defined in the script look their module up there). The caller removes it again.
    """
    name = module_name or f"{Path(path).stem}_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the scripts, driven one way
def run_main(script, argv, capsys) -> tuple[int, str, str]:
    """A script's one entry point, `main(argv) -> int`, in this process: `(exit status, stdout, stderr)`."""
    capsys.readouterr()
    status = script.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def main_json(script, argv, capsys) -> dict:
    """`main(argv)` of a script that prints one JSON object: exit status 0, and the object."""
    import json

    status, out, err = run_main(script, argv, capsys)
    assert status == 0, err[-3000:]
    return json.loads(out)


def main_error(script, argv, capsys, pattern: str) -> str:
    """`main(argv)` of a script that must fail on its input: exit status 2 and one `error: ...` line matching
    `pattern` (see `assert_one_error_line`); returns the line."""
    status, _, err = run_main(script, argv, capsys)
    return assert_one_error_line(status, err, pattern)


# --------------------------------------------------------------------------- tiny runs and one-line CLI errors
SIZES = dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4)
WORDS = "the cat sat on mat dog ran to park a saw was green red and happy .".split()


def synthetic_lines(n: int, seed: int = 0, low: int = 3, high: int = 12) -> list[str]:
    """`n` sentences of `low` to `high` words drawn from `WORDS` (reproducible)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def flags(settings: dict) -> list[str]:
    """`{"a": 1}` -> `["--a", "1"]`."""
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def assert_one_error_line(status: int, err: str, pattern: str) -> str:
    """Exit status 2, no traceback and exactly one `error: ...` line on stderr, matching `pattern`; returns it."""
    import re

    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- tiny training runs
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "train_scripts"
TRAIN_SCRIPT = SCRIPTS / "train.py"


def tiny_settings(data: dict, out: Path, **overrides) -> dict:
    """The options of a 2-step run of a tiny model (`SIZES`, sentences of at most 30 ids, batches of 8) on `data`
    into `out`, with `overrides`."""
    settings = dict(**data, output_dir=str(out), **SIZES, max_length=30, per_device_train_batch_size=8)
    settings.update(max_train_steps=2, disable_tqdm=True)
    settings.update(overrides)
    return settings


def tiny_config(data: dict, out: Path, **overrides):
    """`tiny_settings` as a `TrainingConfig`."""
    from hf_sentence_vae.training import TrainingConfig

    return TrainingConfig(**tiny_settings(data, out, **overrides))


def tiny_argv(data: dict, out: Path, **overrides) -> list[str]:
    """`tiny_settings` as `train.py` flags."""
    settings = tiny_settings(data, out, **overrides)
    return flags({k: ("true" if v is True else v) for k, v in settings.items()})


def train_run(config) -> dict:
    """`train(config)` in this process, after any earlier run's Accelerate state is forgotten."""
    from hf_sentence_vae.training import train

    reset_accelerate()
    return train(config)


def read_records(output_dir) -> list[dict]:
    """The records of a run's `metrics.jsonl`."""
    import json

    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nothing_trained(out: Path) -> None:
    """No training record and no checkpoint in `out`."""
    from hf_sentence_vae.training import list_checkpoints

    assert not (out / "metrics.jsonl").exists()
    assert not list_checkpoints(out)


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of a run folder to damage."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def cli_error(script, capsys, argv, pattern: str) -> str:
    """`script.main(argv)` in this process: status 2 and one `error:` line matching `pattern`; returns the line."""
    return main_error(script, argv, capsys, pattern)


def train_cli_error(train_script, capsys, argv, pattern: str) -> str:
    """`train.py argv` in this process (its Accelerate state reset first): status 2, one `error:` line."""
    reset_accelerate()
    return main_error(train_script, argv, capsys, pattern)


def child_env() -> dict[str, str]:
    """The environment of a script run as a real process: one thread, no traceback switch."""
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    return env


def train_subprocess(argv: list[str], timeout: float = 180):
    """`python train_scripts/train.py argv` as a real process (`subprocess.CompletedProcess`)."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *argv],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        cwd=str(REPO),
    )


def assert_process_error_line(proc, pattern: str) -> None:
    """A finished process: status 2, no traceback, and a last stderr line `error: ...` matching `pattern`."""
    import re

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr[-3000:]


# --------------------------------------------------------------------------- a finished tiny run for the Hub tests
REPO_ID = "me/tiny-sentence-vae"
TOKEN = "hf_test_token_123"
LICENSE = "apache-2.0"


def train_tiny_run(data_dir: Path, output_dir: Path, **overrides) -> dict:
    """40 steps of a tiny VAE on the tiny corpus in `data_dir` (train/valid/test.txt), into `output_dir`."""
    kwargs = dict(
        train_file=str(data_dir / "train.txt"),
        validation_file=str(data_dir / "valid.txt"),
        test_file=str(data_dir / "test.txt"),
        output_dir=str(output_dir),
        **SIZES,
        word_keep_rate=0.8,
        per_device_train_batch_size=6,
        per_device_eval_batch_size=8,
        learning_rate=2e-2,
        max_train_steps=40,
        logging_steps=5,
        eval_steps=10,
        kl_schedule="constant",
        kl_constant=0.05,  # a small KL weight keeps the tiny latent space in use: varied samples
        disable_tqdm=True,
        seed=7,
    )
    kwargs.update(overrides)
    from hf_sentence_vae.training import TrainingConfig

    return train_run(TrainingConfig(**kwargs))


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` in a markdown text."""
    import re

    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def card_samples(text: str) -> tuple[list[str], list[str]]:
    """(prior samples, homotopy decodes) as a model card's text blocks list them."""
    import re

    blocks = code_blocks(text, "text")
    prior = [re.sub(r"^\d+\. ?", "", line) for line in blocks[0].splitlines()]
    path = [re.sub(r"^a=\d\.\d\d  ?", "", line) for line in blocks[1].splitlines()] if len(blocks) > 1 else []
    return prior, path


def assert_records_close(got: list[dict], want: list[dict], rel: float, abs_tol: float, timing=("tokens_per_second",)):
    """Two runs' `metrics.jsonl` records: the same steps and keys, every value but the timings within `rel` and
    `abs_tol`."""
    import pytest

    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys(), (a, b)
        for key in a.keys() - set(timing):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=abs_tol), (
                f"step {a['step']} {key}: {a[key]} != {b[key]}"
            )


def dotted_name(node) -> str:
    """`a.b.c` of an `ast` Name/Attribute chain (the node's type name for anything else)."""
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted_name(node.value)}.{node.attr}"
    return type(node).__name__


def ptb_subset(ptb_dir: Path, folder: Path, train_lines: int, other_lines: int = 40) -> dict[str, str]:
    """The first `train_lines` lines of PTB's training split and `other_lines` of its validation and test splits,
    written to `folder`, as `train_file`/`validation_file`/`test_file` options."""
    return {
        "train_file": head_lines(ptb_dir / "ptb.train.txt", folder / "train.txt", train_lines),
        "validation_file": head_lines(ptb_dir / "ptb.valid.txt", folder / "valid.txt", other_lines),
        "test_file": head_lines(ptb_dir / "ptb.test.txt", folder / "test.txt", other_lines),
    }


def quiet_training_arguments(output_dir: Path, **settings):
    """`transformers.TrainingArguments` for a test: on CPU, no checkpoints, no trackers, no progress bars; `settings`
    add to or override these."""
    from transformers import TrainingArguments

    defaults = dict(save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    return TrainingArguments(output_dir=str(output_dir), **{**defaults, **settings})
