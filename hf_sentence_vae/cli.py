"""Command-line parsing shared by the scripts: every dataclass field becomes a `--flag` (its help and choices from
the field's metadata, as `transformers.HfArgumentParser` reads them), and any flag can also come from a YAML or
JSON file given with `--config` (flags on the command line win)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; `bool` -> bool; dicts and other containers -> None (not exposed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if annotation in (int, float, str, bool):
        return annotation
    return None


def _allows_none(annotation: Any) -> bool:
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return is_union and type(None) in typing.get_args(annotation)


def _or_none(kind: type) -> typing.Callable[[str], Any]:
    """A converter for an optional field: `none` or `null` (any case) unsets it, as a config file's `null` does."""

    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config file into a dict of flag values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--config {str(path)!r} is not valid YAML{at}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {str(path)!r} must hold a mapping of flag names to values")
    return data


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default; the description keeps its line breaks."""


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """An `argparse` parser with a `--flag` per field of the dataclass `cls` (dicts and other containers are not
    exposed). Like `transformers.HfArgumentParser`, a field's `metadata` gives its `help` text and its `choices`
    (shown as the flag's values; the dataclass validates them); the help shows each flag's default."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=_HelpFormatter,
        epilog="A flag whose default is None takes 'none' to unset a value that a --config file sets; a BOOL flag "
        "given alone means true.",
    )
    parser.add_argument("--config", help="YAML or JSON file of flag values (command-line flags win)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        if kind is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        optional = _allows_none(hints[f.name])
        if kind is bool:
            parser.add_argument(
                f"--{f.name}",
                type=_parse_bool,
                nargs="?",
                const=True,
                default=default,
                metavar="BOOL",
                help=help_text,
            )
            continue
        extra: dict[str, Any] = {}
        if choices is not None:
            # Shown, not enforced here: the dataclass (or the model config) checks the value and names it, so a bad
            # one ends the run with the scripts' one-line error like any other impossible setting.
            extra["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
        convert = _or_none(kind) if optional else kind
        parser.add_argument(f"--{f.name}", type=convert, default=default, help=help_text, **extra)
    return parser


def parse_args(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """Parse `argv` into an instance of the dataclass `cls`, with defaults from `--config` if given."""
    parser = build_parser(cls, description)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        values = load_config_file(known.config)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"--config {known.config!r} has unknown option(s): {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    return cls(**args)
