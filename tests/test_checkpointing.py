"""Training checkpoints (`hf_sentence_vae.training.checkpointing`): runs killed at any moment (SIGKILL, or a crash
at the delicate moments of saving) resume to the same records and final metrics as an uninterrupted run; damaged
checkpoints are detected with or without their manifest and skipped by `latest`; nothing in a checkpoint is
unpickled as arbitrary objects; a full disk while checkpointing leaves the previous checkpoint intact.

Runs are tiny (emb/hidden 16, z 4): a few hundred PTB lines, or a synthetic corpus of a few dozen sentences; the
SIGKILL test starts real `train_scripts/train.py` processes (one kill by default, more seeds under `-m slow`).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import random
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
    REPO,
    SIZES,
    TRAIN_SCRIPT,
    assert_records_close,
    child_env,
    copy_run,
    dotted_name,
    flags,
    ptb_subset,
    read_records,
    reset_accelerate,
    tiny_argv,
    tiny_config,
    train_cli_error,
    train_run,
    train_subprocess,
)

from hf_sentence_vae import files as files_module
from hf_sentence_vae.loading import CheckpointError, safetensors_problem
from hf_sentence_vae.training import STATE_FILE, TrainingConfig, list_checkpoints, resolve_checkpoint, train
from hf_sentence_vae.training import checkpointing as checkpointing_module
from hf_sentence_vae.training import trainer as trainer_module
from hf_sentence_vae.training.checkpointing import (
    MANIFEST_FILE,
    TRAINING_STATE_DIR,
    checkpoint_problem,
    safe_torch_load,
    write_manifest,
)

PACKAGE = REPO / "hf_sentence_vae"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMING_FIELDS = {"tokens_per_second"}


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


def assert_same_run(output_dir, results: dict, reference_dir, reference: dict, rel: float = 1e-5) -> None:
    """Same final metrics and the same per-step records (timings aside) as the reference run."""
    for key in ("global_step", "best_step", "skipped_steps"):
        assert results[key] == reference[key], key
    keys = [k for k in reference if k.startswith(("validation_", "test_", "best_validation"))]
    assert keys
    for key in keys:
        assert results[key] == pytest.approx(reference[key], rel=rel, abs=1e-7), key
    assert_records_close(read_records(output_dir), read_records(reference_dir), rel, 1e-7, timing=TIMING_FIELDS)


@pytest.fixture(scope="module")
def ptb_run_data(ptb_dir: Path, tmp_path_factory) -> dict[str, str]:
    return ptb_subset(ptb_dir, tmp_path_factory.mktemp("ptb_reliability"), 200)


@pytest.fixture(scope="module")
def reference(ptb_run_data, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted 40-step run (in this process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    results = train_run(TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN))
    assert results["global_step"] == 40
    return out, results


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
            [sys.executable, str(TRAIN_SCRIPT), *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=REPO,
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
    proc = train_subprocess(base + ["--resume_from_checkpoint", "latest"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert_same_run(out, results, reference_dir, reference_results)
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
    evals = [r for r in read_records(reference_dir) if "validation_loss" in r]
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
            train_run(config)
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
    results = train_run(config)
    assert_same_run(out, results, reference_dir, reference_results)
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
    assert_same_run(tmp_path / "part", got, tmp_path / "full", want)


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
    results = train_run(config)
    assert_same_run(out, results, reference_dir, reference_results)


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
    message = train_cli_error(
        train_script, capsys, argv, rf"--resume_from_checkpoint '.*checkpoint-40' is corrupt: {pattern}"
    )
    assert "checkpoint-36" in message  # names the others

    results = train_run(TrainingConfig(**ptb_run_data, output_dir=str(out), **RUN, resume_from_checkpoint="latest"))
    assert_same_run(out, results, reference_dir, reference_results)
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
            name = dotted_name(call.func)
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
    out = copy_run(checkpointed, tmp_path)
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
    config = tiny_config(small_data, out, max_train_steps=6, checkpointing_steps="2", logging_steps=1)
    config.resume_from_checkpoint = "latest"
    assert train_run(config)["global_step"] == 6
    assert checkpoint_problem(newest) is None  # written again by the resumed run


def test_an_intact_checkpoint_without_its_manifest_is_accepted(checkpointed, tmp_path):
    out = copy_run(checkpointed, tmp_path)
    (out / "checkpoint-6" / MANIFEST_FILE).unlink()
    state = json.loads((out / "checkpoint-6" / STATE_FILE).read_text())
    assert set(state["checksums"]) >= {"model.safetensors", "training_state/optimizer.pt"}
    assert checkpoint_problem(out / "checkpoint-6") is None


def test_a_tampered_pickle_is_refused_and_never_run(scripts, capsys, checkpointed, small_data, tmp_path):
    """A pickle that would run a command when unpickled, with the manifest and checksums rewritten to match it (as an
    attacker would): loading refuses it (weights_only), nothing runs, one error line."""
    out = copy_run(checkpointed, tmp_path)
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
    argv = tiny_argv(small_data, tmp_path / "other", max_train_steps=6, resume_from_checkpoint=newest)
    train_cli_error(
        scripts["train"],
        capsys,
        argv,
        r"holds objects other than tensors and plain data.*, which are never unpickled; the checkpoint was tampered",
    )
    assert not marker.exists()


def test_resuming_with_another_architecture_is_refused(scripts, capsys, checkpointed, small_data, tmp_path):
    out = copy_run(checkpointed, tmp_path)
    argv = tiny_argv(small_data, out, max_train_steps=8, latent_size=8, resume_from_checkpoint="latest")
    line = train_cli_error(
        scripts["train"], capsys, argv, r"--resume_from_checkpoint '.*checkpoint-6' fixes the architecture"
    )
    assert "--latent_size (4 -> 8)" in line


def test_resuming_with_other_settings_warns_naming_each(checkpointed, small_data, tmp_path, caplog):
    out = copy_run(checkpointed, tmp_path)
    config = tiny_config(small_data, out, max_train_steps=8, checkpointing_steps="2", logging_steps=1)
    config.per_device_train_batch_size, config.seed, config.dropout = 4, 7, 0.1
    config.resume_from_checkpoint = "latest"
    with caplog.at_level(logging.WARNING):
        results = train_run(config)
    assert results["global_step"] == 8
    warning = next(r.getMessage() for r in caplog.records if "differ from its run" in r.getMessage())
    for change in ("--per_device_train_batch_size (8 -> 4)", "--seed (42 -> 7)", "--dropout (0.0 -> 0.1)"):
        assert change in warning
    assert "--max_train_steps (6 -> 8)" in warning
    assert "--resume_from_checkpoint" not in warning and "--output_dir" not in warning


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
    argv = tiny_argv(small_data, out, max_train_steps=6, checkpointing_steps=2)
    line = train_cli_error(scripts["train"], capsys, argv, r"No space left on device.* while writing .*checkpoint-4")
    assert line.endswith("free some space; continue with --resume_from_checkpoint latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and checkpoint_problem(
        out / "checkpoint-2"
    ) is None
    assert not list(out.glob(".tmp-*"))
    monkeypatch.undo()
    config = tiny_config(small_data, out, max_train_steps=6, checkpointing_steps="2", resume_from_checkpoint="latest")
    assert train_run(config)["global_step"] == 6
