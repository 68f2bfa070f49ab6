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

Without the manifest (deleted, or a checkpoint copied without it) a checkpoint is still checked on its own: every
safetensors file's header and size, and the SHA-256 of the weights and training-state files that the trainer
state (``trainer_state.json``, key ``checksums``) records; checkpoints older than those checksums get their state
files test-loaded instead.

The model and tokenizer loaders turn the many ways a folder can be unusable (missing, no weights, truncated
weights, weights that do not match ``config.json``, not a sentence-VAE folder) into one
`ValueError`/`FileNotFoundError` naming the flag and the path: missing or unexpected weights are an error, never
silently initialised. [`OutputDirLock`] keeps two training runs from sharing an output folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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
CHECKSUMS_KEY = "checksums"  # in the trainer state: relative path -> SHA-256 of the weights and training-state files
LOCK_FILE = ".lock"
# Files Accelerate's `save_state` wrote (checkpoints of earlier versions); read with weights_only=True too.
_LEGACY_OPTIMIZER, _LEGACY_SCHEDULER = "optimizer.bin", "custom_checkpoint_0.pkl"


class CheckpointError(ValueError):
    """A checkpoint (or pretrained folder) that is incomplete, corrupt or unreadable."""


class OutputDirInUseError(RuntimeError):
    """Another process holds the lock of a run's output folder."""


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


# Below this much free space, a failed write is taken for a full disk (torch reports one as a RuntimeError).
_LOW_DISK_BYTES = 64 << 20
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # a write the storage refused


@contextmanager
def removed_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Around the writing of the temporary folder `folder`: if the block fails, the folder is removed (a partial
    checkpoint never lingers), and a failure on a full disk is raised as `OSError(ENOSPC)` naming the folder, since
    `torch.save` reports one as an obscure `RuntimeError`."""
    folder = Path(folder)
    try:
        yield
    except Exception as err:
        try:
            free = shutil.disk_usage(folder.parent).free
        except OSError:
            free = None
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:  # name the folder, not a file copied into it
            raise OSError(err.errno, os.strerror(err.errno), str(folder)) from err
        if free is not None and free < _LOW_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from err
        raise


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
def _safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file; `ValueError` (naming the file) if it is not sound: too short,
    a header longer than the file, unreadable JSON, or data offsets that do not describe the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is {size} bytes, too short for a safetensors file (truncated?)")
        header_size = int.from_bytes(head, "little")
        if header_size > size - 8:
            raise ValueError(f"{path.name} is {size} bytes but declares a {header_size}-byte header (truncated?)")
        try:
            header = json.loads(handle.read(header_size))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise ValueError(
                f"{path.name} has an unreadable safetensors header ({type(err).__name__}: {err})"
            ) from None
    expected = 8 + header_size + end
    if expected != size:
        raise ValueError(
            f"{path.name} is {size} bytes but its header describes {expected} bytes (truncated or corrupt)"
        )
    return header


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file (missing, truncated, bad header), or None if its structure is sound.
    Reads only the header: cheap for any size."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        _safetensors_header(path)
    except OSError as err:
        return f"{path.name} is unreadable ({type(err).__name__}: {err})"
    except ValueError as err:
        return str(err)
    return None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header (the file's structure is checked first)."""
    header = _safetensors_header(Path(path))
    return {name: tuple(int(d) for d in info["shape"]) for name, info in header.items() if name != "__metadata__"}


def checkpoint_problem(folder: str | os.PathLike, state_file: str = DEFAULT_STATE_FILE) -> str | None:
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
                return f"{path.relative_to(folder).as_posix()} is unreadable ({_one_line(err)})"
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
        raise CheckpointError(f"cannot restore the training state from {folder}: {_one_line(err)[:300]}") from err
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


# --------------------------------------------------------------------------- loading pretrained folders
# What `huggingface_hub` accepts as a repo id: `name` or `namespace/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _could_be_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and ".." not in value and not value.endswith((".", "-"))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


