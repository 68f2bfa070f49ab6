"""What the command-line scripts share: logging set-up, and one line ``error: ...`` on stderr with exit status 2
for a problem with the input, the settings or the machine (a missing, empty, non-UTF-8 or unreadable file, an
impossible value, a corrupt checkpoint or model folder, a folder in use by another run, a full disk, a non-finite
loss) instead of a traceback. Set ``SENTENCE_VAE_TRACEBACK=1`` to see the traceback instead.

    from hf_sentence_vae.script_runner import run_script

    if __name__ == "__main__":
        sys.exit(run_script(main))  # main(argv) parses its arguments and does the work
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2  # bad input or settings (as argparse), or a numerical fault
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "SENTENCE_VAE_TRACEBACK"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the input or the run, not a bug: reported in one line."""
    from .checkpointing import OutputDirInUseError

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
    from .checkpointing import DISK_ERRNOS

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
) -> int:
    """Run `main(argv)` (argv defaults to ``sys.argv[1:]``) and return the process's exit status: 0 on success, 2
    with one ``error: ...`` line for the errors of [`user_errors`] and a refused write (full disk, quota), 130 on
    Ctrl-C. `resume_hint` (e.g. "continue with --resume_from_checkpoint latest") is appended where work can be
    continued. argparse's own usage errors exit with 2 as usual."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging()
    hint = f"; {resume_hint}" if resume_hint else ""
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"error: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if disk_error(err):
            target = getattr(err, "filename2", None) or getattr(err, "filename", None)  # a copy's destination
            where = f" while writing {target}" if target else ""
            print(f"error: {os.strerror(err.errno)}{where}; free some space{hint}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(err, user_errors()):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


__all__ = ["run_script", "user_errors", "one_line", "disk_error", "setup_logging", "EXIT_USAGE", "EXIT_INTERRUPTED"]
