"""What the command-line scripts share: their common arguments, their JSON output, logging set-up, and one line
``error: ...`` on stderr with exit status 2 for a problem with the input, the settings or the machine (a missing,
empty, non-UTF-8 or unreadable file, an impossible value, a corrupt checkpoint or model folder, a folder in use by
another run, a full disk, a non-finite loss) instead of a traceback. Set ``SENTENCE_VAE_TRACEBACK=1`` to see the
traceback instead.

Every script has the same entry point, `main(argv) -> int` (the process's exit status):

    def main(argv: Sequence[str] | None = None) -> int:
        return run_script(_run, argv)  # _run(argv) parses the arguments and does the work

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2  # bad input or settings (as argparse), or a numerical fault
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "SENTENCE_VAE_TRACEBACK"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the input or the run, not a bug: reported in one line."""
    from .files import OutputDirInUseError

    errors: list[type[BaseException]] = [
        ValueError,  # also CheckpointError, UnicodeDecodeError, json.JSONDecodeError
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        FloatingPointError,
        OutputDirInUseError,
    ]
    try:
        from .hub import HubPushError

        errors.append(HubPushError)
    except ImportError:  # the Hub extras are optional
        pass
    return tuple(errors)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def disk_error(err: BaseException) -> bool:
    """Whether `err` is the machine's storage refusing a write (full disk, quota, read-only filesystem)."""
    from .files import DISK_ERRNOS

    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def setup_logging() -> None:
    """INFO records of the scripts and the library on stderr (transformers' own at WARNING), no progress bars from
    the Hub client."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()


def run_script(
    main: Callable[[Sequence[str] | None], Any],
    argv: Sequence[str] | None = None,
    resume_hint: str | None = None,
    error_status: dict[type[BaseException], int] | None = None,
) -> int:
    """Run `main(argv)` (argv defaults to ``sys.argv[1:]``) and return the process's exit status: 0 on success, 2
    with one ``error: ...`` line for the errors of [`user_errors`] and a refused write (full disk, quota), 130 on
    Ctrl-C. `resume_hint` (e.g. "continue with --resume_from_checkpoint latest") is appended where work can be
    continued; `error_status` gives other statuses to some error types. argparse's own usage errors exit with 2 as
    usual."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging()
    hint = f"; {resume_hint}" if resume_hint else ""
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.stderr.write(f"error: interrupted{hint}\n")
        return EXIT_INTERRUPTED
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if disk_error(err):
            target = getattr(err, "filename2", None) or getattr(err, "filename", None)  # a copy's destination
            where = f" while writing {target}" if target else ""
            sys.stderr.write(f"error: {os.strerror(err.errno)}{where}; free some space{hint}\n")
            return EXIT_USAGE
        if not isinstance(err, user_errors()):
            raise
        sys.stderr.write(f"error: {one_line(err)}\n")
        return next((status for kind, status in (error_status or {}).items() if isinstance(err, kind)), EXIT_USAGE)
    return EXIT_OK


# --------------------------------------------------------------------------- arguments and output
def add_common_arguments(
    parser: argparse.ArgumentParser,
    model: str | None = "save_pretrained folder",
    seed: bool = True,
    output_file: bool = True,
) -> None:
    """The arguments the scripts share: `--model_name_or_path` (described by `model`; None leaves the model
    arguments out), `--tokenizer_name_or_path`, `--device`, `--seed` (unless `seed=False`: nothing random) and
    `--output_file` for the JSON the script prints (unless `output_file=False`: the script's `--output_file` is
    something else)."""
    if model is not None:
        parser.add_argument("--model_name_or_path", required=True, help=model)
        parser.add_argument("--tokenizer_name_or_path", default=None, help="default: --model_name_or_path")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    if output_file:
        parser.add_argument("--output_file", default=None, help="also write the JSON here")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def emit_json(results: dict[str, Any], output_file: str | os.PathLike | None = None) -> str:
    """Print `results` as one indented JSON object on stdout, and write it to `output_file` if given; returns the
    text."""
    text = json.dumps(results, indent=2)
    sys.stdout.write(text + "\n")
    if output_file:
        write_text(output_file, text + "\n")
    return text


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "add_common_arguments",
    "disk_error",
    "emit_json",
    "one_line",
    "run_script",
    "setup_logging",
    "user_errors",
    "write_text",
]
