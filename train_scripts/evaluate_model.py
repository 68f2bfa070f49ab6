#!/usr/bin/env python
"""Evaluate a saved sentence VAE (or RNNLM) on a text file: bound, IW-NLL, perplexities, KL, MI, active units.

    python train_scripts/evaluate_model.py --model_name_or_path runs/vae --test_file ptb.test.txt \
        [--iw_samples 500] [--batch_size 64] [--max_sentences N] [--seed 0] [--output_file results.json]

The file holds one sentence a line (blank lines are skipped and counted). Sentences are batched by length.
Every field of `hf_sentence_vae.metrics.RESULT_FIELDS` is printed to stdout as one JSON object; the logic
lives in `hf_sentence_vae.metrics.evaluate_model`.

The file is read in bounded memory, a pool of `--pool_sentences` sentences at a time (a file up to that size is
batched exactly as `data.length_sorted_batches` would); sentences longer than `--max_length` ids (default: the
model's `max_sentence_length` + 1, with `<bos>`) keep their first words and `<eos>`, and are counted.
Bad input (a missing, empty or non-UTF-8 file, a model folder that does not exist or does not match its config, an
impossible value) ends with one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.data import DEFAULT_MAX_LINE_CHARS
from hf_sentence_vae.metrics import DEFAULT_IW_SAMPLES
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script
from hf_sentence_vae.streaming import evaluate_file

logger = logging.getLogger("evaluate_model")
POOL_SENTENCES = 8192


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, model="save_pretrained folder (model + tokenizer)")
    parser.add_argument("--test_file", required=True, help="text file, one sentence a line")
    parser.add_argument("--iw_samples", type=int, default=DEFAULT_IW_SAMPLES, help="importance samples (0: none)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_sentences", type=int, default=None, help="evaluate the first N sentences only")
    parser.add_argument("--max_length", type=int, default=None, help="longest encoding in ids (default: the model's)")
    parser.add_argument("--pool_sentences", type=int, default=POOL_SENTENCES, help="sentences sorted by length at once")
    parser.add_argument("--max_tokens_per_chunk", type=int, default=8192, help="IW decoder chunk size in tokens")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    minimums = {"iw_samples": 0, "batch_size": 1, "max_sentences": 1, "max_tokens_per_chunk": 1, "pool_sentences": 1}
    for name, minimum in {**minimums, "max_length": 3}.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be >= {minimum}, got {value}")
    return args


def evaluate(argv: Sequence[str] | None = None) -> dict:
    """Evaluate as the arguments say; prints (and writes) the results and returns them."""
    args = parse_args(argv)
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    max_length = args.max_length or model.config.max_sentence_length + 1
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    results = evaluate_file(
        model,
        tokenizer,
        args.test_file,
        batch_size=args.batch_size,
        max_sentences=args.max_sentences,
        pool_batches=max(1, args.pool_sentences // args.batch_size),
        max_length=max_length,
        label="--test_file",
        iw_samples=args.iw_samples,
        generator=generator,
        progress=not args.no_progress,
        max_tokens_per_chunk=args.max_tokens_per_chunk,
    )
    blank = results.pop("blank_lines")
    logger.info("%s: %d sentences, %d blank lines skipped", args.test_file, results["num_sentences"], blank)
    for key, what in (
        ("truncated_lines", f"longer than {max_length} ids"),
        ("cut_lines", f"of over {DEFAULT_MAX_LINE_CHARS:,} characters"),
    ):
        if results[key]:
            logger.warning("%s: %d sentence(s) %s were cut", args.test_file, results[key], what)
    results.update(blank_lines_skipped=blank, max_length=max_length, seed=args.seed, test_file=str(args.test_file))
    emit_json(results, args.output_file)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
