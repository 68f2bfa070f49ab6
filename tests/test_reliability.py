"""Reliability and safety (issue #8): bad input fails early with one clear message (also through the CLI, whose
process exits with status 2 and one `error:` line), runs killed at any moment resume to the same final metrics,
checkpoints are atomic, verified and safe to load, numerical faults stop (or skip) cleanly, the remote code does
no I/O at import, and generation and evaluation stream in bounded memory.

Runs are tiny (emb/hidden 16, z 4, a few hundred PTB lines); the SIGKILL test starts real `train_scripts/train.py`
processes (one kill by default, more seeds under `-m slow`).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from helpers import (
    SIZES,
    WORDS,
    assert_one_error_line,
    flags,
    head_lines,
    load_script,
    reset_accelerate,
    synthetic_lines,
)

from hf_sentence_vae.loading import CheckpointError, safetensors_problem
from hf_sentence_vae.modeling_sentence_vae import SentenceVAEModel
from hf_sentence_vae.training import STATE_FILE, Trainer, TrainingConfig, list_checkpoints, resolve_checkpoint, train
from hf_sentence_vae.training import checkpointing as checkpointing_module
from hf_sentence_vae.training import trainer as trainer_module
from hf_sentence_vae.training.checkpointing import (
    MANIFEST_FILE,
    TRAINING_STATE_DIR,
    checkpoint_problem,
    safe_torch_load,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hf_sentence_vae"
TRAIN_SCRIPT = REPO / "train_scripts" / "train.py"
TIMING_FIELDS = {"tokens_per_second"}
# The run every resume is compared with: 200 PTB sentences in batches of 8 (25 batches an epoch, so 40 steps cross
# an epoch boundary), checkpoints every 4 steps, evaluation every 10, dropout on (the restored RNG state matters).
RUN = dict(
    **SIZES,
    word_keep_rate=0.7,
    dropout=0.1,
    max_length=30,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    max_train_steps=40,
    logging_steps=1,
    eval_steps=10,
    checkpointing_steps="4",
    kl_schedule="linear",
    kl_warmup_steps=30,
    learning_rate=3e-3,
    seed=11,
    disable_tqdm=True,
)


# --------------------------------------------------------------------------- helpers and fixtures
def _train(config: TrainingConfig) -> dict:
    reset_accelerate()
    return train(config)


def _records(output_dir) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_same_run(output_dir, results: dict, reference_dir, reference: dict, rel: float = 1e-5) -> None:
    """Same final metrics and the same per-step records (timings aside) as the reference run."""
    for key in ("global_step", "best_step", "skipped_steps"):
        assert results[key] == reference[key], key
    keys = [k for k in reference if k.startswith(("validation_", "test_", "best_validation"))]
    assert keys
    for key in keys:
        assert results[key] == pytest.approx(reference[key], rel=rel, abs=1e-7), key
    got, want = _records(output_dir), _records(reference_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a.keys() - TIMING_FIELDS:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), f"step {a['step']} {key}"


@pytest.fixture(scope="module")
def ptb_run_data(ptb_dir: Path, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("ptb_reliability")
    return {
        "train_file": head_lines(ptb_dir / "ptb.train.txt", folder / "train.txt", 200),
        "validation_file": head_lines(ptb_dir / "ptb.valid.txt", folder / "valid.txt", 40),
        "test_file": head_lines(ptb_dir / "ptb.test.txt", folder / "test.txt", 40),
    }


@pytest.fixture(scope="module")
def reference(ptb_run_data, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted 40-step run (in this process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    results = _train(TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN))
    assert results["global_step"] == 40
    return out, results


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, str]:
    """A synthetic corpus (no PTB needed) for the bad-input tests."""
    folder = tmp_path_factory.mktemp("synthetic")
    for split, n, seed in (("train", 64, 0), ("validation", 16, 1)):
        (folder / f"{split}.txt").write_text("\n".join(synthetic_lines(n, seed)) + "\n", encoding="utf-8")
    return {"train_file": str(folder / "train.txt"), "validation_file": str(folder / "validation.txt")}


def _tiny_flags(data: dict, out: Path, **overrides) -> list[str]:
    settings = dict(**data, output_dir=str(out), **SIZES, max_length=30, per_device_train_batch_size=8)
    settings.update(max_train_steps=2, disable_tqdm="true")
    settings.update(overrides)
    return flags(settings)


def _load_train_script():
    return load_script(TRAIN_SCRIPT, "train_script_reliability")


@pytest.fixture(scope="module")
def train_script():
    return _load_train_script()


def _cli_error(train_script, capsys, argv: list[str], pattern: str) -> str:
    """Run the CLI's `main` in this process: exit status 2 and exactly one `error: ...` line matching `pattern`."""
    reset_accelerate()
    capsys.readouterr()
    status = train_script.main(argv)
    return assert_one_error_line(status, capsys.readouterr().err, pattern)


