"""Decoding and imputation throughput: greedy and beam search at several batch sizes, ours against the peer design
(and optionally another revision), and batched imputation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from measure import SEED, decoding_flops_per_row_step, load_average, matmul_rate, median
from peer_reference import PeerStyleVAE

from hf_sentence_vae import SentenceVAEModel
from hf_sentence_vae.data import TokenizedCorpus


def decoding_arms(args) -> list[tuple[str, int, int, int]]:
    """(mode, num_beams, batch size, threads)."""
    arms = []
    for beams in [1, *args.beams]:
        for batch in args.decode_batch_sizes:
            if beams > 1 and batch > args.max_beam_batch:
                continue
            arms.append(("greedy" if beams == 1 else f"beam{beams}", beams, batch, 1))
    for threads in args.threads:
        if threads != args.threads[0]:
            arms.append(("greedy", 1, max(args.decode_batch_sizes), threads))
    return arms


OURS, OURS_BF16, OURS_MIXED = "ours", "ours, bf16 output layer", "ours, mixed output layer"
PEER, PREVIOUS = "peer design", "previous revision"


def decoders(model: SentenceVAEModel, args, previous=None) -> tuple[dict[str, Callable], str | None]:
    """The implementations decoding side by side, each `decode(codes, num_beams, max_new_tokens) -> (B, L) ids`:
    ours (float32, with the bfloat16 output layer, and with the mixed one: the float32 sentences, greedy search from
    a bfloat16 screen, both searches with the LSTM inputs looked up), the peer-style reference (where the model's architecture is
    one it covers; else the reason it is left out) and, with `previous`, another revision's model class."""
    common = dict(do_sample=False, suppress_tokens=None)
    found = {
        OURS: lambda codes, beams, length: model.generate(
            latent=codes, num_beams=beams, max_new_tokens=length, **common
        ),
        OURS_BF16: lambda codes, beams, length: model.generate(
            latent=codes, num_beams=beams, max_new_tokens=length, output_layer_dtype="bfloat16", **common
        ),
        OURS_MIXED: lambda codes, beams, length: model.generate(
            latent=codes, num_beams=beams, max_new_tokens=length, output_layer_dtype="mixed", **common
        ),
    }
    skipped = None
    try:
        peer = PeerStyleVAE(model.config).eval()
    except ValueError as err:
        skipped = str(err)
    else:
        peer.load_state_dict(model.state_dict(), strict=False)
        found[PEER] = lambda codes, beams, length: (
            peer.greedy(codes, length) if beams == 1 else peer.beam(codes, beams, length)
        )
    if previous is not None:
        found[PREVIOUS] = lambda codes, beams, length: previous.generate(
            latent=codes, num_beams=beams, max_new_tokens=length, **common
        )
    return found, skipped


def _paired(
    measured: dict[str, list[dict[str, Any]]], faster: str, slower: str, field: str = "sentences_per_second"
) -> float | None:
    """The median over repetitions of `faster`'s `field` (sentences per second, or per CPU second) over `slower`'s
    (None where either did not run)."""
    if faster not in measured or slower not in measured:
        return None
    pairs = zip(measured[faster], measured[slower])
    return median(a[field] / b[field] for a, b in pairs)


def _same(a: torch.Tensor, b: torch.Tensor, pad: int) -> torch.Tensor:
    """`(B,)` whether the rows of two `(B, L)` decodes (right-padded with `pad`, of any widths) are equal."""
    width = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, width - a.shape[1]), value=pad)
    b = torch.nn.functional.pad(b, (0, width - b.shape[1]), value=pad)
    return (a == b).all(-1)


