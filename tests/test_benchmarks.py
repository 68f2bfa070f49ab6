"""Smoke tests of the speed benchmarks (`benchmarks/`): `run_benchmarks.py --quick` on a tiny synthetic config, its
memory probes, and the decoding profile, in-process. Structure only: every figure present and positive; no timing
thresholds."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import load_script, run_main


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
        "--isa_caps", "AVX512_CORE",
        "--isa_repeats", "1",
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
    assert set(entry["arms"]) == {"fp32", "bf16", "peer design", "peer design, padded LSTMs", "baseline"}
    for name, arm in entry["arms"].items():
        for key in (
            "tokens_per_second",
            "tokens_per_cpu_second",
            "achieved_gflops",
            "matmul_gflops",
            "fraction_of_matmul",
            "fraction_of_matmul_cpu_time",
            "ratio_vs_fp32",
            "ratio_vs_peer",
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
        assert _positive(arm["ratio_vs_peer"]) and _positive(arm["bf16_ratio_vs_peer"]), key
        assert arm["same_sequences"]["peer design"] == 1.0, key  # the peer design decodes the same sentences
        # the mixed output layer: the float32 sentences, greedy and beam
        assert _positive(arm["mixed_ratio_vs_peer"]) and arm["same_sequences"]["ours, mixed output layer"] == 1.0
        assert 1 <= arm["max_length"] <= 6
    assert 0 < decoding["greedy/batch4"]["fraction_of_matmul_bound"] < 1
    machine = results["machine"]
    assert machine["cpu_model"] and machine["onednn_isa"]
    assert f"oneDNN ISA: {machine['onednn_isa']}" in results["markdown"]
    assert "| training, peer sizes, batch 32" in results["markdown"]
    (isa,) = results["isa"]
    assert "error" not in isa, isa.get("error")
    assert isa["onednn_max_cpu_isa"] == "AVX512_CORE" and "bfloat16" not in isa["onednn_isa"]
    assert _positive(isa["matmul_gflops"]["bfloat16"]) and _positive(isa["greedy_bf16_over_fp32"])
    assert _positive(isa["greedy_mixed_over_fp32"]) and "| greedy mixed output layer / fp32 |" in results["markdown"]
    imputation = results["imputation"]
    assert "skipped" in imputation or all(_positive(a["sentences_per_second"]) for a in imputation["arms"].values())

    assert results["profiles"] and all(p["top_ops"] for p in results["profiles"])
    assert "| fp32 |" in results["markdown"] and "greedy/batch4" in results["markdown"]


def test_memory_probes_report_peak_rss(bench, tmp_path):
    """The probes that the benchmark runs in fresh processes, run here in-process on a tiny model."""
    from dataclasses import asdict

    import bench_memory
    import bench_training
    import measure

    from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel

    data = measure.load_data(bench.parse_args(["--quick", "--tiny"]))
    path = bench_memory.corpus_file(data, tmp_path)
    config = measure.model_config(data["tokenizer"], "tiny").to_diff_dict()
    config.pop("transformers_version", None)
    config.pop("model_type", None)
    for arm in (bench_training.Arm("fp32"), bench_training.Arm("baseline", baseline=True)):
        spec = {"kind": "train", "corpus": str(path), "config": config, "batch_size": 8, "arm": asdict(arm)}
        out = bench_memory.probe_main({**spec, "steps": 2})
        assert _positive(out["peak_rss_mb"]) and out["peak_rss_mb"] >= out["rss_before_model_mb"] * 0.5
        speed = bench_memory.probe_main({**spec, "kind": "train_speed", "steps": 2})
        assert _positive(speed["tokens_per_second"]) and speed["minor_faults_per_step"] >= 0

    model_dir = tmp_path / "model"
    SentenceVAEModel(SentenceVAEConfig(**config)).save_pretrained(model_dir)
    data["tokenizer"].save_pretrained(model_dir)
    spec = {"kind": "decode_stream", "model_dir": str(model_dir), "sentences": 10, "batch_size": 4, "max_new_tokens": 5}
    out = bench_memory.probe_main(spec)
    assert out["sentences"] == 10 and _positive(out["sentences_per_second"]) and _positive(out["peak_rss_mb"])


@pytest.mark.parametrize(
    "extra", [[], ["--num_beams", "3", "--output_layer_dtype", "bfloat16"]], ids=["greedy", "beam_bf16"]
)
def test_profile_decoding_reports_the_roofline(repo_root, tiny_model, tmp_path, capsys, extra):
    """The decoding profile on a tiny saved model prints its JSON (rates, FLOPs per row-step, the matmul bound)
    and the profiler table; for greedy and for beam search, in either output-layer precision."""
    profile = load_script(repo_root / "benchmarks" / "profile_decoding.py")
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--batch_size", "4", "--max_new_tokens", "5", *extra]
    status, text, _ = run_main(profile, argv, capsys)
    assert status == 0
    result = json.loads(text[: text.index("}") + 1])
    config = model.config
    h = config.decoder_hidden_size
    beams = 3 if extra else 1
    assert result["num_beams"] == beams
    assert result["output_layer_dtype"] == ("bfloat16" if extra else "float32")
    assert result["flops_per_row_step"] == 2 * (h * config.vocab_size + 4 * h * (config.embedding_size + h))
    assert 0 < result["row_steps"] <= 4 * 5 * beams and result["row_steps"] % beams == 0
    assert all(_positive(result[k]) for k in ("sentences_per_second", "ms_per_row_step", "matmul_gflops"))
    assert "Self CPU" in text
    assert "steps" not in result and "--by_rows" not in result["command"]


def test_profile_decoding_times_the_steps_by_their_rows(repo_root, tiny_model, tmp_path, capsys):
    """`--by_rows`: every output-layer choice and LSTM step of one more beam search is filed by its row count (the
    first step runs one row per sentence, later ones a row per open hypothesis), the parts add up to at most the
    call's wall time, and the bounds follow the FLOPs per row-step."""
    profile = load_script(repo_root / "benchmarks" / "profile_decoding.py")
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--batch_size", "6", "--max_new_tokens", "7", "--num_beams", "3"]
    status, text, _ = run_main(profile, [*argv, "--by_rows"], capsys)
    assert status == 0
    result = json.loads(text[: text.index("\n}\n") + 2])  # the JSON object, then the profiler table
    assert result["command"].endswith("--by_rows")
    steps = result["steps"]
    assert list(steps["by_rows"]) == ["1-16", "17-64", "65-256", ">256"]
    small, larger = steps["by_rows"]["1-16"], steps["by_rows"]["17-64"]
    assert sum(b["steps"] for b in steps["by_rows"].values()) == small["steps"] + larger["steps"] >= 2
    assert larger["steps"] == 0 or larger["row_steps"] <= 18 * larger["steps"]  # at most 6 x 3 open hypotheses
    # the first step (a row per sentence), then at least two open hypotheses per sentence (one <eos> at most)
    assert small["row_steps"] + larger["row_steps"] >= 6 + 6 * 2
    parts = sum(b["output_layer_ms"] + b["lstm_ms"] for b in steps["by_rows"].values())
    assert parts > 0 and steps["bookkeeping_ms"] >= 0
    assert steps["total_ms"] == pytest.approx(parts + steps["bookkeeping_ms"])
    h, config = model.config.decoder_hidden_size, model.config
    for bucket in steps["by_rows"].values():
        expected = bucket["row_steps"] * 2 * h * config.vocab_size / (result["matmul_gflops"] * 1e6)
        assert bucket["output_layer_bound_ms"] == pytest.approx(expected)
    records = [("output_layer", 300, 0.5), ("lstm", 300, 0.25)]
    summary = profile.steps_by_rows(records, seconds=1.0, output_flops=1e9, lstm_flops=1e9, gflops=1000.0)
    expected = dict(steps=1, row_steps=300, output_layer_ms=500.0, lstm_ms=250.0)
    assert summary["by_rows"][">256"] == dict(expected, output_layer_bound_ms=300.0, lstm_bound_ms=300.0)
    assert summary["bookkeeping_ms"] == pytest.approx(250.0)


