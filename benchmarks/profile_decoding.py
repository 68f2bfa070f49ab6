"""Where batched greedy (or beam) decoding spends its time: `torch.profiler` over one `generate` call from
prior samples, plus a per-row-step roofline from the model's FLOPs and the measured fp32 matmul rate.

    python benchmarks/profile_decoding.py --model runs/ptb/vae_standard/best --batch_size 512
    python benchmarks/profile_decoding.py --model runs/ptb/vae_standard/best --batch_size 64 --num_beams 5

A row-step is one sentence's step in greedy decoding; in beam search, one step of a sentence's `num_beams`
hypotheses counts `num_beams` row-steps, and the row-steps are those of the returned sentences' lengths (the search
runs at least that long, and stops running finished hypotheses), so the bound is a lower one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

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
    flops = 2 * (
        config.decoder_hidden_size * config.vocab_size
        + 4 * config.decoder_hidden_size * (lstm_in + config.decoder_hidden_size)
    )
    rate = matmul_gflops()
    result = {
        "command": "python benchmarks/profile_decoding.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
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
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
