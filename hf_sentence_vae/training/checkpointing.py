"""Training checkpoints: the folder `checkpoint-<step>` a run writes, verifies and resumes from.

A checkpoint holds the Hub-ready model folder (`model.safetensors`, config, tokenizer), `trainer_state.json`
([`TrainerState`]: what resuming needs besides the weights and the optimizer), `training_state/` and
`checkpoint_manifest.json`:

- `training_state/` holds the optimizer and scheduler state dicts (`optimizer.pt`, `scheduler.pt`, and `scaler.pt`
  under fp16), each process's random states (`rng_state_<rank>.pt`, tensors and plain numbers only) and, with
  `--ema_decay`, the weight average (`weight_average.pt`). Everything is written with `torch.save` and read back
  with `torch.load(weights_only=True)`: nothing in a checkpoint is unpickled as arbitrary objects (Accelerate's
  `load_state` restores objects registered with `register_for_checkpointing`, e.g. the LR scheduler, with
  `weights_only=False`; this module replaces `save_state`/`load_state`). Model weights are only ever stored as
  safetensors.
- `checkpoint_manifest.json` lists every file with its size and SHA-256, written last ([`seal_checkpoint`]);
  every file is fsynced before the folder is renamed into place (`files.replace_dir`), so a checkpoint is either
  complete or not taken at all, and a truncated or altered file (a crash on a filesystem that reorders writes, a
  full disk, a copy gone wrong) is detected by [`checkpoint_problem`] before resuming.

Without the manifest (deleted, or a checkpoint copied without it) a checkpoint is still checked on its own: every
safetensors file's header and size, and the SHA-256 of the weights and training-state files that the trainer
state records (`checksums`); checkpoints older than those checksums get their state files test-loaded instead.
`--resume_from_checkpoint latest` takes the newest intact checkpoint ([`resolve_checkpoint`]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..files import fsync_tree, remove_dir
from ..loading import WEIGHTS_FILE, CheckpointError, describe_error, safetensors_problem

logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "checkpoint_manifest.json"
TRAINING_STATE_DIR = "training_state"
AVERAGE_FILE = "weight_average.pt"  # in training_state/ when --ema_decay is set
CHECKSUMS_KEY = "checksums"  # in the trainer state: relative path -> SHA-256 of the weights and training-state files
# Files Accelerate's `save_state` wrote (checkpoints of earlier versions); read with weights_only=True too.
_LEGACY_OPTIMIZER, _LEGACY_SCHEDULER = "optimizer.bin", "custom_checkpoint_0.pkl"


@dataclass
class TrainerState:
    """What a checkpoint needs besides model/optimizer/scheduler to resume exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = math.inf
    best_step: int | None = None
    evals_without_improvement: int = 0
    skipped_steps: int = 0
    tokens_seen: int = 0
    window: dict[str, float] = field(default_factory=dict)  # sums since the last log record
    kl_controller: dict[str, float] = field(default_factory=dict)  # KLTargetController.state_dict()
    decoder_reinitialized: bool = False  # the encoder warm start's second phase has begun
    aggressive_best_mi: float | None = None  # aggressive training: the best validation mutual information so far
    aggressive_ended: bool = False  # aggressive training's phase is over
    checksums: dict[str, str] = field(default_factory=dict)  # SHA-256 of the checkpoint's weights and state files

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