def _local_folder(value: str, flag: str) -> Path | None:
    """The local folder `value` names, or None when no such path exists and `value` could be a Hub repo id (then
    `from_pretrained` tries the Hub). A path that exists but is not a folder, or that cannot be a repo id, raises."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {value!r} is not a folder (give the folder that holds config.json)")
        return path
    if _could_be_hub_id(value):
        return None
    raise FileNotFoundError(f"{flag} {value!r} does not exist")


def _not_found(flag: str, value: str, err: BaseException) -> FileNotFoundError:
    """The error for a value that is no local path and could not be loaded from the Hub either."""
    return FileNotFoundError(
        f"{flag} {value!r} does not exist: there is no such folder, and as a Hub repo id it could not be loaded "
        f"({_one_line(err)[:300]})"
    )


def check_pretrained_folder(path: str | os.PathLike, flag: str = "--model_name_or_path") -> Path | None:
    """For a local path: raise one clear error unless it is a folder with `config.json` and structurally sound
    safetensors weights (cheap: reads headers only); returns the folder. Returns None for a name that is no local
    path but could be a Hub repo id (left to `from_pretrained`)."""
    value = str(path)
    folder = _local_folder(value, flag)
    if folder is None:
        return None
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{flag} {value!r} has no config.json: not a saved model folder")
    if not (folder / WEIGHTS_FILE).is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(others)}: only safetensors weights are loaded)" if others else ""
        raise CheckpointError(f"{flag} {value!r} has no {WEIGHTS_FILE}{hint}")
    problem = safetensors_problem(folder / WEIGHTS_FILE)
    if problem:
        raise CheckpointError(f"{flag} {value!r}: {problem}")
    return folder


def load_model_config(model_class, folder: str | os.PathLike, flag: str = "--model_name_or_path"):
    """The config of a local model folder as `model_class.config_class`, with one clear error for unreadable JSON,
    another model type, or an impossible value."""
    folder = Path(folder)
    value = str(folder)
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{flag} {value!r}: config.json is unreadable ({_one_line(err)})") from None
    expected_type = model_class.config_class.model_type
    if not isinstance(raw, dict) or raw.get("model_type") != expected_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise CheckpointError(f"{flag} {value!r} holds a {found!r} model, not a {expected_type!r} one")
    try:
        return model_class.config_class.from_pretrained(folder)
    except ValueError as err:
        raise CheckpointError(f"{flag} {value!r}: config.json: {_one_line(err)}") from None


def weights_problem(model_class, folder: str | os.PathLike, config) -> str | None:
    """Whether the folder's `model.safetensors` holds exactly the weights `config` asks for (every name, every
    shape), read from the header against a model built on the meta device (no memory); None if it does. Weights
    missing from the file would be initialised at random and unexpected ones dropped, silently: both are errors."""
    shapes = safetensors_shapes(Path(folder) / WEIGHTS_FILE)
    if getattr(config, "latent_size", 0) and hasattr(config, "num_highway_layers"):
        # Checked first: a config asking for 10^5 layers would take gigabytes even to build on the meta device.
        for module in ("encoder_highway", "latent_highway"):
            pattern = re.compile(rf"^{module}\.transforms\.(\d+)\.")
            held = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
            if len(held) != config.num_highway_layers:
                return (
                    f"config.json asks for num_highway_layers={config.num_highway_layers} but {WEIGHTS_FILE} holds "
                    f"{len(held)} {module} layer(s): the config and the weights come from different models"
                )
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(set(expected) - set(shapes) - tied)
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [
        f"{name} {shapes[name]} (config: {expected[name]})"
        for name in sorted(set(expected) & set(shapes))
        if shapes[name] != expected[name]
    ]
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            parts.append(f"{len(names)} weight(s) {label}: {shown}")
    if parts:
        return f"{WEIGHTS_FILE} does not match config.json ({'; '.join(parts)})"
    return None


def _loading_problem(info: dict[str, Any]) -> str | None:
    parts = [f"{key.replace('_', ' ')}: {sorted(info[key])[:4]}" for key in ("missing_keys", "unexpected_keys")]
    parts = [p for p, key in zip(parts, ("missing_keys", "unexpected_keys")) if info.get(key)]
    if info.get("mismatched_keys"):
        parts.append(f"mismatched keys: {sorted(str(k) for k in info['mismatched_keys'])[:4]}")
    if info.get("error_msgs"):
        parts.append(f"errors: {' '.join(str(m) for m in info['error_msgs'])[:300]}")
    return "; ".join(parts) or None


def load_pretrained_model(model_class, path: str | os.PathLike, flag: str = "--model_name_or_path"):
    """`model_class.from_pretrained(path)` with one clear error for a missing folder, missing or truncated weights,
    weights that do not match the config (missing, unexpected or of another shape: never initialised at random),
    an unreadable config, or a name that is neither a folder nor a loadable Hub repo."""
    value = str(path)
    folder = check_pretrained_folder(value, flag)
    kwargs: dict[str, Any] = {}
    if folder is not None:
        config = load_model_config(model_class, folder, flag)
        problem = weights_problem(model_class, folder, config)
        if problem:
            raise CheckpointError(f"{flag} {value!r}: {problem}")
        kwargs["config"] = config
    try:
        model, info = model_class.from_pretrained(value, use_safetensors=True, output_loading_info=True, **kwargs)
    except (FileNotFoundError, CheckpointError):
        raise
    except Exception as err:  # transformers/safetensors/huggingface_hub raise many types: one clear error
        if folder is None:
            raise _not_found(flag, value, err) from err
        raise CheckpointError(f"{flag} {value!r}: could not load the model ({_one_line(err)})") from err
    problem = _loading_problem(info)
    if problem:
        raise CheckpointError(f"{flag} {value!r}: the weights do not match the model ({problem})")
    return model


def load_tokenizer(path: str | os.PathLike, flag: str = "--tokenizer_name_or_path"):
    """`AutoTokenizer.from_pretrained(path)` with one clear error for a missing or unusable folder."""
    from transformers import AutoTokenizer

    value = str(path)
    folder = _local_folder(value, flag)
    if folder is not None and not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{flag} {value!r} has no tokenizer.json: not a saved tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(value)
    except Exception as err:
        if folder is None:
            raise _not_found(flag, value, err) from err
        raise CheckpointError(f"{flag} {value!r}: could not load the tokenizer ({_one_line(err)})") from err


def load_model_and_tokenizer(
    model_name_or_path: str | os.PathLike,
    tokenizer_name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
):
    """`(model, tokenizer)` of a saved sentence VAE for the scripts: the model in eval mode on `device` (default:
    CUDA when available), loaded with [`load_pretrained_model`]'s checks; the tokenizer from
    `tokenizer_name_or_path` (default: the model's folder), checked against the model's config."""
    from .modeling_sentence_vae import SentenceVAEModel
    from .tokenization_sentence_vae_fast import check_tokenizer_matches_model

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_pretrained_model(SentenceVAEModel, model_name_or_path)
    if tokenizer_name_or_path:
        tokenizer = load_tokenizer(tokenizer_name_or_path)
    else:
        tokenizer = load_tokenizer(model_name_or_path, "--model_name_or_path")
    check_tokenizer_matches_model(tokenizer, model.config)
    return model.to(device).eval(), tokenizer


# --------------------------------------------------------------------------- one run per output folder
class OutputDirLock:
    """An exclusive lock on a run's output folder: `fcntl.flock` on ``<folder>/.lock``, which holds the owner's
    process id. The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a stale lock
    never blocks a resume. Where `fcntl` does not exist (Windows) no lock is taken.

    ```python
    with OutputDirLock("runs/x"):  # OutputDirInUseError if another process holds it
        ...
    ```
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--output_dir"):
        self.folder, self.flag = Path(folder), flag
        self._handle = None  # a file object: the lock also goes when it is garbage-collected

    def acquire(self) -> None:
        """Take the lock; `OutputDirInUseError` (naming the holder's process id) if another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning(f"no file locking on this platform: nothing keeps two runs out of {self.folder}")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+b")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = os.pread(handle.fileno(), 32, 0).decode("ascii", "replace").strip() or "unknown"
            handle.close()
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputDirInUseError(
                f"{self.flag} {str(self.folder)!r} is in use by another run (process {owner}); wait for it to end, "
                "or choose another folder"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock (closing the file drops it); a no-op when not held."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
