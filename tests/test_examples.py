"""The example scripts' own logic (collecting, tabulating, plotting), on small synthetic inputs."""

from __future__ import annotations

import json

import pytest
from helpers import load_script


def _fake_run(folder, kl_target, kl, nll_iw, bleu):
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "training_config.json").write_text(json.dumps({"kl_target": kl_target}))
    (folder / "eval").mkdir()
    (folder / "eval" / "test_iw500.json").write_text(
        json.dumps({"nll_iw": nll_iw, "nll_bound": nll_iw + 1.0, "ppl_iw_words": 100.0})
    )
    latent = {
        "kl": kl,
        "mutual_information": kl / 2,
        "active_units": 13,
        "latent_size": 13,
        "reconstruction_greedy": {"bleu": bleu, "distinct_fraction": 0.9},
        "reconstruction_beam5": {"bleu": bleu + 1.0, "distinct_fraction": 0.9},
        "homotopy": {"distinct_fraction": 0.7},
    }
    (folder / "eval" / "latent_report.json").write_text(json.dumps(latent))


def test_rate_distortion_collects_sorts_tabulates_and_plots(repo_root, tmp_path):
    script = load_script(repo_root / "examples" / "rate_distortion.py")
    _fake_run(tmp_path / "t15", 15.0, 15.2, 101.0, 8.0)
    _fake_run(tmp_path / "t5", 5.0, 5.1, 100.5, 2.0)
    (tmp_path / "lm" / "eval").mkdir(parents=True)
    (tmp_path / "lm" / "eval" / "test_iw0.json").write_text(json.dumps({"nll_exact": 101.3}))
    (tmp_path / "missing").mkdir()
    argv = [
        "--runs", str(tmp_path / "t15"), str(tmp_path / "t5"), str(tmp_path / "missing"), "--rnnlm",
        str(tmp_path / "lm"), "--test_file", "test.txt", "--collect_only", "--output", str(tmp_path / "out.json"),
        "--markdown", str(tmp_path / "out.md"), "--plot", str(tmp_path / "out.png"),
    ]  # fmt: skip
    assert script.main(argv) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert [r["kl_target"] for r in results["runs"]] == [5.0, 15.0]  # sorted by rate; the unevaluated run skipped
    assert results["rnnlm_nll_exact"] == pytest.approx(101.3)
    table = (tmp_path / "out.md").read_text()
    assert "| 5.0 | 5.10 | 2.55 | 13 / 13 | 100.50 | -0.80 |" in table
    assert "| 15.0 | 15.20 |" in table and "+(" not in table
    assert (tmp_path / "out.png").stat().st_size > 1000
