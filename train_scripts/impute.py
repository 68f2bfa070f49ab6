"""Impute the final words of held-out sentences with a sentence VAE (approximate iterated conditional modes)
or an RNNLM (beam search): the paper's Section 5 and Table 3.

    python train_scripts/impute.py --model_name_or_path runs/ptb/vae_r2l/best \
        --test_file ../shared/data/ptb/ptb.test.txt [--fraction 0.2] [--num_beams 5] [--num_steps 3] \
        [--max_sentences N] [--batch_size 64] [--forbid_unk] [--output_file imputations.jsonl] \
        [--summary_file summary.json]

Defaults follow the paper: beam 15 for an RNNLM; 3 ICM steps of a beam-5 search for a VAE. The paper's
models decode right to left (train with `--right_to_left true`). Writes one JSON record per sentence
(`original`, `imputed`, `prefix`, `true_suffix`, `imputed_suffix`, `num_missing`, `score`) to
--output_file and prints a JSON summary (with a few examples).

The file is read lazily and imputed a pool of sentences at a time, records written as they come: memory does not
grow with the file (`--max_sentences N` reads only as far as the N-th kept sentence). Bad input (a missing, empty
or non-UTF-8 file, a model folder that does not exist or does not match its config, an impossible value) ends with
one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.data import iter_kept_sentences
from hf_sentence_vae.imputation import DEFAULT_ICM_STEPS, DEFAULT_RNNLM_BEAMS, DEFAULT_VAE_BEAMS, impute_texts
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script

logger = logging.getLogger("impute")
POOL_BATCHES = 50  # sentences imputed (and sorted by length) at a time: POOL_BATCHES * --batch_size


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, model="save_pretrained folder (model + tokenizer)", seed=False, output_file=False)
    parser.add_argument("--test_file", required=True, help="text file, one sentence a line")
    parser.add_argument("--max_sentences", type=int, default=None, help="the first N sentences only")
    parser.add_argument("--min_words", type=int, default=1, help="skip sentences with fewer words")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of final words to impute")
    parser.add_argument("--num_beams", type=int, default=None, help="default: 15 (RNNLM), 5 (VAE)")
    parser.add_argument("--num_steps", type=int, default=None, help="ICM steps for a VAE (default 3)")
    parser.add_argument("--forbid_unk", action="store_true", help="never impute <unk>")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_examples", type=int, default=10, help="examples in the printed summary")
    parser.add_argument("--output_file", default=None, help="JSONL of the imputations")
    parser.add_argument("--summary_file", default=None, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:  # also NaN
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    for name in ("max_sentences", "num_beams", "num_steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.num_examples < 0:
        raise ValueError(f"--num_examples must be >= 0, got {args.num_examples}")
    return args


def _fingerprint(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class Tally:
    """Running sums of the imputation records, for the summary: memory does not grow with the number of records but
    for 8 bytes per distinct suffix (a 64-bit fingerprint) and the first `num_examples` records."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples
        self.examples: list[dict] = []
        self.n = 0
        self.missing = self.score = self.exact = 0.0
        self.imputed = np.empty(0, dtype=np.uint64)
        self.true = np.empty(0, dtype=np.uint64)

    def add(self, records: list[dict]) -> None:
        self.examples.extend(records[: max(self.num_examples - len(self.examples), 0)])
        self.n += len(records)
        self.missing += sum(r["num_missing"] for r in records)
        self.score += sum(r["score"] for r in records)
        self.exact += sum(r["true_suffix"] == r["imputed_suffix"] for r in records)
        for name, key in (("imputed", "imputed_suffix"), ("true", "true_suffix")):
            seen = np.fromiter((_fingerprint(r[key]) for r in records), dtype=np.uint64, count=len(records))
            setattr(self, name, np.union1d(getattr(self, name), seen))

    def summary(self, model, settings: dict, seconds: float) -> dict:
        n, cfg = max(self.n, 1), model.config
        return {
            **settings,
            "model_type": "rnnlm" if cfg.is_rnnlm else "vae",
            "right_to_left": bool(cfg.right_to_left),
            "num_sentences": self.n,
            "mean_missing_words": self.missing / n,
            "mean_score": self.score / n,
            "suffix_exact_match": self.exact / n,
            "distinct_imputed_suffixes": len(self.imputed) / n,
            "distinct_true_suffixes": len(self.true) / n,
            "seconds": round(seconds, 2),
            "examples": self.examples,
        }


def impute(argv: Sequence[str] | None = None) -> dict:
    """Impute as the arguments say; writes the records, prints (and writes) the summary and returns it."""
    args = parse_args(argv)
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    if not model.config.right_to_left:
        logger.warning("this model decodes left to right; the paper imputes with right-to-left models")
    sentences = iter_kept_sentences(args.test_file, tokenizer, args.min_words, label="--test_file")
    sentences = islice(sentences, args.max_sentences)
    logger.info("imputing the final %.0f%% of the sentences of %s", 100 * args.fraction, args.test_file)
    output = None
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    tally = Tally(args.num_examples)
    start = time.time()
    try:
        while pool := list(islice(sentences, POOL_BATCHES * args.batch_size)):
            with torch.no_grad():
                records = impute_texts(
                    model,
                    tokenizer,
                    pool,
                    fraction=args.fraction,
                    batch_size=args.batch_size,
                    num_beams=args.num_beams,
                    num_steps=args.num_steps,
                    allow_unk=not args.forbid_unk,
                )
            if args.output_file:
                output = output or open(args.output_file, "w", encoding="utf-8")  # noqa: SIM115
                output.writelines(json.dumps(record) + "\n" for record in records)
                output.flush()
            tally.add(records)
            logger.info("%d sentences imputed", tally.n)
    finally:
        if output is not None:
            output.close()
    if tally.n == 0:
        raise ValueError(f"no sentences with >= {args.min_words} words in {args.test_file}")
    if args.output_file:
        logger.info("wrote %s", args.output_file)
    is_rnnlm = model.config.is_rnnlm
    settings = {
        "model_name_or_path": str(args.model_name_or_path),
        "test_file": str(args.test_file),
        "fraction": args.fraction,
        "num_beams": args.num_beams or (DEFAULT_RNNLM_BEAMS if is_rnnlm else DEFAULT_VAE_BEAMS),
        "num_steps": None if is_rnnlm else (args.num_steps or DEFAULT_ICM_STEPS),
        "forbid_unk": args.forbid_unk,
    }
    summary = tally.summary(model, settings, time.time() - start)
    emit_json(summary, args.summary_file)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Impute as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(impute, argv)


if __name__ == "__main__":
    sys.exit(main())
