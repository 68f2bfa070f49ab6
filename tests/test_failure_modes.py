"""Failure modes of the training and inference scripts, each reproduced: architecture flags on a pretrained model,
special-token strings in the text, impossible settings, a config that asks for weights the folder lacks, large
inputs (memory must not grow with the file), two runs on one output folder, checkpoints damaged without their
manifest, resuming with other flags, a run that trained nothing, and the one-line errors of every script (exit
status 2, never a traceback).

Runs are tiny (emb/hidden 16, z 4, a synthetic corpus of a few dozen sentences); the memory test runs the scripts in
subprocesses on generated files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    SIZES,
    WORDS,
    assert_one_error_line,
    flags,
    load_script,
    main_error,
    main_json,
    reset_accelerate,
    synthetic_lines,
)

from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel, build_tokenizer
from hf_sentence_vae import files as files_module
from hf_sentence_vae.files import OutputDirInUseError
from hf_sentence_vae.loading import CheckpointError, load_pretrained_model
from hf_sentence_vae.training import STATE_FILE, Trainer, TrainingConfig, list_checkpoints, resolve_checkpoint, train
from hf_sentence_vae.training import checkpointing as checkpointing_module
from hf_sentence_vae.training import trainer as trainer_module
from hf_sentence_vae.training.checkpointing import MANIFEST_FILE, TRAINING_STATE_DIR, checkpoint_problem, write_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "train_scripts"


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def scripts() -> dict:
    """The scripts imported as modules (their `main` runs in this process, through `run_script` for the CLI path)."""
    return {
        name: load_script(SCRIPTS / f"{SCRIPT_FILES.get(name, name)}.py", f"{name}_failure_modes")
        for name in ("train", *INFERENCE)
    }


INFERENCE = ("evaluate", "generate", "impute")
SCRIPT_FILES = {"evaluate": "evaluate_model"}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("corpus")
    for split, n, seed in (("train", 64, 0), ("validation", 16, 1)):
        (folder / f"{split}.txt").write_text("\n".join(synthetic_lines(n, seed)) + "\n", encoding="utf-8")
    return {"train_file": str(folder / "train.txt"), "validation_file": str(folder / "validation.txt")}


def _config(data: dict, out: Path, **overrides) -> TrainingConfig:
    settings = dict(**data, output_dir=str(out), **SIZES, max_length=30, per_device_train_batch_size=8)
    settings.update(max_train_steps=2, disable_tqdm=True)
    settings.update(overrides)
    return TrainingConfig(**settings)


def _argv(data: dict, out: Path, **overrides) -> list[str]:
    settings = dict(**data, output_dir=str(out), **SIZES, max_length=30, per_device_train_batch_size=8)
    settings.update(max_train_steps=2, disable_tqdm="true")
    settings.update(overrides)
    return flags(settings)


def _train(config: TrainingConfig) -> dict:
    reset_accelerate()
    return train(config)


def _train_cli(scripts, capsys, argv: list[str], pattern: str) -> str:
    """`train.py argv` in this process: status 2 and one `error:` line matching `pattern`."""
    reset_accelerate()
    capsys.readouterr()
    status = scripts["train"].main(argv)
    return assert_one_error_line(status, capsys.readouterr().err, pattern)


def _script_cli(scripts, capsys, name: str, argv: list[str], pattern: str) -> str:
    """`<name>.py argv` through its `main`: status 2, one `error:` line."""
    return main_error(scripts[name], argv, capsys, pattern)


def _nothing_trained(out: Path) -> None:
    assert not (out / "metrics.jsonl").exists() and not list_checkpoints(out)


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory) -> Path:
    """The `best/` folder of a 2-step run (model + tokenizer)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    _train(_config(small_data, out))
    return out / "best"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A saved tiny VAE over `WORDS` (max_sentence_length 30) with its tokenizer."""
    folder = tmp_path_factory.mktemp("words_model") / "model"
    tokenizer = build_tokenizer([" ".join(WORDS)])
    torch.manual_seed(0)
    config = SentenceVAEConfig(vocab_size=len(tokenizer), word_keep_rate=1.0, max_sentence_length=30, **SIZES)
    SentenceVAEModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpointed(small_data, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at steps 2, 4 and 6 (copy it before damaging anything)."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    _train(_config(small_data, out, max_train_steps=6, checkpointing_steps="2", logging_steps=1))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


# --------------------------------------------------------------------------- 1. architecture flags on a pretrained model
def test_architecture_flags_with_a_pretrained_model_are_refused(scripts, capsys, small_data, pretrained, tmp_path):
    """The weights fix the architecture: every flag that would change it is named, before any data is read."""
    argv = _argv(small_data, tmp_path / "run", model_name_or_path=pretrained, embedding_size=64, latent_size=8)
    line = _train_cli(scripts, capsys, argv, r"--model_name_or_path '.*best' fixes the architecture")
    assert "--embedding_size (16 -> 64)" in line and "--latent_size (4 -> 8)" in line
    _nothing_trained(tmp_path / "run")


def test_regularisation_flags_with_a_pretrained_model_apply(small_data, pretrained, tmp_path):
    """Flags that leave the weights' shapes alone (word dropout, dropout) are fine-tuning settings: applied, and the
    result loads with the strict loader."""
    out = tmp_path / "run"
    _train(_config(small_data, out, model_name_or_path=str(pretrained), word_keep_rate=0.5, dropout=0.2))
    model = load_pretrained_model(SentenceVAEModel, out / "best")
    assert model.config.word_keep_rate == 0.5 and model.config.dropout == 0.2


# --------------------------------------------------------------------------- 2. special-token strings in the text
@pytest.mark.parametrize("path", ["built", "reloaded"])
def test_the_tokenizer_encodes_special_token_strings_as_unk(tiny_tokenizer, tmp_path, path):
    """`<pad>`, `<bos>`, `<eos>` in the text become `<unk>`; the sentence's own `<bos>`/`<eos>` and the padding stay.
    (The copy shipped as remote code does the same: `test_remote_code_loads_without_the_package`.)"""
    from transformers import AutoTokenizer

    tokenizer = tiny_tokenizer
    if path == "reloaded":
        tiny_tokenizer.save_pretrained(tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    unk = tokenizer.unk_token_id
    texts = ["the <pad> cat sat .", "a dog<bos>ran <eos> home", "<eos>", "the cat"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    for row, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(-1).tolist()):
        assert row[0] == tokenizer.bos_token_id and row[n - 1] == tokenizer.eos_token_id
        assert not specials.intersection(row[1 : n - 1]) and set(row[n:]) <= {tokenizer.pad_token_id}
    assert tokenizer("the <pad> cat")["input_ids"] == tokenizer("the <unk> cat")["input_ids"]
    assert tokenizer("a dog<bos>ran", add_special_tokens=False)["input_ids"][2] == unk
    assert tokenizer.encode("<eos>") == [tokenizer.bos_token_id, unk, tokenizer.eos_token_id]


def _specials_file(tmp_path: Path) -> Path:
    lines = synthetic_lines(20, seed=4)
    lines[3] = "the cat <eos> <pad> sat ."
    lines[7] = "<bos> a dog ran"
    path = tmp_path / "specials.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "unks.txt").write_text(path.read_text().replace("<eos>", "<unk>").replace("<pad>", "<unk>").replace(
        "<bos>", "<unk>"
    ), encoding="utf-8")  # fmt: skip
    return path


def test_evaluate_gives_finite_figures_on_special_token_strings(scripts, model_folder, tmp_path, capsys):
    """A `<pad>` target had probability zero: the bound was infinite. Now the line scores as its `<unk>` version."""
    path = _specials_file(tmp_path)
    common = ["--model_name_or_path", str(model_folder), "--iw_samples", "2", "--no_progress"]
    results = main_json(scripts["evaluate"], [*common, "--test_file", str(path)], capsys)
    assert math.isfinite(results["nll_bound"]) and math.isfinite(results["nll_iw"])
    as_unk = main_json(scripts["evaluate"], [*common, "--test_file", str(tmp_path / "unks.txt")], capsys)
    assert results["nll_bound"] == pytest.approx(as_unk["nll_bound"], rel=1e-6)


def test_impute_and_generate_accept_special_token_strings(scripts, model_folder, tmp_path, capsys):
    path = _specials_file(tmp_path)
    summary = main_json(
        scripts["impute"],
        ["--model_name_or_path", str(model_folder), "--test_file", str(path), "--num_beams", "2", "--num_steps", "1"],
        capsys,
    )
    assert summary["num_sentences"] == 20 and math.isfinite(summary["mean_score"])
    rows = main_json(
        scripts["generate"],
        ["posterior", "--model_name_or_path", str(model_folder), "--texts", "the <pad> cat", "--input_file", str(path)],
        capsys,
    )["rows"]
    assert rows[0]["input"] == "the <pad> cat" and len(rows) == 11


def test_the_pipeline_encodes_special_token_strings_as_unk(model_folder):
    from transformers import AutoTokenizer, pipeline

    import hf_sentence_vae.pipelines  # noqa: F401  (registers the task)

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = SentenceVAEModel.from_pretrained(model_folder)
    pipe = pipeline("sentence-vae", model=model, tokenizer=tokenizer, device="cpu")
    ids = pipe.preprocess("the <pad> cat <eos> sat .")["input_ids"][0].tolist()
    assert ids[2] == ids[4] == tokenizer.unk_token_id and ids[-1] == tokenizer.eos_token_id
    assert isinstance(pipe("the <pad> cat <eos> sat .", seed=0, max_new_tokens=5)["generated_text"], str)


# --------------------------------------------------------------------------- 3 and 10. impossible training settings
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"max_grad_norm": -1}, r"max_grad_norm must be >= 0 .* gradient ascent"),
        ({"max_grad_norm": "nan"}, r"max_grad_norm must be >= 0"),
        ({"logging_steps": 0}, r"logging_steps must be >= 1"),
        ({"eval_steps": 0}, r"eval_steps must be >= 1"),
        ({"num_threads": -2}, r"num_threads must be >= 1"),
        ({"free_bits": "nan"}, r"free_bits must be a finite number >= 0, got nan"),
        ({"learning_rate": "nan"}, r"learning_rate must be a finite number > 0, got nan"),
        ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0"),
        ({"save_total_limit": -1}, r"save_total_limit must be >= 0"),
    ],
)
def test_impossible_training_settings(scripts, capsys, small_data, tmp_path, overrides, pattern):
    _train_cli(scripts, capsys, _argv(small_data, tmp_path / "run", **overrides), pattern)
    _nothing_trained(tmp_path / "run")


def test_malformed_yaml_config(scripts, capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("train_file: [a.txt\nlearning_rate: 0.1\n")
    _train_cli(scripts, capsys, ["--config", str(tmp_path / "run.yaml")], r"run\.yaml' is not valid YAML at line \d+")


def test_gradient_accumulation_longer_than_an_epoch(scripts, capsys, small_data, tmp_path):
    """64 sentences in batches of 8 are 8 batches: accumulating 20 would never take a step."""
    argv = _argv(small_data, tmp_path / "run", gradient_accumulation_steps=20)
    _train_cli(scripts, capsys, argv, r"gradient_accumulation_steps=20 is more than the 8 batch\(es\) of an epoch")
    _nothing_trained(tmp_path / "run")


def test_a_byte_order_mark_is_not_part_of_the_first_word(small_data, tmp_path):
    text = "\ufeff" + Path(small_data["train_file"]).read_text(encoding="utf-8")
    (tmp_path / "bom.txt").write_text(text, encoding="utf-8")
    reset_accelerate()
    trainer = Trainer(_config(dict(small_data, train_file=str(tmp_path / "bom.txt")), tmp_path / "run"))
    trainer.close()
    assert not [word for word in trainer.tokenizer.get_vocab() if "\ufeff" in word]
    from hf_sentence_vae.metrics import read_sentences
    from hf_sentence_vae.streaming import iter_sentences

    first = text[1:].split("\n", 1)[0]
    assert next(iter_sentences(tmp_path / "bom.txt")) == first == read_sentences(tmp_path / "bom.txt")[0][0]


# --------------------------------------------------------------------------- 4. a config that does not match the weights
def _edited_copy(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"num_highway_layers": 1}, r"asks for num_highway_layers=1 but model\.safetensors holds 0 encoder_highway"),
        ({"num_highway_layers": 100_000}, r"asks for num_highway_layers=100000 but model\.safetensors holds 0"),
        ({"embedding_size": 32}, r"model\.safetensors does not match config\.json \(\d+ weight\(s\) of another shape"),
        ({"bidirectional_encoder": True}, r"does not match config\.json \(.*missing: .*encoder\.weight_hh_l0_reverse"),
        ({"latent_size": 0}, r"does not match config\.json \(\d+ weight\(s\) unexpected: "),
        ({"max_sentence_length": 10**12}, r"invalid max_sentence_length=1000000000000: must be at most 10,000"),
        ({"max_sentence_length": 1e12}, r"invalid max_sentence_length=1000000000000\.0: must be a positive integer"),
    ],
)
def test_config_that_asks_for_other_weights(scripts, capsys, small_data, model_folder, tmp_path, changes, pattern):
    """Missing, unexpected or reshaped weights are an error of every loader, found from the safetensors header before
    anything is built (a config asking for 10^5 layers used to take gigabytes)."""
    folder = _edited_copy(model_folder, tmp_path, **changes)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=pattern):
        load_pretrained_model(SentenceVAEModel, folder)
    argv = ["--model_name_or_path", str(folder), "--test_file", small_data["validation_file"]]
    _script_cli(scripts, capsys, "evaluate", argv, pattern)
    _script_cli(scripts, capsys, "generate", ["prior", "--model_name_or_path", str(folder)], pattern)
    assert time.perf_counter() - started < 30


def test_config_that_asks_for_other_weights_through_train(scripts, capsys, small_data, pretrained, tmp_path):
    folder = _edited_copy(pretrained, tmp_path, num_highway_layers=1)
    argv = _argv(small_data, tmp_path / "run", model_name_or_path=folder)
    _train_cli(scripts, capsys, argv, r"asks for num_highway_layers=1 but model\.safetensors holds 0")
    _nothing_trained(tmp_path / "run")


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"tie_word_embeddings": True},
        {"posterior_mean_bn_scale": 0.5},
        {"latent_size": 0},
        {"num_highway_layers": 2, "bidirectional_encoder": True, "share_embeddings": False},
        {"latent_injection": "initial_state_inputs_and_outputs", "tie_word_embeddings": True, "embedding_size": 8},
    ],
    ids=["default", "tied", "bn", "rnnlm", "highway_bidirectional_unshared", "injected_tied_projected"],
)
def test_the_strict_loader_loads_every_variant(tiny_model, random_batch, tmp_path, variant):
    """No false alarm: a folder saved by `save_pretrained` loads, whatever the architecture (tied weights absent from
    the file, batch-norm buffers present)."""
    model = tiny_model(**variant)
    model.save_pretrained(tmp_path)
    loaded = load_pretrained_model(SentenceVAEModel, tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name  # exact: the same bytes, saved and read back


# --------------------------------------------------------------------------- 5. memory does not grow with the input
def _peak_rss(argv: list[str], tmp_path: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of `python argv` run in a child process (`os.wait4`'s rusage)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, log.read_text()


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory) -> dict[str, Path]:
    """2,000 and 200,000 lines of 2 to 6 words (the same 1,000 lines repeated), and the 2,000 lines plus one line of
    ~870 kB."""
    import random

    folder = tmp_path_factory.mktemp("sized")
    rng = random.Random(0)
    block = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "\n" for _ in range(1000))
    files = {"2k": folder / "2k.txt", "200k": folder / "200k.txt", "huge_line": folder / "huge_line.txt"}
    files["2k"].write_text(block * 2, encoding="utf-8")
    files["200k"].write_text(block * 200, encoding="utf-8")
    files["huge_line"].write_text(block * 2 + " ".join(WORDS * 12_500) + "\n", encoding="utf-8")
    return files


def _script_argv(name: str, model: Path, path: Path) -> list[str]:
    script = str(SCRIPTS / f"{SCRIPT_FILES.get(name, name)}.py")
    if name == "evaluate":
        return [script, "--model_name_or_path", str(model), "--test_file", str(path), "--iw_samples", "0",
                "--batch_size", "256", "--no_progress"]  # fmt: skip
    if name == "generate":
        return [script, "posterior", "--model_name_or_path", str(model), "--input_file", str(path), "--max_sentences",
                "3"]  # fmt: skip
    return [script, "--model_name_or_path", str(model), "--test_file", str(path), "--max_sentences", "5",
            "--num_beams", "2", "--num_steps", "1"]  # fmt: skip


@pytest.mark.parametrize("name", INFERENCE)
def test_scripts_stream_large_inputs(model_folder, sized_files, tmp_path, name):
    """Peak RSS on a 200,000-line file is within 10% of that on a 2,000-line file (evaluate reads every line;
    generate and impute stop after --max_sentences); for evaluate, one line of ~870 kB too (it is cut, counted, and
    costs no memory). Reading and sorting the whole file took 806 MB instead of 414 MB here."""
    peaks = {}
    inputs = ("2k", "200k", "huge_line") if name == "evaluate" else ("2k", "200k")
    for size in inputs:
        status, peaks[size], err = _peak_rss(_script_argv(name, model_folder, sized_files[size]), tmp_path)
        assert status == 0, err[-3000:]
        if size == "huge_line":
            assert "1 sentence(s) longer than 31 ids were cut" in err
    for size in inputs[1:]:
        assert peaks[size] <= 1.10 * peaks["2k"], {k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()}


def test_evaluate_file_counts_cut_and_truncated_lines(model_folder, tmp_path):
    from transformers import AutoTokenizer

    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = SentenceVAEModel.from_pretrained(model_folder), AutoTokenizer.from_pretrained(model_folder)
    lines = synthetic_lines(10, seed=2)
    lines[4] = " ".join(WORDS * 40)  # 640 words, 2,607 characters
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = evaluate_file(model, tokenizer, tmp_path / "long.txt", max_length=31, max_line_chars=1_000, iw_samples=0)
    assert results["num_sentences"] == 10 and results["cut_lines"] == 1 and results["truncated_lines"] == 1
    assert results["num_tokens"] <= 9 * 13 + 30


# --------------------------------------------------------------------------- 6. one run per output folder
def test_a_second_run_on_a_locked_output_dir_is_refused(scripts, capsys, small_data, tmp_path):
    out = tmp_path / "run"
    reset_accelerate()
    first = Trainer(_config(small_data, out))
    try:
        line = _train_cli(scripts, capsys, _argv(small_data, out), r"--output_dir '.*run' is in use by another run")
        assert f"(process {os.getpid()})" in line
        with pytest.raises(OutputDirInUseError):
            _train(_config(small_data, out, seed=7))
    finally:
        first.close()
    assert _train(_config(small_data, out))["global_step"] == 2  # released: the folder is usable again


def test_the_lock_holds_across_processes_and_dies_with_its_process(scripts, capsys, small_data, tmp_path):
    """A real second process: refused while the first trains; once the first is SIGKILLed, the kernel has dropped its
    lock and the run resumes from its newest checkpoint."""
    out = tmp_path / "run"
    argv = _argv(small_data, out, max_train_steps=100_000, checkpointing_steps=1, logging_steps=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *argv], stderr=handle, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(out):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        _train_cli(scripts, capsys, argv, rf"is in use by another run \(process {proc.pid}\)")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = int(resolve_checkpoint("latest", str(out)).name.split("-")[1])
    resumed = _train(_config(small_data, out, max_train_steps=step + 2, resume_from_checkpoint="latest"))
    assert resumed["global_step"] == step + 2


# --------------------------------------------------------------------------- 7. checkpoints checked on their own
def _zero_weights(path: Path, count: int = 4096) -> None:
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    data = bytearray(path.read_bytes())
    data[header : header + count] = bytes(min(count, len(data) - header))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["zeroed_weights", "corrupt_optimizer", "legacy_corrupt_optimizer"])
def test_damage_without_the_manifest_falls_back_to_the_previous_checkpoint(
    checkpointed, small_data, tmp_path, caplog, damage
):
    """Without `checkpoint_manifest.json`, the checksums in `trainer_state.json` (and, for checkpoints without
    them, a test load of the state files) catch what a header check cannot: `latest` skips the damaged checkpoint
    and the run resumes from the previous one; naming it explicitly is an error."""
    out = _copy_run(checkpointed, tmp_path)
    newest = out / "checkpoint-6"
    (newest / MANIFEST_FILE).unlink()
    if damage == "zeroed_weights":
        _zero_weights(newest / "model.safetensors")
        pattern = r"model\.safetensors does not match its SHA-256 in trainer_state\.json"
    else:
        (newest / TRAINING_STATE_DIR / "optimizer.pt").write_bytes(b"\x00" * 512)
        pattern = r"training_state/optimizer\.pt (does not match its SHA-256|is unreadable)"
    if damage == "legacy_corrupt_optimizer":  # written before checksums were recorded
        state = json.loads((newest / STATE_FILE).read_text())
        state.pop("checksums")
        (newest / STATE_FILE).write_text(json.dumps(state))
        pattern = r"training_state/optimizer\.pt is unreadable"
    assert checkpoint_problem(out / "checkpoint-4") is None
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint("latest", str(out)) == out / "checkpoint-4"
    assert "skipping corrupt checkpoint" in caplog.text
    with pytest.raises(CheckpointError, match=pattern):
        resolve_checkpoint(str(newest), str(out))
    config = _config(small_data, out, max_train_steps=6, checkpointing_steps="2", logging_steps=1)
    config.resume_from_checkpoint = "latest"
    assert _train(config)["global_step"] == 6
    assert checkpoint_problem(newest) is None  # written again by the resumed run


def test_an_intact_checkpoint_without_its_manifest_is_accepted(checkpointed, tmp_path):
    out = _copy_run(checkpointed, tmp_path)
    (out / "checkpoint-6" / MANIFEST_FILE).unlink()
    state = json.loads((out / "checkpoint-6" / STATE_FILE).read_text())
    assert set(state["checksums"]) >= {"model.safetensors", "training_state/optimizer.pt"}
    assert checkpoint_problem(out / "checkpoint-6") is None


def test_a_tampered_pickle_is_refused_and_never_run(scripts, capsys, checkpointed, small_data, tmp_path):
    """A pickle that would run a command when unpickled, with the manifest and checksums rewritten to match it (as an
    attacker would): loading refuses it (weights_only), nothing runs, one error line."""
    out = _copy_run(checkpointed, tmp_path)
    newest = out / "checkpoint-6"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (newest / TRAINING_STATE_DIR / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    state = json.loads((newest / STATE_FILE).read_text())
    state["checksums"] = checkpointing_module.record_checksums(newest)
    (newest / STATE_FILE).write_text(json.dumps(state))
    write_manifest(newest)
    assert checkpoint_problem(newest) is None
    argv = _argv(small_data, tmp_path / "other", max_train_steps=6, resume_from_checkpoint=newest)
    _train_cli(
        scripts,
        capsys,
        argv,
        r"holds objects other than tensors and plain data.*, which are never unpickled; the checkpoint was tampered",
    )
    assert not marker.exists()


# --------------------------------------------------------------------------- 8. resuming with other flags
def test_resuming_with_another_architecture_is_refused(scripts, capsys, checkpointed, small_data, tmp_path):
    out = _copy_run(checkpointed, tmp_path)
    argv = _argv(small_data, out, max_train_steps=8, latent_size=8, resume_from_checkpoint="latest")
    line = _train_cli(scripts, capsys, argv, r"--resume_from_checkpoint '.*checkpoint-6' fixes the architecture")
    assert "--latent_size (4 -> 8)" in line


def test_resuming_with_other_settings_warns_naming_each(checkpointed, small_data, tmp_path, caplog):
    out = _copy_run(checkpointed, tmp_path)
    config = _config(small_data, out, max_train_steps=8, checkpointing_steps="2", logging_steps=1)
    config.per_device_train_batch_size, config.seed, config.dropout = 4, 7, 0.1
    config.resume_from_checkpoint = "latest"
    with caplog.at_level(logging.WARNING):
        results = _train(config)
    assert results["global_step"] == 8
    warning = next(r.getMessage() for r in caplog.records if "differ from its run" in r.getMessage())
    for change in ("--per_device_train_batch_size (8 -> 4)", "--seed (42 -> 7)", "--dropout (0.0 -> 0.1)"):
        assert change in warning
    assert "--max_train_steps (6 -> 8)" in warning
    assert "--resume_from_checkpoint" not in warning and "--output_dir" not in warning


# --------------------------------------------------------------------------- 9. a run that trained nothing
def test_skipping_every_batch_is_a_failure(scripts, capsys, small_data, tmp_path):
    """`--on_nonfinite_loss skip` with a learning rate of 1e30: after the first step every loss is non-finite. The
    run ends with status 2 and one line instead of exit 0 with a NaN validation loss."""
    out = tmp_path / "run"
    argv = _argv(small_data, out, max_train_steps=6, learning_rate=1e30, on_nonfinite_loss="skip", eval_steps=2)
    line = _train_cli(scripts, capsys, argv, r"no finite validation loss was reached \(no evaluation was reached\)")
    assert "batch(es) with a non-finite loss were skipped" in line


def test_no_optimizer_step_at_all_is_a_failure(small_data, tmp_path, monkeypatch):
    original = SentenceVAEModel.forward

    def nan_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SentenceVAEModel, "forward", nan_forward)
    with pytest.raises(FloatingPointError, match=r"the run trained nothing: no optimizer step was taken \(8 batch"):
        _train(_config(small_data, tmp_path / "run", max_train_steps=1, on_nonfinite_loss="skip"))
    assert not (tmp_path / "run" / "best").exists()


# --------------------------------------------------------------------------- 10. a full disk
@pytest.mark.parametrize("how", ["oserror", "torch_runtime_error"])
def test_a_full_disk_while_checkpointing(scripts, capsys, small_data, tmp_path, monkeypatch, how):
    """The write of checkpoint 4 fails for lack of space (an `OSError(ENOSPC)`, or torch's `RuntimeError` on a disk
    with no room left): one line saying so, the partial checkpoint removed, checkpoint 2 intact; freeing space and
    resuming finishes the run."""
    import errno

    out = tmp_path / "run"
    original = trainer_module.save_training_state

    def failing(folder, *args, **kwargs):
        if Path(folder).parent.name == ".tmp-checkpoint-4":
            if how == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "optimizer.pt"))
            full = SimpleNamespace(total=1 << 30, used=1 << 30, free=0)
            monkeypatch.setattr(files_module.shutil, "disk_usage", lambda _: full)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return original(folder, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_training_state", failing)
    argv = _argv(small_data, out, max_train_steps=6, checkpointing_steps=2)
    line = _train_cli(scripts, capsys, argv, r"No space left on device.* while writing .*checkpoint-4")
    assert line.endswith("free some space; continue with --resume_from_checkpoint latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and checkpoint_problem(
        out / "checkpoint-2"
    ) is None
    assert not list(out.glob(".tmp-*"))
    monkeypatch.undo()
    config = _config(small_data, out, max_train_steps=6, checkpointing_steps="2", resume_from_checkpoint="latest")
    assert _train(config)["global_step"] == 6


# --------------------------------------------------------------------------- 10. the inference scripts' errors
def _inference_argv(name: str, model: str, path: str, *extra: str) -> list[str]:
    if name == "generate":
        return ["posterior", "--model_name_or_path", model, "--input_file", path, *extra]
    return ["--model_name_or_path", model, "--test_file", path, *extra]


FLAG = {"evaluate": "--test_file", "generate": "--input_file", "impute": "--test_file"}


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "latin1"])
def test_inference_scripts_report_bad_input_files(scripts, capsys, model_folder, tmp_path, name, problem):
    path = tmp_path / "input.txt"
    patterns = {
        "missing": "does not exist",
        "directory": "is a directory, not a text file",
        "empty": "is empty",
        "latin1": r"is not valid UTF-8: line 2, byte \d+",
    }
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("")
    elif problem == "latin1":
        path.write_bytes("the cat sat .\nthe caf\u00e9 .\n".encode("latin-1"))
    argv = _inference_argv(name, str(model_folder), str(path))
    _script_cli(scripts, capsys, name, argv, rf"{FLAG[name]} '.*input\.txt' {patterns[problem]}")


@pytest.mark.parametrize(
    "name, extra, pattern",
    [
        ("evaluate", ["--batch_size", "0"], r"--batch_size must be >= 1, got 0"),
        ("evaluate", ["--iw_samples", "-1"], r"--iw_samples must be >= 0, got -1"),
        ("evaluate", ["--max_length", "2"], r"--max_length must be >= 3, got 2"),
        ("impute", ["--fraction", "nan"], r"--fraction must be in \(0, 1\], got nan"),
        ("impute", ["--num_beams", "0"], r"--num_beams must be >= 1, got 0"),
        ("generate", ["--num_samples", "-1"], r"--num_samples must be >= 0, got -1"),
        ("generate", ["--max_new_tokens", str(10**12)], r"--max_new_tokens must be in \[1, 10,000\]"),
        ("generate", ["--num_beams", "0"], r"--num_beams must be >= 1, got 0"),
    ],
)
def test_inference_scripts_report_bad_values(scripts, capsys, model_folder, small_data, name, extra, pattern):
    argv = _inference_argv(name, str(model_folder), small_data["validation_file"], *extra)
    _script_cli(scripts, capsys, name, argv, pattern)


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("where", ["relative", "absolute", "deep", "file"])
def test_inference_scripts_report_a_missing_model_path(scripts, capsys, small_data, tmp_path, name, where):
    """A path that does not exist is reported as such, also when it could be read as a Hub repo id (`runs/x`)."""
    value = {
        "relative": "runs/no_such_model",
        "absolute": str(tmp_path / "no_such_model"),
        "deep": "runs/ptb/no_such_model",
        "file": small_data["train_file"],
    }[where]
    pattern = "is not a folder" if where == "file" else "does not exist"
    argv = _inference_argv(name, value, small_data["validation_file"])
    line = _script_cli(scripts, capsys, name, argv, rf"--model_name_or_path '{re.escape(value)}' {pattern}")
    assert "Repo id" not in line


def test_a_missing_model_path_through_a_real_process(small_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    command = [sys.executable, str(SCRIPTS / "evaluate_model.py"), "--model_name_or_path", "runs/no_such_model"]
    proc = subprocess.run(
        [*command, "--test_file", small_data["validation_file"]], capture_output=True, text=True, env=env, timeout=120
    )
    assert_one_error_line(proc.returncode, proc.stderr, r"--model_name_or_path 'runs/no_such_model' does not exist")


# --------------------------------------------------------------------------- 10. generation values
def test_generation_rejects_top_p_zero_and_non_finite_latents(model_folder):
    from transformers import AutoTokenizer, pipeline

    import hf_sentence_vae.pipelines  # noqa: F401

    model = SentenceVAEModel.from_pretrained(model_folder)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        model.generate(num_samples=2, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0, got nan"):
        model.generate(num_samples=2, do_sample=True, temperature=float("nan"))
    latent = torch.zeros(2, 4)
    latent[1, 2] = float("nan")
    with pytest.raises(ValueError, match="latent holds NaN or infinite values"):
        model.generate(latent=latent)
    with pytest.raises(ValueError, match=r"max_new_tokens <= 10000"):
        model.generate(num_samples=1, max_new_tokens=10**12)
    pipe = pipeline("sentence-vae", model=model, tokenizer=AutoTokenizer.from_pretrained(model_folder), device="cpu")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        pipe(2, do_sample=True, top_p=0.0)