# --------------------------------------------------------------------------- files and their checks
def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load` restricted to tensors and plain containers/numbers (``weights_only=True``), on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write `checkpoint_manifest.json` (relative path -> size and SHA-256 of every other file in `folder`)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    return path


def checkpoint_problem(folder: str | os.PathLike, state_file: str = STATE_FILE) -> str | None:
    """Why `folder` is not a usable checkpoint, or None if it is. With a manifest, every listed file must be
    present with its recorded size and SHA-256. Without one, the checkpoint is checked on its own: the trainer state
    must parse, every safetensors file must be structurally sound, and every file whose SHA-256 the trainer state
    records (``checksums``) must match it; older checkpoints without checksums get their training-state files
    test-loaded (tensors only)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist"
    if not (folder / state_file).is_file():
        return f"it is not a complete checkpoint (no {state_file})"
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"its {MANIFEST_FILE} is unreadable ({type(err).__name__}: {err})"
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != expected["size"]:
                return f"{name} is {size} bytes, the manifest says {expected['size']} (truncated or corrupt)"
            if _sha256(path) != expected["sha256"]:
                return f"{name} does not match its SHA-256 in the manifest (corrupt)"
        return None
    try:
        state = json.loads((folder / state_file).read_text())
        checksums = state.get(CHECKSUMS_KEY) or {}
        if not isinstance(checksums, dict):
            raise TypeError(f"{CHECKSUMS_KEY} is a {type(checksums).__name__}, not a mapping")
    except (OSError, ValueError, TypeError, AttributeError) as err:
        return f"its {state_file} is unreadable ({type(err).__name__}: {err})"
    if not (folder / WEIGHTS_FILE).is_file():
        return f"{WEIGHTS_FILE} is missing"
    for path in sorted(folder.rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return problem
    for name, digest in sorted(checksums.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its SHA-256 in {state_file} (corrupt)"
    if not checksums:  # written before checksums were recorded: the state files must at least load as tensors
        for path in sorted((folder / TRAINING_STATE_DIR).glob("*.pt")):
            try:
                safe_torch_load(path)
            except Exception as err:  # torch raises many types for a damaged file
                return f"{path.relative_to(folder).as_posix()} is unreadable ({describe_error(err)})"
    return None


def record_checksums(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> SHA-256 of the weights (``*.safetensors``) and training-state files (``training_state/``)
    under `folder`, for the trainer state to record (see [`checkpoint_problem`])."""
    folder = Path(folder)
    paths = [*folder.rglob("*.safetensors"), *(p for p in (folder / TRAINING_STATE_DIR).rglob("*") if p.is_file())]
    names = sorted({p.relative_to(folder).as_posix() for p in paths} - set(exclude))
    return {name: _sha256(folder / name) for name in names}


# --------------------------------------------------------------------------- optimizer, scheduler and RNG state
def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"]).astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder: str | os.PathLike, optimizer, scheduler, scaler=None, rank: int = 0) -> None:
    """Write this process's share of the training state into `folder` (which must exist): the random states of
    process `rank`, and from rank 0 the optimizer, scheduler (and fp16 grad scaler) state dicts."""
    folder = Path(folder)
    torch.save(_rng_state(), folder / f"rng_state_{rank}.pt")
    if rank == 0:
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), folder / "scaler.pt")


def load_training_state(folder: str | os.PathLike, optimizer, scheduler, scaler=None, rank: int = 0) -> None:
    """Restore what [`save_training_state`] wrote (or Accelerate's `save_state` files of older checkpoints),
    reading every file with ``weights_only=True``. Missing or unreadable files raise a `CheckpointError`."""
    folder = Path(folder)
    optimizer_file, scheduler_file = folder / "optimizer.pt", folder / "scheduler.pt"
    if not optimizer_file.is_file() and (folder / _LEGACY_OPTIMIZER).is_file():
        optimizer_file, scheduler_file = folder / _LEGACY_OPTIMIZER, folder / _LEGACY_SCHEDULER
    rng_file = folder / f"rng_state_{rank}.pt"
    try:
        optimizer.load_state_dict(safe_torch_load(optimizer_file))
        scheduler.load_state_dict(safe_torch_load(scheduler_file))
        if scaler is not None and (folder / "scaler.pt").is_file():
            scaler.load_state_dict(safe_torch_load(folder / "scaler.pt"))
        rng_state = safe_torch_load(rng_file) if rng_file.is_file() else None
    except pickle.UnpicklingError as err:  # weights_only refused something that is not a tensor or plain data
        # Not torch's message: it suggests weights_only=False, the one thing never to do with such a file.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"cannot restore the training state from {folder}: a file holds objects other than tensors and plain "
            f"data{what}, which are never unpickled; the checkpoint was tampered with or is not one of ours"
        ) from err
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError) as err:
        raise CheckpointError(f"cannot restore the training state from {folder}: {describe_error(err)[:300]}") from err
    if rng_state is not None:
        _set_rng_state(rng_state)
    elif (folder / f"random_states_{rank}.pkl").is_file():
        from accelerate.utils import load as accelerate_load  # weights_only=True with numpy arrays allowed

        states = accelerate_load(folder / f"random_states_{rank}.pkl")
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
    else:
        logger.warning(
            f"no random state for process {rank} in {folder} (different number of processes?): dropout masks "
            "after resuming will differ from an uninterrupted run"
        )


# --------------------------------------------------------------------------- the run's checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with a trainer state file), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def checkpoint_folders(output_dir: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """`(final, temporary)` folders of the checkpoint of `step`: it is written into the temporary one, then renamed."""
    output_dir = Path(output_dir)
    return output_dir / f"{CHECKPOINT_PREFIX}{step}", output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"


def remove_stale_folders(output_dir: str | os.PathLike) -> None:
    """Remove what an interrupted run left half-written: temporary checkpoints and folders being deleted."""
    output_dir = Path(output_dir)
    for stale in [*output_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"), *output_dir.glob(".trash-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def seal_checkpoint(folder: str | os.PathLike, state: TrainerState) -> None:
    """Finish a checkpoint written into `folder`: the checksums of its weights and training-state files into `state`
    (checked on their own when the manifest is missing), `state` into `trainer_state.json`, the manifest last, and
    every file flushed to disk."""
    folder = Path(folder)
    state.checksums = record_checksums(folder)
    state.save(folder / STATE_FILE)
    write_manifest(folder)
    fsync_tree(folder)


def prune_checkpoints(output_dir: str | os.PathLike, limit: int | None) -> None:
    """Delete all but the newest `limit` complete checkpoints (None: keep every one)."""
    if limit is None:
        return
    for old in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
        remove_dir(old)


def resolve_checkpoint(value: str, output_dir: str) -> Path | None:
    """`latest` -> the newest complete, intact checkpoint in `output_dir` (None if there is none): a corrupt one
    (a file missing, truncated or altered; see `checkpointing.checkpoint_problem`) is skipped with a warning.
    Else the path, which must be an intact checkpoint (`CheckpointError` otherwise)."""
    if value == "latest":
        for path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path, STATE_FILE)
            if problem is None:
                return path
            logger.warning(f"skipping corrupt checkpoint {path}: {problem}; trying the previous one")
        return None
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {value!r} is not a complete checkpoint (no {STATE_FILE})")
    problem = checkpoint_problem(path, STATE_FILE)
    if problem is not None:
        others = [p.name for p in list_checkpoints(path.parent) if p != path]
        hint = f"; other checkpoints there: {', '.join(others)}" if others else ""
        raise CheckpointError(f"--resume_from_checkpoint {value!r} is corrupt: {problem}{hint}")
    return path


__all__ = [
    "AVERAGE_FILE",
    "CHECKPOINT_PREFIX",
    "MANIFEST_FILE",
    "STATE_FILE",
    "TRAINING_STATE_DIR",
    "TrainerState",
    "checkpoint_folders",
    "checkpoint_problem",
    "list_checkpoints",
    "load_training_state",
    "prune_checkpoints",
    "record_checksums",
    "remove_stale_folders",
    "resolve_checkpoint",
    "safe_torch_load",
    "save_training_state",
    "seal_checkpoint",
    "write_manifest",
]
