"""The packed oneDNN products of few-row decoding steps (`kernels.PackedWeight`) against MKL's GEMM, and what they
cost in memory.

    python benchmarks/bench_packed.py --model runs/ptb/vae_peer_sizes/best --output benchmarks/results/packed_products.json

Products: for each row count, the median time of the output layer's product `hidden @ weight.T + bias` (the model's
weight and bias, random rows) by `torch.addmm` (MKL) and by `PackedWeight` (its packing excluded), one thread, the two
alternating. Memory: two fresh processes run the same `--searches` searches (2 to `--max_rows` sentences drawn at
random, greedy and beam 5 in turn, `--max_new_tokens` tokens), one with the packed products and one without
(`PackedWeight.supports` patched to refuse), and report their RSS after each of a few searches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_info, rss_mb  # noqa: E402

DEFAULT_ROWS = (1, 2, 3, 5, 8, 16, 32, 64, 128)


def _median_seconds(fn, repeats: int, number: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def time_products(weight: torch.Tensor, bias: torch.Tensor, rows: list[int], repeats: int, number: int) -> list[dict]:
    """Per row count: the median milliseconds of MKL's `addmm` and of the packed oneDNN product, and their ratio."""
    from hf_sentence_vae.kernels import PackedWeight

    packed = PackedWeight(weight, bias)
    generator = torch.Generator().manual_seed(0)
    results = []
    for count in rows:
        hidden = torch.randn(count, weight.shape[1], generator=generator)
        packed(hidden)  # packs the weight (once)
        mkl = _median_seconds(lambda h=hidden: torch.addmm(bias, h, weight.t()), repeats, number)
        onednn = _median_seconds(lambda h=hidden: packed(h), repeats, number)
        error = float((packed(hidden) - torch.addmm(bias, hidden, weight.t())).abs().max())
        results.append(
            {
                "rows": count,
                "mkl_ms": mkl * 1e3,
                "packed_ms": onednn * 1e3,
                "speedup": mkl / onednn,
                "max_abs_diff": error,
            }
        )
    return results


def memory_run(model_path: str, searches: int, max_rows: int, max_new_tokens: int, packed: bool) -> dict:
    """RSS (MB) after some of `searches` seeded searches of this process (see the module docstring)."""
    from hf_sentence_vae import SentenceVAEModel, kernels

    if not packed:
        kernels.PackedWeight.supports = staticmethod(lambda weight: False)
    torch.set_num_threads(1)
    model = SentenceVAEModel.from_pretrained(model_path).eval()
    draw = random.Random(0)
    marks = {1, 5, 20, searches // 2, searches}
    rss = {}
    for index in range(1, searches + 1):
        latent = torch.randn(draw.randint(2, max_rows), model.config.latent_size)
        model.generate(latent=latent, num_beams=5 if index % 2 else 1, max_new_tokens=max_new_tokens)
        if index in marks:
            rss[index] = round(rss_mb(), 1)
    return {"packed": packed, "rss_mb_after_searches": rss}


def _memory_in_fresh_process(args, packed: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--memory_child",
        "packed" if packed else "unpacked",
        "--searches",
        str(args.searches),
        "--max_rows",
        str(args.max_rows),
        "--max_new_tokens",
        str(args.max_new_tokens),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine'].get('cpu_model', '?')}, torch {result['machine'].get('torch', '?')}; one thread.",
        "",
        "| rows | MKL addmm (ms) | packed oneDNN (ms) | speed-up | max abs difference |",
        "|---|---|---|---|---|",
    ]
    for row in result["products"]:
        lines.append(
            f"| {row['rows']} | {row['mkl_ms']:.3f} | {row['packed_ms']:.3f} | {row['speedup']:.2f}x | "
            f"{row['max_abs_diff']:.1e} |"
        )
    if result.get("memory"):
        lines += ["", "| searches done | RSS with packed products (MB) | RSS without (MB) |", "|---|---|---|"]
        with_packed, without = (result["memory"][key]["rss_mb_after_searches"] for key in ("packed", "unpacked"))
        for mark in with_packed:
            lines.append(f"| {mark} | {with_packed[mark]} | {without[mark]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder (its output layer is timed)")
    parser.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=50, help="products per timed repeat")
    parser.add_argument("--searches", type=int, default=400, help="searches per memory run (0: no memory runs)")
    parser.add_argument("--max_rows", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=30)
    parser.add_argument("--memory_child", choices=["packed", "unpacked"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help="JSON results file")
    parser.add_argument("--markdown_output", help="markdown results file")
    args = parser.parse_args(argv)
    if args.memory_child:
        result = memory_run(
            args.model, args.searches, args.max_rows, args.max_new_tokens, args.memory_child == "packed"
        )
        print(json.dumps(result))
        return 0
    from hf_sentence_vae import SentenceVAEModel
    from hf_sentence_vae.kernels import PackedWeight

    torch.set_num_threads(1)
    model = SentenceVAEModel.from_pretrained(args.model).eval()
    weight, bias = model.lm_head.weight.detach(), model._output_bias().detach()
    if not PackedWeight.supports(weight):
        print("error: torch without its oneDNN (mkldnn) ops, or a model that is not float32 on CPU", file=sys.stderr)
        return 2
    rows = [int(value) for value in args.rows.split(",")]
    result = {
        "command": "python benchmarks/bench_packed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "products": time_products(weight, bias.masked_fill(bias.isinf(), 0.0), rows, args.repeats, args.number),
    }
    if args.searches:
        result["memory"] = {
            "packed": _memory_in_fresh_process(args, packed=True),
            "unpacked": _memory_in_fresh_process(args, packed=False),
        }
    text = markdown(result)
    print(json.dumps(result, indent=2))
    print(text)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown_output:
        Path(args.markdown_output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
