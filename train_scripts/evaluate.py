"""Evaluate a saved sentence VAE (or RNNLM) on a text file: bound, IW-NLL, perplexities, KL, MI, active units.

    python train_scripts/evaluate.py --model_name_or_path runs/vae --test_file ptb.test.txt \
        [--iw_samples 500] [--batch_size 64] [--max_sentences N] [--seed 0] [--output_file results.json]

The file holds one sentence a line (blank lines are skipped and counted). Sentences are batched by length.
Every field of `hf_sentence_vae.metrics.RESULT_FIELDS` is printed to stdout as one JSON object; the logic
lives in `hf_sentence_vae.metrics.evaluate_model`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Run as `python train_scripts/evaluate.py`, this file's folder heads sys.path, where this file would shadow
# the `evaluate` package for any later `import evaluate`: drop it.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import hf_sentence_vae  # noqa: E402, F401  (registers the model and tokenizer with the Auto classes)
from hf_sentence_vae import check_tokenizer_matches_model  # noqa: E402
from hf_sentence_vae.hub import is_hub_id  # noqa: E402
from hf_sentence_vae.metrics import (  # noqa: E402
    DEFAULT_IW_SAMPLES,
    evaluate_model,
    length_sorted_batches,
    read_sentences,
)

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="save_pretrained folder (model + tokenizer)")
    parser.add_argument("--tokenizer_name_or_path", default=None, help="default: --model_name_or_path")
    parser.add_argument("--test_file", required=True, help="text file, one sentence a line")
    parser.add_argument("--iw_samples", type=int, default=DEFAULT_IW_SAMPLES, help="importance samples (0: none)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_sentences", type=int, default=None, help="evaluate the first N sentences only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_tokens_per_chunk", type=int, default=8192, help="IW decoder chunk size in tokens")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output_file", default=None, help="also write the JSON here")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("model_name_or_path", "tokenizer_name_or_path"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists() and not is_hub_id(value):
            parser.error(f"--{name} {value} not found: no such folder (nor a Hub repository id, namespace/name)")
    for name in ("iw_samples", "batch_size", "max_sentences", "max_tokens_per_chunk"):
        value = getattr(args, name)
        minimum = 0 if name == "iw_samples" else 1
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path or args.model_name_or_path)
    model = AutoModel.from_pretrained(args.model_name_or_path).to(device)
    check_tokenizer_matches_model(tokenizer, model.config)

    sentences, blank = read_sentences(args.test_file, max_sentences=args.max_sentences)
    logger.info("%s: %d sentences, %d blank lines skipped", args.test_file, len(sentences), blank)
    if not sentences:
        raise SystemExit(f"error: {args.test_file} holds no non-blank lines")
    batches = length_sorted_batches(tokenizer, sentences, args.batch_size)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    results = evaluate_model(
        model,
        batches,
        iw_samples=args.iw_samples,
        generator=generator,
        progress=not args.no_progress,
        max_tokens_per_chunk=args.max_tokens_per_chunk,
    )
    results.update(blank_lines_skipped=blank, seed=args.seed, test_file=str(args.test_file))
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(text + "\n", encoding="utf-8")
        logger.info("wrote %s", args.output_file)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
