"""bf16 with and without the CPU's bf16 instructions: the same measurements in fresh processes whose oneDNN is capped
by `ONEDNN_MAX_CPU_ISA` (e.g. `AVX512_CORE_AMX` = everything on an Intel CPU with AMX, `AVX512_CORE_BF16` = AVX-512
BF16 without AMX, `AVX512_CORE` = no bf16 instructions at all). Each process reports the instruction set oneDNN
used, the fp32 and bf16 GEMM rates, a training step in bf16 autocast against fp32, and greedy decoding with the
bfloat16 and the mixed output layers against float32."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from bench_memory import corpus_file, run_probe
from bench_training import REFERENCE, Arm, TrainState, batch_plan, representative_batches
from measure import SEED, load_average, matmul_rate, model_config, onednn_isa

from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel
from hf_sentence_vae.data import TokenizedCorpus


def isa_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """One process's measurements (run through `run_benchmarks.py --probe`)."""
    torch.set_num_threads(1)
    repeats = spec["repeats"]
    result: dict[str, Any] = {"onednn_isa": onednn_isa(), "load_start": load_average()}
    rates = {dtype: [] for dtype in ("float32", "bfloat16")}
    for _ in range(repeats):
        for dtype in rates:
            rates[dtype].append(matmul_rate(getattr(torch, dtype), spec["matmul_size"])[0])
    result["matmul_gflops"] = {dtype: statistics.median(values) for dtype, values in rates.items()}

    data = np.load(spec["corpus"])
    corpus = TokenizedCorpus(data["ids"], data["offsets"], int(data["pad"]))
    config = SentenceVAEConfig(**spec["config"])
    arms = [Arm(REFERENCE), Arm("bf16", bf16=True)]
    picks = representative_batches(batch_plan(corpus, spec["batch_size"], arms[0]), corpus.lengths, spec["steps"])
    states = {arm.name: TrainState(arm, config, corpus) for arm in arms}
    speed: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for rep in range(repeats + 1):  # the first repetition warms up
        for arm in arms:
            start = time.perf_counter()
            tokens = sum(states[arm.name].step(idx, rep * len(picks) + i) for i, idx in enumerate(picks))
            if rep:
                speed[arm.name].append(tokens / (time.perf_counter() - start))
    result["training_tokens_per_second"] = {name: statistics.median(v) for name, v in speed.items()}
    result["training_bf16_over_fp32"] = statistics.median(b / a for a, b in zip(speed[REFERENCE], speed["bf16"]))

    if spec.get("model_dir"):
        model = SentenceVAEModel.from_pretrained(spec["model_dir"]).eval()
        codes = model.sample_prior(spec["decode_batch_size"], generator=torch.Generator().manual_seed(SEED))
        decode = dict(num_beams=1, do_sample=False, suppress_tokens=None, max_new_tokens=spec["max_new_tokens"])
        timings: dict[str, list[float]] = {"float32": [], "bfloat16": [], "mixed": []}
        with torch.no_grad():
            for rep in range(repeats + 1):
                for dtype in timings:
                    start = time.perf_counter()
                    model.generate(latent=codes, output_layer_dtype=dtype, **decode)
                    if rep:
                        timings[dtype].append(codes.shape[0] / (time.perf_counter() - start))
        result["greedy_sentences_per_second"] = {name: statistics.median(v) for name, v in timings.items()}
        for name, key in (("bfloat16", "greedy_bf16_over_fp32"), ("mixed", "greedy_mixed_over_fp32")):
            result[key] = statistics.median(b / a for a, b in zip(timings["float32"], timings[name]))
    result["load_end"] = load_average()
    return result


def bench_isa(data: dict[str, Any], args, workdir, model_dir: str | None) -> list[dict[str, Any]]:
    """`isa_probe` in a fresh process per `--isa_caps` value (`ONEDNN_MAX_CPU_ISA`; "default" = no cap)."""
    config = model_config(data["tokenizer"], args.sizes[0]).to_diff_dict()
    for key in ("transformers_version", "model_type"):
        config.pop(key, None)
    spec = {
        "kind": "isa",
        "corpus": str(corpus_file(data, workdir)),
        "config": config,
        "size": args.sizes[0],
        "batch_size": args.batch_sizes[0],
        "steps": 3,
        "repeats": args.isa_repeats,
        "matmul_size": args.matmul_size,
        "model_dir": model_dir,
        "decode_batch_size": max(args.decode_batch_sizes),
        "max_new_tokens": args.max_new_tokens,
        "threads": 1,
    }
    results = []
    for cap in args.isa_caps:
        env = {} if cap == "default" else {"ONEDNN_MAX_CPU_ISA": cap}
        out = run_probe(spec, env)
        results.append({"onednn_max_cpu_isa": cap, **out, "spec": {k: v for k, v in spec.items() if k != "config"}})
    return results


__all__ = ["bench_isa", "isa_probe"]
