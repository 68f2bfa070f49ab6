"""The paper's reproductions (`examples/paper/`): their own logic (collecting, tabulating, plotting), on small
synthetic inputs and tiny saved runs, each script driven through its `main(argv) -> int`."""

from __future__ import annotations

import json
import math

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
        "mutual_information_ceiling": 8.23,
        "active_units": 13,
        "latent_size": 13,
        "reconstruction_greedy": {"bleu": bleu, "distinct_fraction": 0.9},
        "reconstruction_beam5": {"bleu": bleu + 1.0, "distinct_fraction": 0.9},
        "homotopy": {"distinct_fraction": 0.7},
    }
    (folder / "eval" / "latent_report.json").write_text(json.dumps(latent))


def test_rate_distortion_collects_sorts_tabulates_and_plots(repo_root, tmp_path):
    script = load_script(repo_root / "examples" / "paper" / "rate_distortion.py")
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
    assert [r["mutual_information_ceiling"] for r in results["runs"]] == [8.23, 8.23]  # drawn as a line in the plot
    table = (tmp_path / "out.md").read_text()
    assert "| 5.0 | 5.10 | 2.55 | 13 / 13 | 100.50 | -0.80 |" in table
    assert "| 15.0 | 15.20 |" in table and "+(" not in table
    assert (tmp_path / "out.png").stat().st_size > 1000
    # NLLs on a subset: their own file names (never mixed with whole-file evaluations), named in the table
    assert script.evaluation_paths(tmp_path / "t5", 500, 1000)["nll"].name == "test_iw500_first1000.json"
    assert script.main([*argv, "--max_sentences", "1000"]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["runs"] == []  # no subset evaluations on disk
    assert "first 1000 test sentences" in (tmp_path / "out.md").read_text()
    with pytest.raises(SystemExit):
        script.main([*argv, "--max_sentences", "0"])


def _paper_script(repo_root, name: str):
    return load_script(repo_root / "examples" / "paper" / f"{name}.py", name)


def test_word_dropout_sweep_report_from_finished_runs(repo_root, tmp_path):
    """--report_only builds the Figure-3 table, JSON and PNG from the runs' results.json, in keep-rate order,
    with the paper's values beside ours; unfinished runs are left out; a bad keep rate is refused."""
    sweep = _paper_script(repo_root, "word_dropout_sweep")
    runs = tmp_path / "sweep"
    for keep, (rec, kl) in {1.0: (120.0, 0.01), 0.5: (100.0, 9.5)}.items():
        folder = runs / sweep.run_name(keep)
        folder.mkdir(parents=True)
        results = {"test_reconstruction": rec, "test_kl": kl, "test_loss": rec + kl, "train_reconstruction": rec - 5,
                   "train_kl": kl, "global_step": 10, "best_step": 10}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(results))
    (runs / sweep.run_name(0.9)).mkdir()  # started, not finished
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    argv = ["--runs_dir", str(runs), "--output", str(out), "--plot", str(png), "--report_only"]
    assert sweep.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["keep_rate"] for r in rows] == [1.0, 0.5]
    assert rows[1]["test_kl"] == 9.5 and rows[1]["paper_kl"] == pytest.approx(15.13052)
    table = out.with_suffix(".md").read_text()
    assert "| 50% | 100.0 | 9.50 | 109.5 |" in table
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        sweep.main([*argv, "--keep_rates", "1.5"])


def test_ptb_report_with_a_seeded_iw_subset(repo_root, tiny_model, tiny_tokenizer, tiny_sentences, tmp_path):
    """ptb_report on tiny saved runs: the paper's row only where the paper has one, and the k-sample IW-NLL on a
    seeded subset of the test sentences (the same subset on a rerun), at most sampling noise above its bound."""
    report = _paper_script(repo_root, "ptb_report")
    data = tmp_path / "ptb"
    data.mkdir()
    (data / "ptb.test.txt").write_text("\n".join(tiny_sentences) + "\n")
    for name in ("vae_standard", "vae_beyond"):
        run = tmp_path / "runs" / name
        tiny_model(seed=1).save_pretrained(run / "best")
        tiny_tokenizer.save_pretrained(run / "best")
        records = [{"step": 2, "epoch": 0.5, "loss": 9.0, "kl_weight": 0.1}, {"step": 2, "validation_loss": 8.0}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "report.json"
    argv = ["--runs_dir", str(tmp_path / "runs"), "--data_dir", str(data), "--models", "vae_standard", "vae_beyond",
            "--iw_samples", "2", "--subset_iw_samples", "4", "--subset_size", "3", "--skip_train",
            "--output", str(out), "--markdown", str(tmp_path / "report.md")]  # fmt: skip
    assert report.main(argv) == 0
    rows = json.loads(out.read_text())
    for row in rows.values():
        sub = row["test_subset"]
        assert (
            sub["num_sentences"] == 3 and sub["iw_samples"] == 4 and row["test"]["num_sentences"] == len(tiny_sentences)
        )
        assert sub["nll_iw"] <= sub["nll_bound"] + 1.0  # a 4-sample estimate: at most noise above the bound
    table = (tmp_path / "report.md").read_text()
    assert table.count("| paper |") == 1 and "VAE, beyond the paper" in table and "| 3 | 4 |" in table
    assert (
        report.main(argv) == 0
        and json.loads(out.read_text())["vae_standard"]["test_subset"] == rows["vae_standard"]["test_subset"]
    )


def test_merge_eval_shards_weights_by_sentences_and_recounts_perplexity(repo_root, tmp_path, capsys):
    """Shard reports combine into whole-set figures: per-sentence nats weighted by sentence count, perplexities
    from the summed nats over summed tokens and words; shards keep their reports; mismatched k is refused."""
    merge = _paper_script(repo_root, "merge_eval_shards")
    shard = {"iw_samples": 500, "kl": 1.0, "reconstruction": 9.0}
    a = {**shard, "num_sentences": 2, "num_tokens": 10, "num_words": 8, "nll_iw": 10.0, "nll_bound": 12.0}
    b = {**shard, "num_sentences": 1, "num_tokens": 5, "num_words": 4, "nll_iw": 40.0, "nll_bound": 42.0,
         "kl": 4.0}  # fmt: skip
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, report in zip(paths, (a, b)):
        path.write_text(json.dumps(report))
    out = tmp_path / "full.json"
    assert merge.main([*map(str, paths), "--name", "full", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    full = result["full"]
    assert full["nll_iw"] == pytest.approx(20.0) and full["nll_bound"] == pytest.approx(22.0)
    assert full["kl"] == pytest.approx(2.0) and full["reconstruction"] == pytest.approx(9.0)
    assert full["ppl_iw"] == pytest.approx(math.exp(60 / 15)) and full["ppl_iw_words"] == pytest.approx(math.exp(5))
    assert (full["num_sentences"], full["num_tokens"], full["num_words"], full["iw_samples"]) == (3, 15, 12, 500)
    assert result["shards"] == {"a": a, "b": b}
    with pytest.raises(ValueError, match="different iw_samples"):
        merge.merge([a, {**b, "iw_samples": 50}])
    with pytest.raises(ValueError, match="'num_words'"):
        merge.merge([a, {key: value for key, value in b.items() if key != "num_words"}])
