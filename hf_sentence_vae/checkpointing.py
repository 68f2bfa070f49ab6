"""Safe, verifiable training checkpoints (used by `training.Trainer`).

A checkpoint folder ``checkpoint-<step>`` holds the Hub-ready model folder (``model.safetensors``, config,
tokenizer), ``trainer_state.json``, ``training_state/`` and ``checkpoint_manifest.json``:

- ``training_state/`` holds the optimizer and scheduler state dicts (``optimizer.pt``, ``scheduler.pt``, and
  ``scaler.pt`` under fp16) and each process's random states (``rng_state_<rank>.pt``, tensors and plain
  numbers only). Everything is written with `torch.save` and read back with ``torch.load(weights_only=True)``:
  nothing in a checkpoint is unpickled as arbitrary objects (Accelerate's `load_state` restores objects
  registered with `register_for_checkpointing`, e.g. the LR scheduler, with ``weights_only=False``; this module
  replaces `save_state`/`load_state`). Model weights are only ever stored as safetensors.
- ``checkpoint_manifest.json`` lists every file with its size and SHA-256, written last; every file is fsynced
  before the folder is renamed into place, so a checkpoint is either complete or not taken at all, and a
  truncated or altered file (a crash on a filesystem that reorders writes, a full disk, a copy gone wrong) is
  detected by [`checkpoint_problem`] before resuming.

The model and tokenizer loaders turn the many ways a folder can be unusable (missing, no weights, truncated
weights, not a sentence-VAE folder) into one `ValueError`/`FileNotFoundError` naming the flag and the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

MANIFEST_FILE = "checkpoint_manifest.json"
TRAINING_STATE_DIR = "training_state"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_STATE_FILE = "trainer_state.json"
# Files Accelerate's `save_state` wrote (checkpoints of earlier versions); read with weights_only=True too.
_LEGACY_OPTIMIZER, _LEGACY_SCHEDULER = "optimizer.bin", "custom_checkpoint_0.pkl"


class CheckpointError(ValueError):
    """A checkpoint (or pretrained folder) that is incomplete, corrupt or unreadable."""


# --------------------------------------------------------------------------- small file helpers
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


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and directory under `folder` (and `folder` itself) to disk."""
    folder = Path(folder)
    for path in [*_files(folder), *(folder / MANIFEST_FILE,)]:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry (makes a rename in it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write `checkpoint_manifest.json` (relative path -> size and SHA-256 of every other file in `folder`)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    return path


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final`; an existing `final` is first moved aside (never deleted before
    the new one is in place), then removed."""
    tmp, final = Path(tmp), Path(final)
    trash = final.with_name(f".trash-{final.name}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder by renaming it to a hidden name first, so that an interrupted deletion never leaves a
    half-deleted folder under its original name."""
    path = Path(path)
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- verification
def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file (missing, truncated, bad header), or None if its structure is sound.
    Reads only the header: cheap for any size."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes, too short for a safetensors file (truncated?)"
            header_size = int.from_bytes(head, "little")
            if header_size > size - 8:
                return f"{path.name} is {size} bytes but declares a {header_size}-byte header (truncated?)"
            header = json.loads(handle.read(header_size))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"{path.name} has an unreadable safetensors header ({type(err).__name__}: {err})"
    expected = 8 + header_size + end
    if expected != size:
        return f"{path.name} is {size} bytes but its header describes {expected} bytes (truncated or corrupt)"
    return None


def checkpoint_problem(folder: str | os.PathLike, state_file: str = DEFAULT_STATE_FILE) -> str | None:
    """Why `folder` is not a usable checkpoint, or None if it is. With a manifest, every listed file must be
    present with its recorded size and SHA-256; without one (older checkpoints), the trainer state must parse
    and the weights' safetensors structure must be sound."""
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
        json.loads((folder / state_file).read_text())
    except (OSError, ValueError) as err:
        return f"its {state_file} is unreadable ({type(err).__name__}: {err})"
    return safetensors_problem(folder / WEIGHTS_FILE)


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
    try:
        optimizer.load_state_dict(safe_torch_load(optimizer_file))
        scheduler.load_state_dict(safe_torch_load(scheduler_file))
        if scaler is not None and (folder / "scaler.pt").is_file():
            scaler.load_state_dict(safe_torch_load(folder / "scaler.pt"))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"cannot restore the optimizer/scheduler state from {folder}: {detail}") from err
    rng_file = folder / f"rng_state_{rank}.pt"
    if rng_file.is_file():
        _set_rng_state(safe_torch_load(rng_file))
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


# --------------------------------------------------------------------------- loading pretrained folders
def _looks_local(value: str) -> bool:
    return os.path.exists(value) or value.startswith(("/", ".", "~")) or value.count("/") > 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


def check_pretrained_folder(path: str | os.PathLike, flag: str = "--model_name_or_path") -> None:
    """For a local path: raise one clear error unless it is a folder with `config.json` and structurally sound
    safetensors weights (cheap: reads headers only). Hub ids are left to `from_pretrained`."""
    value = str(path)
    if _looks_local(value):
        folder = Path(value).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"{flag} {value!r} does not exist")
        if not folder.is_dir():
            raise ValueError(f"{flag} {value!r} is not a folder (give the folder that holds config.json)")
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{flag} {value!r} has no config.json: not a saved model folder")
        if not (folder / WEIGHTS_FILE).is_file():
            others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
            hint = f" (found {', '.join(others)}: only safetensors weights are loaded)" if others else ""
            raise CheckpointError(f"{flag} {value!r} has no {WEIGHTS_FILE}{hint}")
        problem = safetensors_problem(folder / WEIGHTS_FILE)
        if problem:
            raise CheckpointError(f"{flag} {value!r}: {problem}")


def load_pretrained_model(model_class, path: str | os.PathLike, flag: str = "--model_name_or_path"):
    """`model_class.from_pretrained(path)` with one clear error for a missing folder, missing or truncated
    weights, or an unreadable config."""
    value = str(path)
    check_pretrained_folder(value, flag)
    try:
        return model_class.from_pretrained(value, use_safetensors=True)
    except (FileNotFoundError, CheckpointError):
        raise
    except Exception as err:  # transformers/safetensors raise many types: report them as one clear error
        raise CheckpointError(f"{flag} {value!r}: could not load the model ({_one_line(err)})") from err


def load_tokenizer(path: str | os.PathLike, flag: str = "--tokenizer_name_or_path"):
    """`AutoTokenizer.from_pretrained(path)` with one clear error for a missing or unusable folder."""
    from transformers import AutoTokenizer

    value = str(path)
    if _looks_local(value):
        folder = Path(value).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"{flag} {value!r} does not exist")
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{flag} {value!r} has no tokenizer.json: not a saved tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(value)
    except Exception as err:
        raise CheckpointError(f"{flag} {value!r}: could not load the tokenizer ({_one_line(err)})") from err
