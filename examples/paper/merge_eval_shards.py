#!/usr/bin/env python
"""Combine `train_scripts/evaluate_model.py` reports on disjoint shards of one test set into whole-set figures.

A k=500 importance-weighted evaluation of the PTB test set takes about 50 min on one core; split into two
halves, run side by side (one torch thread each), it takes about 27:

    head -n 1881 ../shared/data/ptb/ptb.test.txt > /tmp/shards/a.txt
    tail -n +1882 ../shared/data/ptb/ptb.test.txt > /tmp/shards/b.txt
    python train_scripts/evaluate_model.py --model_name_or_path RUN/best --test_file /tmp/shards/a.txt \
        --iw_samples 500 --seed 0 --output_file RUN_a.json        # likewise b, at the same time
    python examples/paper/merge_eval_shards.py RUN_a.json RUN_b.json --name RUN_k500_full_test --output OUT.json

Per-sentence figures (nats per sentence) are averaged weighted by each shard's sentence count, and the
perplexities are recomputed from the summed nats over the summed tokens (end of sentence counted) and words.
Mutual information and active units are properties of the whole data set's aggregate posterior, so they are
not combined here (take them from a whole-set run, e.g. `ptb_report.py` at a smaller k). The output keeps
every shard's report under `shards`, named by its file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

PER_SENTENCE = ("nll_iw", "nll_bound", "kl", "reconstruction")


def merge(reports: list[dict]) -> dict:
    """Whole-set figures from per-shard `evaluate_model.py` reports (see the module docstring)."""
    if not reports:
        raise ValueError("need at least one shard report")
    samples = {r.get("iw_samples") for r in reports}
    if len(samples) != 1:
        raise ValueError(f"the shards were evaluated with different iw_samples: {sorted(map(str, samples))}")
    for key in ("num_sentences", "num_tokens", "num_words", *PER_SENTENCE):
        missing = [i for i, r in enumerate(reports) if r.get(key) is None]
        if missing:
            raise ValueError(f"shard report(s) {missing} have no {key!r}")
    sentences = sum(r["num_sentences"] for r in reports)
    merged = {key: sum(r[key] * r["num_sentences"] for r in reports) / sentences for key in PER_SENTENCE}
    tokens, words = sum(r["num_tokens"] for r in reports), sum(r["num_words"] for r in reports)
    for name in ("iw", "bound"):
        total = merged[f"nll_{name}"] * sentences
        merged[f"ppl_{name}"] = math.exp(total / tokens)
        merged[f"ppl_{name}_words"] = math.exp(total / words)
    merged.update(num_sentences=sentences, num_tokens=tokens, num_words=words, iw_samples=samples.pop())
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Merge the shard reports as the arguments say, write the result and print the whole-set figures; returns the
    exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", help="evaluate_model.py --output_file JSONs, one per disjoint shard")
    parser.add_argument("--name", required=True, help="key of the whole-set figures in the output")
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    reports = {Path(path).stem: json.loads(Path(path).read_text()) for path in args.shards}
    if len(reports) != len(args.shards):
        raise ValueError(f"shard files need distinct names, got {args.shards}")
    result = {args.name: merge(list(reports.values())), "shards": reports}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps({args.name: result[args.name]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
