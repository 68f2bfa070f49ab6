"""Plain helpers shared by the training-heavy test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def reset_accelerate() -> None:
    """Forget any Accelerate singleton state left by an earlier run in this process (or inherited by a fork)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def head_lines(src: Path, dst: Path, n: int) -> str:
    """Write the first `n` lines of `src` to `dst`; returns `dst` as a string."""
    with open(src, encoding="utf-8") as handle:
        dst.write_text("".join(next(handle) for _ in range(n)), encoding="utf-8")
    return str(dst)


def load_script(path: Path, module_name: str | None = None, register: bool = False):
    """Import a command-line script (`train_scripts/*.py`, `benchmarks/*.py`) as a module.

    `module_name` defaults to `<stem>_script`; `register=True` also puts the module in `sys.modules`
    (dataclasses defined in the script look their module up there). The caller removes it again.
    """
    name = module_name or f"{Path(path).stem}_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the scripts, driven one way
def run_main(script, argv, capsys) -> tuple[int, str, str]:
    """A script's one entry point, `main(argv) -> int`, in this process: `(exit status, stdout, stderr)`."""
    capsys.readouterr()
    status = script.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def main_json(script, argv, capsys) -> dict:
    """`main(argv)` of a script that prints one JSON object: exit status 0, and the object."""
    import json

    status, out, err = run_main(script, argv, capsys)
    assert status == 0, err[-3000:]
    return json.loads(out)


def main_error(script, argv, capsys, pattern: str) -> str:
    """`main(argv)` of a script that must fail on its input: exit status 2 and one `error: ...` line matching
    `pattern` (see `assert_one_error_line`); returns the line."""
    status, _, err = run_main(script, argv, capsys)
    return assert_one_error_line(status, err, pattern)


# --------------------------------------------------------------------------- tiny runs and one-line CLI errors
SIZES = dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4)
WORDS = "the cat sat on mat dog ran to park a saw was green red and happy .".split()


def synthetic_lines(n: int, seed: int = 0, low: int = 3, high: int = 12) -> list[str]:
    """`n` sentences of `low` to `high` words drawn from `WORDS` (reproducible)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def flags(settings: dict) -> list[str]:
    """`{"a": 1}` -> `["--a", "1"]`."""
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def assert_one_error_line(status: int, err: str, pattern: str) -> str:
    """Exit status 2, no traceback and exactly one `error: ...` line on stderr, matching `pattern`; returns it."""
    import re

    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]
