"""Decoding and imputation throughput: greedy and beam search at several batch sizes, and batched imputation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from measure import SEED, load_average, median

from hf_sentence_vae import SentenceVAEModel
from hf_sentence_vae.data import TokenizedCorpus


def decoding_arms(args) -> list[tuple[str, int, int, int]]:
    """(mode, num_beams, batch size, threads)."""
    arms = []
    for beams in [1, *args.beams]:
        for batch in args.decode_batch_sizes:
            arms.append(("greedy" if beams == 1 else f"beam{beams}", beams, batch, 1))
    for threads in args.threads:
        if threads != args.threads[0]:
            arms.append(("greedy", 1, max(args.decode_batch_sizes), threads))
    return arms


@torch.no_grad()
def bench_decoding(model: SentenceVAEModel, args) -> dict[str, Any]:
    """Sentences per second from prior samples. In each repetition every arm decodes the first codes of one
    draw: batch b decodes b codes in one call, batch 1 decodes `--single_sentences` of them one by one."""
    model.eval()
    arms = decoding_arms(args)
    largest = max(args.decode_batch_sizes + [args.single_sentences])
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.warmup + args.decode_repeats):
        codes = model.sample_prior(largest, generator=torch.Generator().manual_seed(SEED + rep))
        for mode, beams, batch, threads in arms:
            if beams > 1 and batch > args.max_beam_batch:
                continue
            key = f"{mode}/batch{batch}" + (f"@{threads}threads" if threads != args.threads[0] else "")
            torch.set_num_threads(threads)
            count = args.single_sentences if batch == 1 else batch
            load = load_average()
            start = time.perf_counter()
            lengths = []
            for i in range(0, count, batch):
                out = model.generate(
                    latent=codes[i : i + batch],
                    num_beams=beams,
                    max_new_tokens=args.max_new_tokens,
                    suppress_tokens=None,
                )
                lengths.append(out.ne(model.config.pad_token_id).sum(-1))
            seconds = time.perf_counter() - start
            lengths = torch.cat(lengths).float()
            runs.setdefault(key, []).append(
                {
                    "warmup": rep < args.warmup,
                    "sentences_per_second": count / seconds,
                    "seconds": seconds,
                    "sentences": count,
                    "mean_length": float(lengths.mean()),
                    "max_length": int(lengths.max()),
                    "ms_per_token": seconds / float(lengths.sum()) * 1e3,
                    "load": load,
                }
            )
    torch.set_num_threads(args.threads[0])
    measured = {k: [r for r in v if not r["warmup"]] for k, v in runs.items()}
    summary = {}
    for key, mine in measured.items():
        mode = key.split("/")[0]
        single = measured.get(f"{mode}/batch1")
        speedup = None
        if single:
            speedup = median(a["sentences_per_second"] / b["sentences_per_second"] for a, b in zip(mine, single))
        summary[key] = {
            "sentences_per_second": median(r["sentences_per_second"] for r in mine),
            "per_sentence_speedup_vs_batch1": speedup,
            "mean_length": median(r["mean_length"] for r in mine),
            "max_length": max(r["max_length"] for r in mine),
            "ms_per_token": median(r["ms_per_token"] for r in mine),
            "load_median": median(r["load"] for r in mine),
            "runs": runs[key],
        }
    return {"max_new_tokens": args.max_new_tokens or model.config.max_sentence_length, "arms": summary}


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