@torch.no_grad()
def bench_decoding(model: SentenceVAEModel, args, previous=None) -> dict[str, Any]:
    """Sentences per second from prior samples, ours against the peer design (and `previous`, another revision's
    model with the same weights), alternating within each repetition: batch b decodes b codes in one call, batch 1
    decodes `--single_sentences` of them one by one. Greedy arms also get their time per sentence-step against the
    fp32 matmul bound (the step's matmul FLOPs at the rate of a square GEMM measured in the same repetition)."""
    model.eval()
    pad = model.config.pad_token_id
    length = args.max_new_tokens or model.config.max_sentence_length
    implementations, peer_skipped = decoders(model, args, previous)
    flops = decoding_flops_per_row_step(model.config)
    arms = decoding_arms(args)
    largest = max(args.decode_batch_sizes + [args.single_sentences])
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    agreement: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.warmup + args.decode_repeats):
        codes = model.sample_prior(largest, generator=torch.Generator().manual_seed(SEED + rep))
        torch.set_num_threads(args.threads[0])
        rate = matmul_rate(torch.float32, args.matmul_size)[0]
        for mode, beams, batch, threads in arms:
            key = f"{mode}/batch{batch}" + (f"@{threads}threads" if threads != args.threads[0] else "")
            torch.set_num_threads(threads)
            count = args.single_sentences if batch == 1 else batch
            outputs = {}
            for name, decode in implementations.items():
                if threads != args.threads[0] and name != OURS:
                    continue
                load = load_average()
                start, start_cpu = time.perf_counter(), time.process_time()
                out = [decode(codes[i : i + batch], beams, length) for i in range(0, count, batch)]
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
                out = torch.cat([torch.nn.functional.pad(o, (0, length - o.shape[1]), value=pad) for o in out])
                outputs[name] = out
                row_steps = int(out.ne(pad).sum())
                entry = {
                    "warmup": rep < args.warmup,
                    "sentences_per_second": count / seconds,
                    "sentences_per_cpu_second": count / cpu_seconds,
                    "seconds": seconds,
                    "sentences": count,
                    "mean_length": row_steps / count,
                    "max_length": int(out.ne(pad).sum(-1).max()),
                    "ms_per_sentence_step": seconds / row_steps * 1e3,
                    "load": load,
                }
                if beams == 1:
                    entry["matmul_gflops"] = rate
                    entry["fraction_of_matmul_bound"] = flops / rate / 1e9 / (seconds / row_steps)
                runs.setdefault(key, {}).setdefault(name, []).append(entry)
            for name in (OURS_BF16, OURS_MIXED, PEER, PREVIOUS):
                if name in outputs and rep >= args.warmup:
                    same = float(_same(outputs[OURS], outputs[name], pad).float().mean())
                    agreement.setdefault(key, {}).setdefault(name, []).append(same)
    torch.set_num_threads(args.threads[0])
    summary = {}
    for key, by_name in runs.items():
        measured = {name: [r for r in rs if not r["warmup"]] for name, rs in by_name.items()}
        mine = measured[OURS]
        mode = key.split("/")[0]
        single = runs.get(f"{mode}/batch1", {}).get(OURS)
        single = [r for r in single if not r["warmup"]] if single else None
        summary[key] = {
            "sentences_per_second": median(r["sentences_per_second"] for r in mine),
            "implementations": {name: median(r["sentences_per_second"] for r in rs) for name, rs in measured.items()},
            "ratio_vs_peer": _paired(measured, OURS, PEER),
            "ratio_vs_peer_cpu_time": _paired(measured, OURS, PEER, "sentences_per_cpu_second"),
            "bf16_ratio_vs_peer": _paired(measured, OURS_BF16, PEER),
            "bf16_ratio_vs_ours": _paired(measured, OURS_BF16, OURS),
            "mixed_ratio_vs_peer": _paired(measured, OURS_MIXED, PEER),
            "mixed_ratio_vs_ours": _paired(measured, OURS_MIXED, OURS),
            "ratio_vs_previous": _paired(measured, OURS, PREVIOUS),
            "ratio_vs_previous_cpu_time": _paired(measured, OURS, PREVIOUS, "sentences_per_cpu_second"),
            "same_sequences": {name: min(values) for name, values in agreement.get(key, {}).items()},
            "per_sentence_speedup_vs_batch1": None
            if not single
            else median(a["sentences_per_second"] / b["sentences_per_second"] for a, b in zip(mine, single)),
            "ms_per_sentence_step": median(r["ms_per_sentence_step"] for r in mine),
            "fraction_of_matmul_bound": median(r.get("fraction_of_matmul_bound") for r in mine),
            "mean_length": median(r["mean_length"] for r in mine),
            "max_length": max(r["max_length"] for r in mine),
            "load_median": median(r["load"] for r in mine),
            "repetitions": len(mine),
            "runs": by_name,
        }
    return {
        "max_new_tokens": length,
        "flops_per_sentence_step": flops,
        "peer_skipped": peer_skipped,
        "arms": summary,
    }


def bench_imputation(model: SentenceVAEModel, corpus: TokenizedCorpus, args) -> dict[str, Any]:
    """ICM imputation (the paper's Section 5: the last 20% of the words, 3 ICM steps of a beam-5 search for a
    VAE, one beam-15 search for an RNNLM) of validation sentences: sentences per second at batch 1 and batched.
    Skipped (with the reason) where hf_sentence_vae has no `imputation.impute`."""
    try:
        from hf_sentence_vae.imputation import impute, suffix_unknown_mask
    except ImportError as err:
        return {"skipped": f"hf_sentence_vae has no imputation.impute ({err})"}
    rng = np.random.default_rng(SEED)
    batch_size = min(args.impute_batch_size, len(corpus))
    chosen = rng.choice(len(corpus), batch_size, replace=False)
    chosen = chosen[np.argsort(corpus.lengths[chosen], kind="stable")]  # length-sorted, as impute_texts batches
    runs: dict[str, list[dict[str, Any]]] = {}
    model.eval()
    for rep in range(args.warmup + args.decode_repeats):
        for batch in (1, batch_size):
            count = min(args.single_sentences, batch_size) if batch == 1 else batch_size
            picks = chosen if batch > 1 else chosen[np.linspace(0, batch_size - 1, count).round().astype(int)]
            start = time.perf_counter()
            for i in range(0, count, batch):
                b = corpus.batch(picks[i : i + batch])
                unknown = suffix_unknown_mask(b["attention_mask"], 0.2)
                impute(model, b["input_ids"], b["attention_mask"], unknown)
            seconds = time.perf_counter() - start
            runs.setdefault(f"batch{batch}", []).append(
                {"warmup": rep < args.warmup, "sentences_per_second": count / seconds, "load": load_average()}
            )
    measured = {k: [r for r in v if not r["warmup"]] for k, v in runs.items()}
    single = measured["batch1"]
    return {
        "setting": "last 20% of the words; VAE: 3 ICM steps of beam 5; RNNLM: beam 15 (impute's defaults)",
        "arms": {
            key: {
                "sentences_per_second": median(r["sentences_per_second"] for r in mine),
                "per_sentence_speedup_vs_batch1": median(
                    a["sentences_per_second"] / b["sentences_per_second"] for a, b in zip(mine, single)
                ),
                "load_median": median(r["load"] for r in mine),
                "runs": runs[key],
            }
            for key, mine in measured.items()
        },
    }
