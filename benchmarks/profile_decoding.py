"""Where batched greedy (or beam) decoding spends its time: `torch.profiler` over one `generate` call from
prior samples, plus a per-row-step roofline from the model's FLOPs and the measured fp32 matmul rate.

    python benchmarks/profile_decoding.py --model runs/ptb/vae_standard/best --batch_size 512
    python benchmarks/profile_decoding.py --model runs/ptb/vae_standard/best --batch_size 64 --num_beams 5
    python benchmarks/profile_decoding.py --model runs/ptb/vae_standard/best --batch_size 64 --num_beams 5 --by_rows

A row-step is one sentence's step in greedy decoding; in beam search, one step of a sentence's `num_beams`
hypotheses counts `num_beams` row-steps, and the row-steps are those of the returned sentences' lengths (the search
runs at least that long, and stops running finished hypotheses), so the bound is a lower one.

`--by_rows` times one more `generate` call step by step: the output layer's choice (`greedy_tokens`,
`screened_greedy_tokens`, `top_k_tokens`) and the LSTM step, each call filed by its number of rows (a search drops
finished rows, so late steps run on few), against the matrix products' bound at the measured GEMM rate; what is left
of the call's wall time is the search's own bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.profiler import profile

from hf_sentence_vae import SentenceVAEModel


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# The searches' output-layer choices, as the model's module calls them.
OUTPUT_LAYER_STEPS = ("greedy_tokens", "screened_greedy_tokens", "top_k_tokens")
# Upper ends of the row-count buckets of `--by_rows` (one more bucket above the last).
ROW_BUCKETS = (16, 64, 256)


@contextmanager
def timed_steps(model: SentenceVAEModel, records: list[tuple[str, int, float]]) -> Iterator[None]:
    """While open, every output-layer choice and LSTM step of `model`'s fast searches appends `(kind, rows,
    seconds)` to `records`, kind "output_layer" or "lstm"."""
    module = sys.modules[type(model).__module__]
    saved = {name: getattr(module, name) for name in OUTPUT_LAYER_STEPS}

    def timed(kind, fn):
        def call(rows_tensor, *args, **kwargs):
            start = time.perf_counter()
            out = fn(rows_tensor, *args, **kwargs)
            records.append((kind, rows_tensor.shape[0], time.perf_counter() - start))
            return out

        return call

    for name, fn in saved.items():
        setattr(module, name, timed("output_layer", fn))
    model._decoder_features = timed("lstm", model._decoder_features)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
        del model._decoder_features


def steps_by_rows(
    records: Sequence[tuple[str, int, float]],
    seconds: float,
    output_flops: float,
    lstm_flops: float,
    gflops: float,
    edges: Sequence[int] = ROW_BUCKETS,
) -> dict[str, object]:
    """`records` of [`timed_steps`] summed per row-count bucket: output-layer calls (steps), the rows they ran on
    (row-steps), the milliseconds of the output layer and of the LSTM, and each one's matrix-product bound at
    `gflops` (`output_flops` / `lstm_flops` per row-step); with the rest of `seconds` (the search's bookkeeping)."""
    bounds = list(edges) + [None]
    labels = [f"{low + 1}-{high}" if high else f">{low}" for low, high in zip([0, *edges], bounds)]
    buckets = {label: dict(steps=0, row_steps=0, output_layer_ms=0.0, lstm_ms=0.0) for label in labels}
    for kind, rows, took in records:
        label = labels[next(i for i, high in enumerate(bounds) if high is None or rows <= high)]
        bucket = buckets[label]
        if kind == "output_layer":
            bucket["steps"] += 1
            bucket["row_steps"] += rows
            bucket["output_layer_ms"] += 1000 * took
        else:
            bucket["lstm_ms"] += 1000 * took
    for bucket in buckets.values():
        bucket["output_layer_bound_ms"] = bucket["row_steps"] * output_flops / (gflops * 1e6)
        bucket["lstm_bound_ms"] = bucket["row_steps"] * lstm_flops / (gflops * 1e6)
    timed = sum(b["output_layer_ms"] + b["lstm_ms"] for b in buckets.values())
    return {"total_ms": 1000 * seconds, "bookkeeping_ms": 1000 * seconds - timed, "by_rows": buckets}


def main(argv: Sequence[str] | None = None) -> int:
    """Profile greedy decoding of the model as the arguments say; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--num_beams", type=int, default=1, help="1: greedy; more: beam search")
    parser.add_argument("--output_layer_dtype", default="float32", choices=["float32", "bfloat16", "mixed"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=12, help="profiler table rows")
    parser.add_argument("--by_rows", action="store_true", help="also time the steps by their number of rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SentenceVAEModel.from_pretrained(args.model).eval()
    config = model.config
    z = model.sample_prior(args.batch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        search = dict(
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            do_sample=False,
            suppress_tokens=None,
            output_layer_dtype=args.output_layer_dtype,
        )
        model.generate(latent=z[:8], **search)  # warm-up
        seconds = _timed(lambda: model.generate(latent=z, **search))
        with profile() as prof:
            out = model.generate(latent=z, **search)
    # tokens generated, end of sentence included; one per hypothesis in beam search
    row_steps = int((out != config.pad_token_id).sum()) * args.num_beams
    # Per row-step: output projection plus the LSTM gates (input = embedding [+ z]).
    lstm_in = config.embedding_size + (
        config.latent_size if config.latent_injection == "initial_state_and_inputs" else 0
    )
    output_flops = 2 * config.decoder_hidden_size * config.vocab_size
    lstm_flops = 2 * 4 * config.decoder_hidden_size * (lstm_in + config.decoder_hidden_size)
    flops = output_flops + lstm_flops
    rate = matmul_gflops()
    result = {
        "command": "python benchmarks/profile_decoding.py "
        + " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items() if v is not False),
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "output_layer_dtype": args.output_layer_dtype,
        "sentences_per_second": args.batch_size / seconds,
        "row_steps": row_steps,
        "ms_per_row_step": 1000 * seconds / row_steps,
        "flops_per_row_step": flops,
        "matmul_gflops": rate,
        "matmul_bound_ms_per_row_step": 1000 * flops / (rate * 1e9),
    }
    if args.by_rows:
        records: list[tuple[str, int, float]] = []
        with torch.no_grad(), timed_steps(model, records):
            seconds = _timed(lambda: model.generate(latent=z, **search))
        result["steps"] = steps_by_rows(records, seconds, output_flops, lstm_flops, rate)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