def _no_training_happened(out: Path) -> None:
    assert not (out / "metrics.jsonl").exists()
    assert not list_checkpoints(out)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    return env


def _cli_subprocess(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        cwd=str(REPO),
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr[-3000:]


# --------------------------------------------------------------------------- bad input, one clear error each
def test_missing_data_file(train_script, capsys, small_data, tmp_path):
    data = dict(small_data, train_file=str(tmp_path / "nope.txt"))
    _cli_error(train_script, capsys, _tiny_flags(data, tmp_path / "run"), r"--train_file '.*nope\.txt' does not exist")
    _no_training_happened(tmp_path / "run")


def test_data_file_that_is_a_directory(train_script, capsys, small_data, tmp_path):
    data = dict(small_data, validation_file=str(tmp_path))
    _cli_error(train_script, capsys, _tiny_flags(data, tmp_path / "run"), r"--validation_file .* is a directory")


def test_empty_data_file(train_script, capsys, small_data, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    data = dict(small_data, train_file=str(tmp_path / "empty.txt"))
    _cli_error(train_script, capsys, _tiny_flags(data, tmp_path / "run"), r"--train_file .*empty\.txt' is empty")
    _no_training_happened(tmp_path / "run")


def test_blank_only_data_file(train_script, capsys, small_data, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\t\n\r\n")
    data = dict(small_data, validation_file=str(tmp_path / "blank.txt"))
    _cli_error(train_script, capsys, _tiny_flags(data, tmp_path / "run"), "validation split has no non-blank lines")


def test_blank_lines_are_skipped_and_counted(small_data, tmp_path, caplog):
    lines = synthetic_lines(40)
    text = "\n\n".join(lines[:10]) + "\n   \n\t\n" + "\n".join(lines[10:]) + "\n"  # 9 + 2 blank lines
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    config = TrainingConfig(
        **dict(small_data, train_file=str(tmp_path / "train.txt")), output_dir=str(tmp_path / "o"), **SIZES
    )
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert len(trainer.corpora["train"]) == 40
    assert "train: skipped 11 blank line(s)" in caplog.text


def test_non_utf8_bytes_beyond_the_first_mebibyte(train_script, capsys, small_data, tmp_path):
    """The whole file is checked, not a sample: a latin-1 byte after 1.6 MB is reported with its line."""
    good = ("\n".join(synthetic_lines(200)) + "\n").encode("utf-8")
    repeats = (1_600_000 // len(good)) + 1
    bad = good * repeats + "the caf\u00e9 was open .\n".encode("latin-1") + good
    (tmp_path / "late.txt").write_bytes(bad)
    data = dict(small_data, train_file=str(tmp_path / "late.txt"))
    line = 200 * repeats + 1
    _cli_error(
        train_script,
        capsys,
        _tiny_flags(data, tmp_path / "run"),
        rf"--train_file .*late\.txt' is not valid UTF-8: line {line}, byte {len(good) * repeats + 7}",
    )
    _no_training_happened(tmp_path / "run")


def test_non_utf8_file_through_a_real_process(small_data, tmp_path):
    """End to end: the process exits with status 2 and a one-line message, no traceback."""
    (tmp_path / "latin.txt").write_bytes("le caf\u00e9 .\n".encode("latin-1") * 5)
    data = dict(small_data, train_file=str(tmp_path / "latin.txt"))
    proc = _cli_subprocess(_tiny_flags(data, tmp_path / "run"))
    _assert_one_line_error(proc, r"latin\.txt' is not valid UTF-8: line 1, byte 6")
    _no_training_happened(tmp_path / "run")


def test_over_long_lines_are_truncated_and_counted(small_data, tmp_path, caplog):
    lines = synthetic_lines(30)
    lines[3] = " ".join(WORDS[i % len(WORDS)] for i in range(20_000))  # one enormous line
    lines[7] = " ".join(["cat"] * 40)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = dict(small_data, train_file=str(tmp_path / "train.txt"))
    config = TrainingConfig(**data, output_dir=str(tmp_path / "o"), **SIZES, max_length=30)
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert "train: truncated 2 line(s) longer than max_length=30 tokens" in caplog.text
    assert trainer.truncated["train"] == 2
    corpus = trainer.corpora["train"]
    assert int(corpus.lengths.max()) == 30
    assert corpus.ids[corpus.offsets[4] - 1] == trainer.tokenizer.eos_token_id  # truncated rows keep their <eos>


def test_special_token_strings_in_the_text_become_unk(small_data, tmp_path, caplog):
    """A literal `<pad>` or `<bos>` in a sentence would be an unpredictable target (an infinite loss)."""
    lines = synthetic_lines(30)
    lines[0] = "the <pad> cat sat ."
    lines[1] = "a dog<bos>ran <eos> home ."
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = dict(small_data, train_file=str(tmp_path / "train.txt"))
    config = TrainingConfig(**data, output_dir=str(tmp_path / "o"), **SIZES)
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert "train: replaced 3 special-token string(s)" in caplog.text
    tokenizer, corpus = trainer.tokenizer, trainer.corpora["train"]
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    for row in range(len(corpus)):
        inner = corpus.ids[corpus.offsets[row] + 1 : corpus.offsets[row + 1] - 1]
        assert not specials.intersection(inner.tolist())
    batch = corpus.batch(torch.arange(4).numpy())
    assert torch.isfinite(trainer.model(**batch, return_logits=False).loss)


def test_text_column_that_does_not_exist(train_script, capsys, tmp_path):
    folder = tmp_path / "csv_dataset"
    folder.mkdir()
    rows = ["sentence,label"] + [f"{line},{i % 2}" for i, line in enumerate(synthetic_lines(12))]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    argv = _tiny_flags({}, tmp_path / "run", dataset_name=str(folder), text_column="text")
    _cli_error(train_script, capsys, argv, r"--text_column 'text' is not a column .*sentence")
    _no_training_happened(tmp_path / "run")


@pytest.fixture(scope="module")
def pretrained_folder(small_data, tmp_path_factory) -> Path:
    """A saved model + tokenizer folder (the `best/` of a 2-step run)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    _train(TrainingConfig(**small_data, output_dir=str(out), **SIZES, max_train_steps=2, disable_tqdm=True))
    return out / "best"


def test_tokenizer_that_does_not_match_the_model(train_script, capsys, small_data, pretrained_folder, tmp_path):
    from hf_sentence_vae import build_tokenizer

    build_tokenizer(["a b c d e f"]).save_pretrained(tmp_path / "other_tokenizer")
    argv = _tiny_flags(
        small_data,
        tmp_path / "run",
        model_name_or_path=pretrained_folder,
        tokenizer_name_or_path=tmp_path / "other_tokenizer",
    )
    _cli_error(train_script, capsys, argv, r"tokenizer vocabulary size 10 does not match the model's vocab_size")
    _no_training_happened(tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"latent_size": -1}, r"invalid latent_size=-1: must be a non-negative integer"),
        ({"dropout": 1.5}, r"invalid dropout=1.5"),
        ({"word_keep_rate": 2}, r"invalid word_keep_rate=2"),
        ({"latent_injection": "inputs"}, r"invalid latent_injection='inputs'"),
        ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size must be >= 1"),
        ({"learning_rate": -1}, r"learning_rate must be a finite number > 0"),
        ({"max_length": 2}, r"max_length must be >= 3"),
        ({"checkpointing_steps": "often"}, r"checkpointing_steps must be a positive integer or 'epoch'"),
        ({"kl_schedule": "cosine"}, r"kl_schedule must be one of"),
    ],
)
def test_impossible_settings(train_script, capsys, small_data, tmp_path, overrides, pattern):
    started = time.perf_counter()
    _cli_error(train_script, capsys, _tiny_flags(small_data, tmp_path / "run", **overrides), pattern)
    _no_training_happened(tmp_path / "run")
    assert time.perf_counter() - started < 30


def test_impossible_override_of_a_pretrained_model(train_script, capsys, small_data, pretrained_folder, tmp_path):
    argv = _tiny_flags(small_data, tmp_path / "run", model_name_or_path=pretrained_folder, word_keep_rate=-0.5)
    _cli_error(train_script, capsys, argv, r"invalid word_keep_rate=-0.5")


def test_unknown_key_in_a_config_file(train_script, capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("train_file: a.txt\nlearning_rat: 0.1\n")
    _cli_error(train_script, capsys, ["--config", str(tmp_path / "run.yaml")], r"unknown option\(s\): learning_rat")


@pytest.mark.parametrize("damage", ["missing_folder", "no_weights", "bin_only", "truncated", "garbage", "no_config"])
def test_model_folder_with_missing_or_corrupt_weights(
    train_script, capsys, small_data, pretrained_folder, tmp_path, damage
):
    folder = tmp_path / "model"
    if damage != "missing_folder":
        shutil.copytree(pretrained_folder, folder)
    weights = folder / "model.safetensors"
    if damage in ("no_weights", "bin_only"):
        weights.unlink()
        if damage == "bin_only":
            (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    elif damage == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif damage == "no_config":
        (folder / "config.json").unlink()
    patterns = {
        "missing_folder": r"--model_name_or_path '.*model' does not exist",
        "no_weights": r"has no model\.safetensors$",
        "bin_only": r"has no model\.safetensors \(found pytorch_model\.bin: only safetensors weights are loaded\)",
        "truncated": r"model\.safetensors is \d+ bytes but its header describes \d+ bytes \(truncated or corrupt\)",
        "garbage": r"model\.safetensors is 64 bytes but declares a \d+-byte header",
        "no_config": r"has no config\.json: not a saved model folder",
    }
    argv = _tiny_flags(small_data, tmp_path / "run", model_name_or_path=folder)
    started = time.perf_counter()
    _cli_error(train_script, capsys, argv, patterns[damage])
    assert time.perf_counter() - started < 30  # checked before the data is read
    _no_training_happened(tmp_path / "run")


def test_missing_tokenizer_folder(train_script, capsys, small_data, tmp_path):
    argv = _tiny_flags(small_data, tmp_path / "run", tokenizer_name_or_path=tmp_path / "no_tokenizer")
    _cli_error(train_script, capsys, argv, r"--tokenizer_name_or_path '.*no_tokenizer' does not exist")
    (tmp_path / "empty_folder").mkdir()
    argv = _tiny_flags(small_data, tmp_path / "run", tokenizer_name_or_path=tmp_path / "empty_folder")
    _cli_error(train_script, capsys, argv, r"has no tokenizer\.json")


# --------------------------------------------------------------------------- interrupted training
def _poll_step(metrics: Path) -> int:
    """The highest step logged so far (torn or rewritten files tolerated)."""
    try:
        text = metrics.read_text()
    except OSError:
        return 0
    best = 0
    for line in text.splitlines():
        try:
            best = max(best, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return best


def _start_and_kill(argv: list[str], out: Path, kill_step: int, delay: float, log: Path) -> bool:
    """Start `train.py argv`, SIGKILL it `delay` seconds after it logs step `kill_step`. Returns True if killed."""
    with open(log, "a") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *argv], stdout=handle, stderr=subprocess.STDOUT, env=_env(), cwd=REPO
        )
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and _poll_step(out / "metrics.jsonl") < kill_step:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no step {kill_step} within the time limit:\n{log.read_text()[-3000:]}")
                time.sleep(0.005)
            if proc.poll() is not None:
                assert proc.returncode == 0, log.read_text()[-3000:]
                return False
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    "seed",
    [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)],
)
def test_sigkill_at_a_random_moment_then_resume_matches_the_uninterrupted_run(reference, ptb_run_data, tmp_path, seed):
    """Real `train.py` processes: killed with SIGKILL at a random step (and a random instant within it, so also
    while checkpoints are being written), then `--resume_from_checkpoint latest`: same metrics.jsonl and final
    metrics as the uninterrupted run. Seed 0 kills once; the slow seeds kill twice before finishing."""
    reference_dir, reference_results = reference
    rng = random.Random(seed)
    kills = sorted(rng.sample(range(2, 33), 1 if seed == 0 else 2))
    if len(kills) == 2 and kills[1] - kills[0] < 4:
        kills[1] = kills[0] + 4
    out = tmp_path / "run"
    base = flags(dict(**ptb_run_data, output_dir=str(out), **RUN))
    log = tmp_path / "train.log"
    for number, step in enumerate(kills):
        argv = base + (["--resume_from_checkpoint", "latest"] if number else [])
        killed = _start_and_kill(argv, out, step, rng.uniform(0.0, 0.08), log)
        assert killed, f"the run finished before the kill at step {step}"
        latest = resolve_checkpoint("latest", str(out))
        assert latest is None or checkpoint_problem(latest) is None
    proc = _cli_subprocess(base + ["--resume_from_checkpoint", "latest"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    _assert_same_run(out, results, reference_dir, reference_results)
    for checkpoint in list_checkpoints(out):
        assert checkpoint_problem(checkpoint) is None, checkpoint


class _Crash(BaseException):
    """An abrupt stop (like SIGKILL): not an Exception, so nothing on the way catches it."""


def _named(path) -> str:
    return Path(path).name


def _crash_before_manifest(original, folder):
    if _named(folder) == ".tmp-checkpoint-12":  # training state and model written, no manifest yet
        raise _Crash
    return original(folder)


def _crash_before_rename(original, tmp, final):
    if _named(final) == "checkpoint-12":  # everything written and fsynced, not yet renamed into place
        raise _Crash
    return original(tmp, final)


def _crash_while_pruning(original, path):
    if _named(path) == "checkpoint-4":  # (save_total_limit=2) moved aside and half deleted
        trash = Path(path).with_name(f".trash-{_named(path)}")
        os.replace(path, trash)
        (trash / "model.safetensors").unlink()
        raise _Crash
    return original(path)


def _crash_while_replacing_best(calls: dict):
    def action(original, tmp, final):
        if _named(final) == "best":
            calls["best"] = calls.get("best", 0) + 1
            if calls["best"] == 2:  # the old best/ moved aside, the new one not yet in place
                os.replace(final, Path(final).with_name(".trash-best"))
                raise _Crash
        return original(tmp, final)

    return action


def _second_improvement_step(reference_dir: Path) -> int:
    evals = [r for r in _records(reference_dir) if "validation_loss" in r]
    improved = [r["step"] for r in evals if r["validation_loss"] == r["best_validation_loss"]]
    return improved[1]


@pytest.mark.parametrize("point", ["before_manifest", "before_rename", "while_pruning", "while_replacing_best"])
def test_crash_inside_checkpointing_then_resume_matches_the_uninterrupted_run(
    reference, ptb_run_data, tmp_path, monkeypatch, point
):
    """Deterministic crashes at the delicate moments of saving: the half-written state is never taken as the
    latest checkpoint, and resuming gives the uninterrupted run's results. Resuming uses neither Accelerate's
    `load_state` nor its unpickling of custom objects."""
    reference_dir, reference_results = reference
    module, name, action = {
        "before_manifest": (checkpointing_module, "write_manifest", _crash_before_manifest),
        "before_rename": (trainer_module, "replace_dir", _crash_before_rename),
        "while_pruning": (checkpointing_module, "remove_dir", _crash_while_pruning),
        "while_replacing_best": (trainer_module, "replace_dir", _crash_while_replacing_best({})),
    }[point]
    out = tmp_path / "run"
    limit = {"save_total_limit": 2} if point == "while_pruning" else {}
    config = TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN, **limit)
    original = getattr(module, name)
    with monkeypatch.context() as patch:
        patch.setattr(module, name, lambda *args: action(original, *args))
        with pytest.raises(_Crash):
            _train(config)
    if point == "while_replacing_best":
        step = _second_improvement_step(reference_dir)
        expected = f"checkpoint-{4 * ((step - 1) // 4)}"  # the checkpoint of that step comes after the evaluation
        assert not (out / "best").exists()
    else:
        expected = {
            "before_manifest": "checkpoint-8",
            "before_rename": "checkpoint-8",
            "while_pruning": "checkpoint-12",
        }[point]
    assert resolve_checkpoint("latest", str(out)).name == expected
    if point == "while_pruning":
        assert [p.name for p in list_checkpoints(out)] == ["checkpoint-8", "checkpoint-12"]

    def forbidden(*args, **kwargs):
        raise AssertionError("resume must not use accelerate's pickle-based load_state")

    import accelerate.checkpointing

    monkeypatch.setattr("accelerate.Accelerator.load_state", forbidden)
    monkeypatch.setattr(accelerate.checkpointing, "load_custom_state", forbidden)
    config.resume_from_checkpoint = "latest"
    results = _train(config)
    _assert_same_run(out, results, reference_dir, reference_results)
    assert not list(out.glob(".tmp-checkpoint-*")) and not list(out.glob(".trash-*"))
    if point == "while_pruning":
        assert [p.name for p in list_checkpoints(out)] == ["checkpoint-36", "checkpoint-40"]


def _ddp_worker(config_kwargs: dict) -> None:
    reset_accelerate()
    torch.set_num_threads(1)
    train(TrainingConfig(**config_kwargs))


@pytest.mark.slow
def test_two_process_resume_matches_the_uninterrupted_two_process_run(ptb_run_data, tmp_path):
    """Under DDP (2 CPU processes) each process restores its own random state (`rng_state_<rank>.pt`)."""
    from accelerate import debug_launcher

    run = dict(RUN, per_device_train_batch_size=4, max_train_steps=16)
    full = TrainingConfig(**ptb_run_data, output_dir=str(tmp_path / "full"), **run)
    first = TrainingConfig(**ptb_run_data, output_dir=str(tmp_path / "part"), **dict(run, max_train_steps=10))
    rest = TrainingConfig(**ptb_run_data, output_dir=str(tmp_path / "part"), **run, resume_from_checkpoint="latest")
    try:
        for config in (full, first, rest):
            debug_launcher(_ddp_worker, args=(dict(vars(config)),), num_processes=2)
    finally:
        reset_accelerate()
    state = tmp_path / "part" / "checkpoint-8" / TRAINING_STATE_DIR
    assert {p.name for p in state.iterdir()} == {"optimizer.pt", "scheduler.pt", "rng_state_0.pt", "rng_state_1.pt"}
    want = json.loads((tmp_path / "full" / "results.json").read_text())
    got = json.loads((tmp_path / "part" / "results.json").read_text())
    assert want["world_size"] == got["world_size"] == 2
    _assert_same_run(tmp_path / "part", got, tmp_path / "full", want)


def test_torn_metrics_line_is_dropped_on_resume(reference, ptb_run_data, tmp_path):
    """A kill in the middle of writing a log record leaves a torn last line; resuming drops it."""
    reference_dir, reference_results = reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir, out)
    for path in list_checkpoints(out)[6:]:  # keep checkpoints 4..24
        shutil.rmtree(path)
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 41, "loss": 3.')
    config = TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN, resume_from_checkpoint="latest")
    results = _train(config)
    _assert_same_run(out, results, reference_dir, reference_results)


# --------------------------------------------------------------------------- corrupt checkpoints
@pytest.mark.parametrize("damage", ["truncated_weights", "flipped_optimizer_byte", "missing_rng", "bad_state_json"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    reference, ptb_run_data, tmp_path, caplog, train_script, capsys, damage
):
    reference_dir, reference_results = reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir, out)
    newest = out / "checkpoint-40"
    if damage == "truncated_weights":
        weights = newest / "model.safetensors"
        os.truncate(weights, weights.stat().st_size - 100)
        pattern = r"model\.safetensors is \d+ bytes, the manifest says \d+"
    elif damage == "flipped_optimizer_byte":
        optimizer = newest / TRAINING_STATE_DIR / "optimizer.pt"
        data = bytearray(optimizer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        optimizer.write_bytes(bytes(data))
        pattern = r"training_state/optimizer\.pt does not match its SHA-256"
    elif damage == "missing_rng":
        (newest / TRAINING_STATE_DIR / "rng_state_0.pt").unlink()
        pattern = r"training_state/rng_state_0\.pt is missing"
    else:
        (newest / STATE_FILE).write_text('{"global_step": 4')
        pattern = rf"{STATE_FILE} is \d+ bytes, the manifest says"
    with caplog.at_level(logging.WARNING):
        latest = resolve_checkpoint("latest", str(out))
    assert latest == out / "checkpoint-36"
    assert "skipping corrupt checkpoint" in caplog.text and "checkpoint-40" in caplog.text
    with pytest.raises(CheckpointError, match=pattern):
        resolve_checkpoint(str(newest), str(out))
    argv = flags(dict(**ptb_run_data, output_dir=str(tmp_path / "other"), **RUN)) + [
        "--resume_from_checkpoint",
        str(newest),
    ]
    message = _cli_error(
        train_script, capsys, argv, rf"--resume_from_checkpoint '.*checkpoint-40' is corrupt: {pattern}"
    )
    assert "checkpoint-36" in message  # names the others

    results = _train(TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN, resume_from_checkpoint="latest"))
    _assert_same_run(out, results, reference_dir, reference_results)
    assert checkpoint_problem(out / "checkpoint-40") is None  # rewritten by the resumed run


def test_checkpoint_without_manifest_is_checked_structurally(reference, tmp_path):
    """Checkpoints written before manifests existed: the weights' safetensors structure is verified."""
    reference_dir, _ = reference
    folder = tmp_path / "checkpoint-40"
    shutil.copytree(reference_dir / "checkpoint-40", folder)
    (folder / MANIFEST_FILE).unlink()
    assert checkpoint_problem(folder) is None
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    assert "truncated or corrupt" in checkpoint_problem(folder)
    assert safetensors_problem(weights) == checkpoint_problem(folder)
    with pytest.raises(CheckpointError, match="is corrupt: model.safetensors is"):
        resolve_checkpoint(str(folder), str(tmp_path))


# --------------------------------------------------------------------------- numerical faults
def _nan_at(monkeypatch, training_call: int) -> None:
    """Make the `training_call`-th training-mode forward pass return a NaN loss."""
    original = SentenceVAEModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == training_call:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SentenceVAEModel, "forward", forward)


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = TrainingConfig(**small_data, output_dir=str(out), **SIZES, max_train_steps=10, logging_steps=1)
    config.checkpointing_steps, config.per_device_train_batch_size, config.disable_tqdm = "4", 8, True
    _nan_at(monkeypatch, 7)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss \(NaN or inf\) at step 7; the last good checkpoint is .*checkpoint-4\b",
    ):
        _train(config)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert checkpoint_problem(out / "checkpoint-4") is None
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in _records(out) if "loss" in r)


def test_nan_loss_is_skipped_and_counted_under_the_flag(small_data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    config = TrainingConfig(**small_data, output_dir=str(out), **SIZES, max_train_steps=10, logging_steps=1)
    config.per_device_train_batch_size, config.disable_tqdm, config.on_nonfinite_loss = 8, True, "skip"
    _nan_at(monkeypatch, 7)
    with caplog.at_level(logging.WARNING):
        results = _train(config)
    assert results["skipped_steps"] == 1 and results["global_step"] == 10
    assert "non-finite loss at step 7: batch skipped (1 so far)" in caplog.text
    assert [r["step"] for r in _records(out) if "loss" in r] == list(range(1, 11))
    assert all(math.isfinite(r["loss"]) for r in _records(out) if "loss" in r)


def _diverging_flags(small_data, out: Path) -> list[str]:
    return _tiny_flags(small_data, out, max_train_steps=10, learning_rate=1e30, max_grad_norm=0, checkpointing_steps=1)


def _check_divergence_error(line: str, out: Path) -> None:
    step = int(line.split("at step ")[-1].split(";")[0])
    assert [p.name for p in list_checkpoints(out)][-1] == f"checkpoint-{step - 1}"
    assert checkpoint_problem(out / f"checkpoint-{step - 1}") is None


DIVERGENCE = r"non-finite loss \(NaN or inf\) at step \d+; the last good checkpoint is .*checkpoint-\d+"


def test_diverging_run_through_the_cli(train_script, capsys, small_data, tmp_path):
    """A learning rate of 1e30 makes the loss non-finite within a few steps: status 2, one line naming the step
    and the last good checkpoint, which stays intact."""
    out = tmp_path / "run"
    line = _cli_error(train_script, capsys, _diverging_flags(small_data, out), DIVERGENCE)
    _check_divergence_error(line, out)


@pytest.mark.slow
def test_diverging_run_through_a_real_process(small_data, tmp_path):
    out = tmp_path / "run"
    proc = _cli_subprocess(_diverging_flags(small_data, out))
    _assert_one_line_error(proc, DIVERGENCE)
    _check_divergence_error(proc.stderr.strip().splitlines()[-1], out)


# --------------------------------------------------------------------------- safe files
def test_run_folder_holds_only_safetensors_weights_and_weights_only_state(reference):
    """No pickled objects anywhere: weights are safetensors; the optimizer, scheduler and RNG states load with
    `torch.load(weights_only=True)`."""
    reference_dir, _ = reference
    files = [p for p in reference_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pkl", ".pickle", ".pth", ".ckpt")]
    state_files = [p for p in files if p.suffix == ".pt"]
    assert state_files and all(p.parent.name == TRAINING_STATE_DIR for p in state_files)
    names = {p.name for p in (reference_dir / "checkpoint-40" / TRAINING_STATE_DIR).iterdir()}
    assert names == {"optimizer.pt", "scheduler.pt", "rng_state_0.pt"}
    for path in state_files:
        safe_torch_load(path)  # raises on anything but tensors and plain containers
    for checkpoint in list_checkpoints(reference_dir):
        assert checkpoint_problem(checkpoint) is None
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
        assert set(manifest) == {
            p.relative_to(checkpoint).as_posix()
            for p in checkpoint.rglob("*")
            if p.is_file() and p.name != MANIFEST_FILE
        }
    assert (reference_dir / "best" / "model.safetensors").is_file()


def test_every_torch_load_is_weights_only_and_nothing_is_unpickled():
    """In the package and the scripts: every `torch.load` passes `weights_only=True`, nothing passes
    `weights_only=False`, and neither `pickle.load` nor Accelerate's `save_state`/`load_state`/
    `register_for_checkpointing` (which unpickle registered objects with weights_only=False) is used."""
    sources = [*PACKAGE.rglob("*.py"), *(REPO / "train_scripts").glob("*.py")]
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = _dotted(call.func)
            where = f"{path.name}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{where} torch.load without weights_only"
                )
            if "weights_only" in keywords:
                value = keywords["weights_only"]
                assert not (isinstance(value, ast.Constant) and value.value is False), f"{where} weights_only=False"
            assert name not in ("pickle.load", "pickle.loads", "dill.load"), where
            last = name.rsplit(".", 1)[-1]
            assert last not in ("save_state", "load_state", "register_for_checkpointing"), f"{where} {name}"


ALLOWED_AT_IMPORT = {"logging.get_logger", "torch.no_grad", "math.log", "math.sqrt", "math.pi", "dataclass", "field"}
CORE = {"torch", "transformers"}


def _import_time_nodes(body):
    """Statements and expressions evaluated when a module is imported: module-level code, class bodies,
    decorators and default values (not function bodies)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from node.decorator_list
            yield from node.args.defaults
            yield from (d for d in node.args.kw_defaults if d is not None)
        elif isinstance(node, ast.ClassDef):
            yield from node.decorator_list
            yield from node.bases
            yield from node.keywords
            yield from _import_time_nodes(node.body)
        else:
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return type(node).__name__


def test_shipped_remote_code_imports_only_core_packages_and_does_no_io_at_import(tiny_model, tiny_tokenizer, tmp_path):
    """Parse the files `save_pretrained` actually ships: imports are the standard library, torch and transformers
    (plus tokenizers for the tokenizer), or each other; the only calls made at import time are a few harmless
    ones (no open/read/write, network, subprocess or environment-dependent I/O)."""
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    shipped = sorted(tmp_path.glob("*.py"))
    assert {p.name for p in shipped} >= {"configuration_sentence_vae.py", "modeling_sentence_vae.py"}
    assert not {p.name for p in shipped} & {"training.py", "data.py", "checkpointing.py", "hub.py", "metrics.py"}
    stdlib = set(sys.stdlib_module_names)
    for path in shipped:
        tree = ast.parse(path.read_text(), filename=path.name)
        allowed = CORE | ({"tokenizers"} if path.name.startswith("tokenization") else set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (tmp_path / f"{node.module}.py").is_file(), f"{path.name} imports .{node.module}, not shipped"
                continue
            modules = (
                [node.module]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for module in modules:
                top = module.split(".")[0]
                assert top in stdlib or top in allowed, f"{path.name} imports {module}"
                assert top not in {"subprocess", "socket", "urllib", "http", "shutil", "pickle", "ctypes"}, module
        for node in _import_time_nodes(tree.body):
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                name = _dotted(call.func)
                assert name in ALLOWED_AT_IMPORT, f"{path.name}:{call.lineno} calls {name}() at import time"
            for sub in ast.walk(node):
                assert not isinstance(sub, (ast.With, ast.AsyncWith, ast.Global)), f"{path.name}:{sub.lineno}"


# --------------------------------------------------------------------------- streaming under load
@pytest.fixture(scope="module")
def stream_model():
    from hf_sentence_vae import SentenceVAEConfig, build_tokenizer

    tokenizer = build_tokenizer([" ".join(WORDS)])
    torch.manual_seed(0)
    config = SentenceVAEConfig(vocab_size=len(tokenizer), word_keep_rate=1.0, **SIZES)
    return SentenceVAEModel(config).eval(), tokenizer


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(consume) -> tuple[int, int]:
    """(tracemalloc peak of Python allocations, RSS growth) while `consume()` runs; RSS sampled by the callback."""
    rss = {"base": _rss(), "max": 0}

    def sample():
        rss["max"] = max(rss["max"], _rss())

    tracemalloc.start(1)
    try:
        consume(sample)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, max(rss["max"] - rss["base"], 0)


def test_generate_stream_memory_does_not_grow_with_the_number_of_sentences(stream_model):
    """20,000 decoded sentences (20 words each, ~2 MB of text if they were kept) take no more memory than 2,000."""
    from hf_sentence_vae.streaming import generate_stream

    model, tokenizer = stream_model
    counts = {}

    def run(n):
        def consume(sample):
            total = 0
            for texts in generate_stream(
                model, tokenizer, n, batch_size=500, generator=torch.Generator().manual_seed(0), min_new_tokens=20,
                max_new_tokens=20,
            ):  # fmt: skip
                assert all(isinstance(t, str) and t for t in texts)
                total += len(texts)
                sample()
            counts[n] = total

        return _measure(consume)

    run(500)  # warm-up (lazy imports, allocator pools)
    small_peak, _ = run(2_000)
    large_peak, large_rss = run(20_000)
    assert counts == {500: 500, 2_000: 2_000, 20_000: 20_000}
    assert large_peak < 1.5 * small_peak + 256 * 1024, (small_peak, large_peak)
    assert large_rss < 64 * 2**20, large_rss
    first = next(generate_stream(model, tokenizer, 8, generator=torch.Generator().manual_seed(1), do_sample=True))
    again = next(generate_stream(model, tokenizer, 8, generator=torch.Generator().manual_seed(1), do_sample=True))
    assert first == again and len(first) == 8


def test_write_generated_writes_all_lines_atomically(stream_model, tmp_path):
    from hf_sentence_vae.streaming import write_generated

    model, tokenizer = stream_model
    path = tmp_path / "samples.txt"
    assert write_generated(path, model, tokenizer, 1_234, batch_size=500, max_new_tokens=10) == 1_234
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1_234
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="num_sentences"):
        write_generated(tmp_path / "x.txt", model, tokenizer, -1)
    assert not (tmp_path / "x.txt").exists()


def test_evaluate_file_streams_and_matches_the_in_memory_evaluation(stream_model, tmp_path):
    from hf_sentence_vae.metrics import evaluate_model, length_sorted_batches, read_sentences
    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = stream_model
    lines = synthetic_lines(300, seed=5)
    (tmp_path / "eval.txt").write_text("\n".join(lines[:100]) + "\n\n  \n" + "\n".join(lines[100:]) + "\n")
    streamed = evaluate_file(
        model, tokenizer, tmp_path / "eval.txt", batch_size=32, pool_batches=100, iw_samples=3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    sentences, blank = read_sentences(tmp_path / "eval.txt")
    in_memory = evaluate_model(
        model, length_sorted_batches(tokenizer, sentences, 32), iw_samples=3, generator=torch.Generator().manual_seed(0),
        progress=False,
    )  # fmt: skip
    assert streamed["blank_lines"] == blank == 2
    for key, value in in_memory.items():
        if isinstance(value, float):
            assert streamed[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert streamed[key] == value, key

    (tmp_path / "bad.txt").write_bytes(b"fine .\n" * 3 + b"caf\xe9 .\n")
    with pytest.raises(ValueError, match=r"input file .*bad\.txt' is not valid UTF-8: line 4"):
        evaluate_file(model, tokenizer, tmp_path / "bad.txt")


def test_evaluate_file_memory_does_not_grow_with_the_file(stream_model, tmp_path):
    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = stream_model
    path = tmp_path / "large.txt"
    path.write_text("\n".join(synthetic_lines(10_000, seed=3, high=25)) + "\n", encoding="utf-8")
    results = {}

    def run(n):
        def consume(sample):
            results[n] = evaluate_file(
                model, tokenizer, path, batch_size=100, pool_batches=5, max_sentences=n, iw_samples=0,
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            sample()

        return _measure(consume)

    run(200)
    small_peak, _ = run(1_000)
    large_peak, large_rss = run(10_000)
    assert results[1_000]["num_sentences"] == 1_000 and results[10_000]["num_sentences"] == 10_000
    assert large_peak < 1.5 * small_peak + 256 * 1024, (small_peak, large_peak)
    assert large_rss < 64 * 2**20
