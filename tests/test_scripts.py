"""The inference scripts (`train_scripts/{evaluate_model,generate,impute}.py`), each driven through its one entry
point `main(argv) -> int`: special-token strings in the input, and one line `error: ...` with exit status 2 (never
a traceback) for a bad input file, an impossible value or a missing model folder.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SCRIPTS,
    assert_one_error_line,
    cli_error,
    main_json,
    synthetic_lines,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _specials_file(tmp_path: Path) -> Path:
    lines = synthetic_lines(20, seed=4)
    lines[3] = "the cat <eos> <pad> sat ."
    lines[7] = "<bos> a dog ran"
    path = tmp_path / "specials.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "unks.txt").write_text(path.read_text().replace("<eos>", "<unk>").replace("<pad>", "<unk>").replace(
        "<bos>", "<unk>"
    ), encoding="utf-8")  # fmt: skip
    return path


def test_evaluate_gives_finite_figures_on_special_token_strings(scripts, model_folder, tmp_path, capsys):
    """A `<pad>` target had probability zero: the bound was infinite. Now the line scores as its `<unk>` version."""
    path = _specials_file(tmp_path)
    common = ["--model_name_or_path", str(model_folder), "--iw_samples", "2", "--no_progress"]
    results = main_json(scripts["evaluate"], [*common, "--test_file", str(path)], capsys)
    assert math.isfinite(results["nll_bound"]) and math.isfinite(results["nll_iw"])
    as_unk = main_json(scripts["evaluate"], [*common, "--test_file", str(tmp_path / "unks.txt")], capsys)
    assert results["nll_bound"] == pytest.approx(as_unk["nll_bound"], rel=1e-6)


def test_impute_and_generate_accept_special_token_strings(scripts, model_folder, tmp_path, capsys):
    path = _specials_file(tmp_path)
    summary = main_json(
        scripts["impute"],
        ["--model_name_or_path", str(model_folder), "--test_file", str(path), "--num_beams", "2", "--num_steps", "1"],
        capsys,
    )
    assert summary["num_sentences"] == 20 and math.isfinite(summary["mean_score"])
    rows = main_json(
        scripts["generate"],
        ["posterior", "--model_name_or_path", str(model_folder), "--texts", "the <pad> cat", "--input_file", str(path)],
        capsys,
    )["rows"]
    assert rows[0]["input"] == "the <pad> cat" and len(rows) == 11


INFERENCE = ("evaluate", "generate", "impute")


def _inference_argv(name: str, model: str, path: str, *extra: str) -> list[str]:
    if name == "generate":
        return ["posterior", "--model_name_or_path", model, "--input_file", path, *extra]
    return ["--model_name_or_path", model, "--test_file", path, *extra]


FLAG = {"evaluate": "--test_file", "generate": "--input_file", "impute": "--test_file"}


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "latin1"])
def test_inference_scripts_report_bad_input_files(scripts, capsys, model_folder, tmp_path, name, problem):
    path = tmp_path / "input.txt"
    patterns = {
        "missing": "does not exist",
        "directory": "is a directory, not a text file",
        "empty": "is empty",
        "latin1": r"is not valid UTF-8: line 2, byte \d+",
    }
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("")
    elif problem == "latin1":
        path.write_bytes("the cat sat .\nthe caf\u00e9 .\n".encode("latin-1"))
    argv = _inference_argv(name, str(model_folder), str(path))
    cli_error(scripts[name], capsys, argv, rf"{FLAG[name]} '.*input\.txt' {patterns[problem]}")


@pytest.mark.parametrize(
    "name, extra, pattern",
    [
        ("evaluate", ["--batch_size", "0"], r"--batch_size must be >= 1, got 0"),
        ("evaluate", ["--iw_samples", "-1"], r"--iw_samples must be >= 0, got -1"),
        ("evaluate", ["--max_length", "2"], r"--max_length must be >= 3, got 2"),
        ("impute", ["--fraction", "nan"], r"--fraction must be in \(0, 1\], got nan"),
        ("impute", ["--num_beams", "0"], r"--num_beams must be >= 1, got 0"),
        ("generate", ["--num_samples", "-1"], r"--num_samples must be >= 0, got -1"),
        ("generate", ["--max_new_tokens", str(10**12)], r"--max_new_tokens must be in \[1, 10,000\]"),
        ("generate", ["--num_beams", "0"], r"--num_beams must be >= 1, got 0"),
    ],
)
def test_inference_scripts_report_bad_values(scripts, capsys, model_folder, small_data, name, extra, pattern):
    argv = _inference_argv(name, str(model_folder), small_data["validation_file"], *extra)
    cli_error(scripts[name], capsys, argv, pattern)


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("where", ["relative", "absolute", "deep", "file"])
def test_inference_scripts_report_a_missing_model_path(scripts, capsys, small_data, tmp_path, name, where):
    """A path that does not exist is reported as such, also when it could be read as a Hub repo id (`runs/x`)."""
    value = {
        "relative": "runs/no_such_model",
        "absolute": str(tmp_path / "no_such_model"),
        "deep": "runs/ptb/no_such_model",
        "file": small_data["train_file"],
    }[where]
    pattern = "is not a folder" if where == "file" else "does not exist"
    argv = _inference_argv(name, value, small_data["validation_file"])
    line = cli_error(scripts[name], capsys, argv, rf"--model_name_or_path '{re.escape(value)}' {pattern}")
    assert "Repo id" not in line


def test_a_missing_model_path_through_a_real_process(small_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    command = [sys.executable, str(SCRIPTS / "evaluate_model.py"), "--model_name_or_path", "runs/no_such_model"]
    proc = subprocess.run(
        [*command, "--test_file", small_data["validation_file"]], capture_output=True, text=True, env=env, timeout=120
    )
    assert_one_error_line(proc.returncode, proc.stderr, r"--model_name_or_path 'runs/no_such_model' does not exist")
