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
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.imputation import impute_texts, load_sentences

logger = logging.getLogger("impute")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="save_pretrained folder (model + tokenizer)")
    parser.add_argument("--tokenizer_name_or_path", default=None, help="default: --model_name_or_path")
    parser.add_argument("--test_file", required=True, help="text file, one sentence a line")
    parser.add_argument("--max_sentences", type=int, default=None, help="the first N sentences only")
    parser.add_argument("--min_words", type=int, default=1, help="skip sentences with fewer words")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of final words to impute")
    parser.add_argument("--num_beams", type=int, default=None, help="default: 15 (RNNLM), 5 (VAE)")
    parser.add_argument("--num_steps", type=int, default=None, help="ICM steps for a VAE (default 3)")
    parser.add_argument("--forbid_unk", action="store_true", help="never impute <unk>")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num_examples", type=int, default=10, help="examples in the printed summary")
    parser.add_argument("--output_file", default=None, help="JSONL of the imputations")
    parser.add_argument("--summary_file", default=None, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    for name in ("max_sentences", "num_beams", "num_steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return args


def summarize(records: list[dict], model, args_dict: dict, seconds: float, num_examples: int) -> dict:
    n = len(records)
    cfg = model.config
    return {
        **args_dict,
        "model_type": "rnnlm" if cfg.latent_size == 0 else "vae",
        "right_to_left": bool(cfg.right_to_left),
        "num_sentences": n,
        "mean_missing_words": sum(r["num_missing"] for r in records) / max(n, 1),
        "mean_score": sum(r["score"] for r in records) / max(n, 1),
        "suffix_exact_match": sum(r["true_suffix"] == r["imputed_suffix"] for r in records) / max(n, 1),
        "distinct_imputed_suffixes": len({r["imputed_suffix"] for r in records}) / max(n, 1),
        "distinct_true_suffixes": len({r["true_suffix"] for r in records}) / max(n, 1),
        "seconds": round(seconds, 2),
        "examples": records[:num_examples],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    if not model.config.right_to_left:
        logger.warning("this model decodes left to right; the paper imputes with right-to-left models")
    sentences = load_sentences(args.test_file, tokenizer, args.max_sentences, args.min_words)
    if not sentences:
        raise SystemExit(f"error: no sentences with >= {args.min_words} words in {args.test_file}")
    logger.info("imputing the final %.0f%% of %d sentences", 100 * args.fraction, len(sentences))
    start = time.time()
    with torch.no_grad():
        records = impute_texts(
            model,
            tokenizer,
            sentences,
            fraction=args.fraction,
            batch_size=args.batch_size,
            num_beams=args.num_beams,
            num_steps=args.num_steps,
            allow_unk=not args.forbid_unk,
        )
    settings = {
        "model_name_or_path": str(args.model_name_or_path),
        "test_file": str(args.test_file),
        "fraction": args.fraction,
        "num_beams": args.num_beams or (15 if model.config.latent_size == 0 else 5),
        "num_steps": None if model.config.latent_size == 0 else (args.num_steps or 3),
        "forbid_unk": args.forbid_unk,
    }
    summary = summarize(records, model, settings, time.time() - start, args.num_examples)
    if args.output_file:
        path = Path(args.output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        logger.info("wrote %s", path)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary_file:
        Path(args.summary_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_file).write_text(text + "\n", encoding="utf-8")
    summary["records"] = records
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
