"""Loading saved models strictly: a folder that cannot give the model it claims to hold is one clear error.

The loaders turn the many ways a folder can be unusable (missing, no weights, truncated weights, weights that do not
match `config.json`, not a sentence-VAE folder, a name that is neither a folder nor a Hub repository) into one
`ValueError` / `FileNotFoundError` naming the flag and the path: missing or unexpected weights are an error, never
silently initialised. Only safetensors weights are read; their structure is checked from the header first (cheap for
any size).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .modeling_sentence_vae import SentenceVAEModel
from .tokenization_sentence_vae_fast import check_tokenizer_matches_model

WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint (or pretrained folder) that is incomplete, corrupt or unreadable."""


# --------------------------------------------------------------------------- safetensors structure
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


# --------------------------------------------------------------------------- model folders
# What `huggingface_hub` accepts as a repo id: `name` or `namespace/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _could_be_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and ".." not in value and not value.endswith((".", "-"))


def describe_error(err: BaseException) -> str:
    """`Type: message` of an exception on one line (the message cut at 500 characters)."""
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
        f"({describe_error(err)[:300]})"
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
        raise CheckpointError(f"{flag} {value!r}: config.json is unreadable ({describe_error(err)})") from None
    expected_type = model_class.config_class.model_type
    if not isinstance(raw, dict) or raw.get("model_type") != expected_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise CheckpointError(f"{flag} {value!r} holds a {found!r} model, not a {expected_type!r} one")
    try:
        return model_class.config_class.from_pretrained(folder)
    except ValueError as err:
        raise CheckpointError(f"{flag} {value!r}: config.json: {describe_error(err)}") from None


def weights_problem(model_class, folder: str | os.PathLike, config) -> str | None:
    """Whether the folder's `model.safetensors` holds exactly the weights `config` asks for (every name, every
    shape), read from the header against a model built on the meta device (no memory); None if it does. Weights
    missing from the file would be initialised at random and unexpected ones dropped, silently: both are errors."""
    shapes = safetensors_shapes(Path(folder) / WEIGHTS_FILE)
    if not getattr(config, "is_rnnlm", True) and hasattr(config, "num_highway_layers"):
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
        raise CheckpointError(f"{flag} {value!r}: could not load the model ({describe_error(err)})") from err
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
        raise CheckpointError(f"{flag} {value!r}: could not load the tokenizer ({describe_error(err)})") from err


def load_model_and_tokenizer(
    model_name_or_path: str | os.PathLike,
    tokenizer_name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
):
    """`(model, tokenizer)` of a saved sentence VAE for the scripts: the model in eval mode on `device` (default:
    CUDA when available), loaded with [`load_pretrained_model`]'s checks; the tokenizer from
    `tokenizer_name_or_path` (default: the model's folder), checked against the model's config."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_pretrained_model(SentenceVAEModel, model_name_or_path)
    if tokenizer_name_or_path:
        tokenizer = load_tokenizer(tokenizer_name_or_path)
    else:
        tokenizer = load_tokenizer(model_name_or_path, "--model_name_or_path")
    check_tokenizer_matches_model(tokenizer, model.config)
    return model.to(device).eval(), tokenizer


__all__ = [
    "CheckpointError",
    "check_pretrained_folder",
    "describe_error",
    "load_model_and_tokenizer",
    "load_model_config",
    "load_pretrained_model",
    "load_tokenizer",
    "safetensors_problem",
    "safetensors_shapes",
    "weights_problem",
]
