"""Smoke test of the speed benchmarks (benchmarks/run_benchmarks.py): the --quick path on a tiny synthetic
config, in-process. Structure only: every figure present and positive; no timing thresholds."""

from __future__ import annotations

import json
import math
import sys

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def bench(repo_root):
    folder = str(repo_root / "benchmarks")
    sys.path.insert(0, folder)  # run_benchmarks imports its sibling baseline.py
    try:
        yield load_script(repo_root / "benchmarks" / "run_benchmarks.py", "run_benchmarks", register=True)
    finally:
        sys.path.remove(folder)
        sys.modules.pop("run_benchmarks", None)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_quick_tiny_run_has_every_figure(bench, tmp_path):
    output = tmp_path / "bench.json"
    args = [
        "--quick",
        "--tiny",
        "--threads", "1",
        "--warmup", "0",
        "--repeats", "1",
        "--steps", "1",
        "--loss_steps", "2",
        "--single_sentences", "2",
        "--decode_batch_sizes", "1,4",
        "--max_beam_batch", "4",
        "--max_new_tokens", "6",
        "--stream_sentences", "8",
        "--impute_batch_size", "4",
        "--matmul_size", "128",
        "--profile",
        "--no_memory",
        "--output", str(output),
    ]  # fmt: skip
    results = bench.run(args)
    assert json.loads(output.read_text())["command"] == results["command"]
    assert {"machine", "data", "training", "bf16_loss", "decoding", "imputation", "profiles", "markdown"} <= set(
        results
    )
    assert results["machine"]["load_average_start"] and results["data"]["train_sentences"] > 0

    (entry,) = results["training"]
    assert entry["size"] == "tiny" and entry["batch_size"] == 32 and _positive(entry["flops_per_token"])
    assert set(entry["arms"]) == {"fp32", "fp32+fused_adam", "bf16+fused_adam", "baseline"}
    for name, arm in entry["arms"].items():
        for key in (
            "tokens_per_second",
            "tokens_per_cpu_second",
            "achieved_gflops",
            "matmul_gflops",
            "fraction_of_matmul",
            "fraction_of_matmul_cpu_time",
            "ratio_vs_fp32",
            "ratio_vs_baseline",
            "flops_per_token",
        ):
            assert _positive(arm[key]), (name, key, arm[key])
        assert arm["runs"] and not any(run["warmup"] for run in arm["runs"])
    assert entry["arms"]["fp32"]["ratio_vs_fp32"] == pytest.approx(1.0)

    loss = results["bf16_loss"]
    assert loss["steps"] == 2 and set(loss["validation_fp32_eval"]) == {"fp32", "bf16"}
    assert loss["mean_abs_step_loss_difference"] >= 0 and _positive(loss["time_ratio_bf16_over_fp32"])

    decoding = results["decoding"]["arms"]
    assert set(decoding) == {"greedy/batch1", "greedy/batch4", "beam5/batch1", "beam5/batch4"}
    for key, arm in decoding.items():
        assert _positive(arm["sentences_per_second"]) and _positive(arm["per_sentence_speedup_vs_batch1"]), key
        assert 1 <= arm["max_length"] <= 6
    imputation = results["imputation"]
    assert "skipped" in imputation or all(_positive(a["sentences_per_second"]) for a in imputation["arms"].values())

    assert results["profiles"] and all(p["top_ops"] for p in results["profiles"])
    assert "| fp32 |" in results["markdown"] and "greedy/batch4" in results["markdown"]


def test_memory_probes_report_peak_rss(bench, tmp_path):
    """The probes that the benchmark runs in fresh processes, run here in-process on a tiny model."""
    data = bench.load_data(bench.parse_args(["--quick", "--tiny"]))
    path = bench.corpus_file(data, tmp_path)
    config = bench.model_config(data["tokenizer"], "tiny").to_diff_dict()
    config.pop("transformers_version", None)
    config.pop("model_type", None)
    for arm in (bench.Arm("fp32"), bench.Arm("baseline", baseline=True)):
        spec = {"kind": "train", "corpus": str(path), "config": config, "batch_size": 8, "arm": bench.asdict(arm)}
        out = bench.probe_main({**spec, "steps": 2})
        assert _positive(out["peak_rss_mb"]) and out["peak_rss_mb"] >= out["rss_before_model_mb"] * 0.5
        speed = bench.probe_main({**spec, "kind": "train_speed", "steps": 2})
        assert _positive(speed["tokens_per_second"]) and speed["minor_faults_per_step"] >= 0

    model_dir = tmp_path / "model"
    bench.SentenceVAEModel(bench.SentenceVAEConfig(**config)).save_pretrained(model_dir)
    data["tokenizer"].save_pretrained(model_dir)
    spec = {"kind": "decode_stream", "model_dir": str(model_dir), "sentences": 10, "batch_size": 4, "max_new_tokens": 5}
    out = bench.probe_main(spec)
    assert out["sentences"] == 10 and _positive(out["sentences_per_second"]) and _positive(out["peak_rss_mb"])