def _peer_problem(tiny_config, random_batch, **overrides):
    import torch

    from hf_sentence_vae import SentenceVAEModel

    config = tiny_config(vocab_size=60, initializer_range=0.5, word_keep_rate=0.7, **overrides)
    torch.manual_seed(0)
    ours = SentenceVAEModel(config).train()
    input_ids, attention_mask = random_batch(config, [5, 9, 1, 7, 3], seed=1)
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(5, config.latent_size, generator=generator)
    words = torch.rand(5, input_ids.shape[1], generator=generator)
    return config, ours, (input_ids, attention_mask, noise, words)


@pytest.mark.parametrize("injection", ["initial_state", "initial_state_and_inputs"])
@pytest.mark.parametrize("packed", [True, False])
def test_the_peer_design_has_our_objective(bench, tiny_config, random_batch, injection, packed):
    """For the same weights, batch and noise the peer-style reference's loss is the library's (word dropout on, a
    KL weight below 1), and so are its gradients."""
    import torch
    from peer_reference import PeerStyleVAE

    config, ours, (input_ids, attention_mask, noise, words) = _peer_problem(
        tiny_config, random_batch, latent_injection=injection
    )
    peer = PeerStyleVAE(config, packed=packed).train()
    peer.load_state_dict(ours.state_dict())
    mine = ours(
        input_ids, attention_mask, kl_weight=0.3, latent_noise=noise, word_dropout_noise=words, return_logits=False
    ).loss
    theirs = peer(input_ids, attention_mask, 0.3, config.word_keep_rate, noise, words)
    torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)
    mine.backward()
    theirs.backward()
    grads = dict(peer.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("injection", ["initial_state", "initial_state_and_inputs"])
def test_the_peer_design_decodes_our_sentences(bench, tiny_config, random_batch, injection):
    """Its greedy decoding (one nn.LSTM call per step, top-1 of the full logits, finished rows pruned) and its
    textbook beam search return `generate`'s sequences."""
    import torch
    from peer_reference import PeerStyleVAE

    config, ours, _ = _peer_problem(tiny_config, random_batch, latent_injection=injection)
    ours.eval()
    peer = PeerStyleVAE(config).eval()
    peer.load_state_dict(ours.state_dict())
    codes = torch.randn(12, config.latent_size, generator=torch.Generator().manual_seed(3))
    common = dict(do_sample=False, suppress_tokens=None, max_new_tokens=10)
    assert torch.equal(peer.greedy(codes, 10), ours.generate(latent=codes, num_beams=1, **common))
    assert torch.equal(peer.beam(codes, 4, 10), ours.generate(latent=codes, num_beams=4, **common))


def test_the_peer_design_refuses_what_it_does_not_cover(bench, tiny_config):
    from peer_reference import PeerStyleVAE

    with pytest.raises(ValueError, match=r"tie_word_embeddings.*right_to_left"):
        PeerStyleVAE(tiny_config(tie_word_embeddings=True, right_to_left=True))
    with pytest.raises(ValueError, match=r"bag_of_words_weight=0.5"):
        PeerStyleVAE(tiny_config(bag_of_words_weight=0.5))


def test_decoders_search_as_asked_whatever_the_models_generation_config(bench, tiny_model):
    """Every decoder of the decoding benchmark runs the search it is asked for, not the model's saved default (a
    trained model's is beam 5): ours, bf16 and mixed greedy decode what the peer design's greedy decodes (the mixed
    layer the float32 sentences exactly), and ours, mixed and the peer design's beam search the same beams."""
    import bench_decoding
    import torch

    model = tiny_model(initializer_range=0.5, vocab_size=300).eval()
    model.generation_config.num_beams = 5
    found, skipped = bench_decoding.decoders(model, None)
    assert skipped is None
    codes = torch.randn(20, model.config.latent_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = {name: decode(codes, 1, 8) for name, decode in found.items()}
        beams = {name: found[name](codes, 5, 8) for name in (bench_decoding.OURS, bench_decoding.OURS_MIXED)}
        beams["peer"] = found[bench_decoding.PEER](codes, 5, 8)
    pad = model.config.pad_token_id
    assert bool(bench_decoding._same(out[bench_decoding.OURS], out[bench_decoding.PEER], pad).all())
    assert bool(bench_decoding._same(out[bench_decoding.OURS], out[bench_decoding.OURS_MIXED], pad).all())
    assert bool(bench_decoding._same(beams[bench_decoding.OURS], beams["peer"], pad).all())
    assert bool(bench_decoding._same(beams[bench_decoding.OURS], beams[bench_decoding.OURS_MIXED], pad).all())
    assert out[bench_decoding.OURS_BF16].shape[0] == 20


def test_bench_packed_times_both_products_and_measures_memory(repo_root, tiny_model, tmp_path, capsys):
    """`bench_packed.py`: per row count, MKL's and the packed oneDNN product of the model's output layer (the same
    values to float32 rounding), and the RSS of two fresh processes searching with and without the packed products."""
    from hf_sentence_vae.kernels import PackedWeight

    if not PackedWeight.supports(torch.zeros(1, 1)):
        pytest.skip("torch without its oneDNN (mkldnn) ops")
    script = load_script(repo_root / "benchmarks" / "bench_packed.py")
    tiny_model().save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--rows", "1,3", "--repeats", "1", "--number", "2"]
    argv += ["--searches", "3", "--max_rows", "4", "--max_new_tokens", "4", "--output", str(tmp_path / "out.json")]
    status, _, _ = run_main(script, argv, capsys)
    assert status == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert [row["rows"] for row in result["products"]] == [1, 3]
    for row in result["products"]:
        assert _positive(row["mkl_ms"]) and _positive(row["packed_ms"]) and row["max_abs_diff"] < 1e-4
    for key, packed in (("packed", True), ("unpacked", False)):
        run = result["memory"][key]
        assert run["packed"] is packed and list(run["rss_mb_after_searches"]) == ["1", "3"]
        assert all(_positive(value) for value in run["rss_mb_after_searches"].values())
