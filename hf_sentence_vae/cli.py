"""Command-line parsing of dataclass options: `transformers.HfArgumentParser` plus the three things the scripts add.

`HfArgumentParser` makes every dataclass field a `--flag` (its help from the field's metadata, its default shown).
On top of it, [`ArgumentParser`]:

- reads any flag from a YAML or JSON file given with `--config` (flags on the command line win; a key that is no
  option is an error naming it);
- lets `none` (or `null`, any case) unset an optional flag, as a config file's `null` does;
- shows a field's `choices` as the flag's values without enforcing them: the dataclass (or the model config) checks
  the value, so a bad one ends the run with the scripts' one-line error, naming the option, like any other
  impossible setting. A boolean flag given alone means true.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from transformers import HfArgumentParser

T = TypeVar("T")


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


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A converter for an optional field: `none` or `null` (any case) unsets it."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its error messages
    return parse


def _is_optional(annotation: Any) -> bool:
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return is_union and type(None) in typing.get_args(annotation)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default; the description keeps its line breaks."""


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over one dataclass, with `--config FILE`, `none` for optional flags and choices that are
    shown, not enforced (see the module docstring)."""

    def __init__(self, dataclass_type: type, description: str = ""):
        super().__init__(
            dataclass_type,
            description=description,
            formatter_class=_HelpFormatter,
            epilog="A flag whose default is None takes 'none' to unset a value that a --config file sets; a BOOL flag "
            "given alone means true.",
        )
        self.add_argument("--config", help="YAML or JSON file of flag values (command-line flags win)")

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        optional = _is_optional(field.type)
        metadata = dict(field.metadata)
        choices = metadata.pop("choices", None)
        if choices is not None:
            metadata["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
        shown = copy.copy(field)
        shown.metadata = types.MappingProxyType(metadata)
        HfArgumentParser._parse_dataclass_field(parser, shown)
        action = parser._option_string_actions[f"--{field.name}"]
        if optional and action.type is not None:
            action.type = _or_none(action.type)
        if field.type in (bool, bool | None):
            action.nargs, action.const, action.metavar = "?", True, "BOOL"

    def parse(self, argv: Sequence[str] | None = None) -> Any:
        """Parse `argv` into the dataclass, with defaults from `--config` if given."""
        known, _ = self.parse_known_args(argv)
        if known.config:
            values = load_config_file(known.config)
            options = {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype)}
            unknown = sorted(set(values) - options)
            if unknown:
                raise ValueError(f"--config {known.config!r} has unknown option(s): {', '.join(unknown)}")
            self.set_defaults(**values)
        parsed, _, remaining = self.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return parsed


def build_parser(cls: type, description: str) -> ArgumentParser:
    """The parser of the dataclass `cls`: a `--flag` per field (see [`ArgumentParser`])."""
    return ArgumentParser(cls, description)


def parse_args(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    """Parse `argv` into an instance of the dataclass `cls`, with defaults from `--config` if given."""
    return build_parser(cls, description).parse(argv)