def _load_script(repo_root, name: str):
    return load_script(repo_root / "benchmarks" / f"{name}.py", name)


def test_word_dropout_sweep_report_from_finished_runs(repo_root, tmp_path, monkeypatch):
    """--report_only builds the Figure-3 table, JSON and PNG from the runs' results.json, in keep-rate order,
    with the paper's values beside ours; unfinished runs are left out; a bad keep rate is refused."""
    sweep = _load_script(repo_root, "word_dropout_sweep")
    runs = tmp_path / "sweep"
    for keep, (rec, kl) in {1.0: (120.0, 0.01), 0.5: (100.0, 9.5)}.items():
        folder = runs / sweep.run_name(keep)
        folder.mkdir(parents=True)
        results = {"test_reconstruction": rec, "test_kl": kl, "test_loss": rec + kl, "train_reconstruction": rec - 5,
                   "train_kl": kl, "global_step": 10, "best_step": 10}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(results))
    (runs / sweep.run_name(0.9)).mkdir()  # started, not finished
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    argv = ["word_dropout_sweep.py", "--runs_dir", str(runs), "--output", str(out), "--plot", str(png), "--report_only"]
    monkeypatch.setattr(sys, "argv", argv)
    sweep.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["keep_rate"] for r in rows] == [1.0, 0.5]
    assert rows[1]["test_kl"] == 9.5 and rows[1]["paper_kl"] == pytest.approx(15.13052)
    table = out.with_suffix(".md").read_text()
    assert "| 50% | 100.0 | 9.50 | 109.5 |" in table
    assert png.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(sys, "argv", [*argv, "--keep_rates", "1.5"])
    with pytest.raises(SystemExit):
        sweep.main()


def test_profile_decoding_reports_the_roofline(repo_root, tiny_model, tmp_path, monkeypatch, capsys):
    """The decoding profile on a tiny saved model prints its JSON (rates, FLOPs per row-step, the matmul bound)
    and the profiler table."""
    profile = _load_script(repo_root, "profile_decoding")
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    argv = ["profile_decoding.py", "--model", str(tmp_path / "model"), "--batch_size", "4", "--max_new_tokens", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    profile.main()
    text = capsys.readouterr().out
    result = json.loads(text[: text.index("}") + 1])
    config = model.config
    h = config.decoder_hidden_size
    assert result["flops_per_row_step"] == 2 * (h * config.vocab_size + 4 * h * (config.embedding_size + h))
    assert 0 < result["row_steps"] <= 4 * 5
    assert all(_positive(result[k]) for k in ("sentences_per_second", "ms_per_row_step", "matmul_gflops"))
    assert "Self CPU" in text


def test_ptb_report_with_a_seeded_iw_subset(repo_root, tiny_model, tiny_tokenizer, tiny_sentences, tmp_path):
    """ptb_report on tiny saved runs: the paper's row only where the paper has one, and the k-sample IW-NLL on a
    seeded subset of the test sentences (the same subset on a rerun), at most sampling noise above its bound."""
    report = _load_script(repo_root, "ptb_report")
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
    merge = _load_script(repo_root, "merge_eval_shards")
    shard = {"iw_samples": 500, "kl": 1.0, "reconstruction": 9.0}
    a = {**shard, "num_sentences": 2, "num_tokens": 10, "num_words": 8, "nll_iw": 10.0, "nll_bound": 12.0}
    b = {**shard, "num_sentences": 1, "num_tokens": 5, "num_words": 4, "nll_iw": 40.0, "nll_bound": 42.0,
         "kl": 4.0}  # fmt: skip
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, report in zip(paths, (a, b)):
        path.write_text(json.dumps(report))
    out = tmp_path / "full.json"
    merge.main([*map(str, paths), "--name", "full", "--output", str(out)])
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
