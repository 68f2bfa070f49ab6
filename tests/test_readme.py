"""The README's usage example runs as written, and its first screen shows the two set-up commands."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_screen_shows_the_two_commands():
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:15])
    assert "make demo" in first_screen
    assert "make test" in first_screen


def test_usage_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    usage = text[text.index("## Usage") :]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    decoded = eval(printed.strip())  # the example prints a list of two decoded strings
    assert isinstance(decoded, list) and len(decoded) == 2
    assert (tmp_path / "my-vae" / "model.safetensors").is_file()
    assert (tmp_path / "my-vae" / "modeling_sentence_vae.py").is_file()
