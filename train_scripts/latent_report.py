#!/usr/bin/env python
"""The latent report of a trained sentence VAE on a test file: how much of each sentence its code carries.

    python train_scripts/latent_report.py --model_name_or_path runs/ptb/vae_latent/best \
        --test_file ../shared/data/ptb/ptb.test.txt [--trec_dir ../shared/data/trec] \
        [--output_file report.json] [--markdown_file report.md]

Reports KL (total and per dimension), the mutual information I(x; z) with the aggregate posterior over the whole
file, active units, reconstructions from the posterior mean (greedy and beam search: corpus BLEU against the
input, exact-match rate, fraction of distinct reconstructions), homotopies between random pairs of sentences
(fraction of distinct sentences on a path, word edit distance between neighbours) and, with --trec_dir, a linear
probe (TREC question-type accuracy of posterior means). Prints one JSON object; see
`hf_sentence_vae.latent_report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.data import read_sentences
from hf_sentence_vae.embeddings import TREC_FILES, read_trec
from hf_sentence_vae.latent_report import (
    DEFAULT_HOMOTOPY_PAIRS,
    DEFAULT_HOMOTOPY_STEPS,
    DEFAULT_NUM_BEAMS,
    latent_report,
    render_markdown,
)
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script, write_text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, model="save_pretrained folder of a VAE")
    parser.add_argument("--test_file", required=True, help="text file, one sentence a line")
    parser.add_argument("--trec_dir", default=None, help="folder with train_5500.label and TREC_10.label (probe)")
    parser.add_argument("--max_sentences", type=int, default=None, help="the first N sentences only")
    parser.add_argument("--num_beams", type=int, default=DEFAULT_NUM_BEAMS, help="beam width of the reconstructions")
    parser.add_argument("--homotopy_pairs", type=int, default=DEFAULT_HOMOTOPY_PAIRS, help="random sentence pairs")
    parser.add_argument("--homotopy_steps", type=int, default=DEFAULT_HOMOTOPY_STEPS, help="points per homotopy")
    parser.add_argument("--markdown_file", default=None, help="also write a markdown page here")
    parser.add_argument("--title", default=None, help="title of the markdown page (default: the model path)")
    return parser.parse_args(argv)


def report(argv: Sequence[str] | None = None) -> dict:
    """Measure as the arguments say; prints (and writes) the report and returns it."""
    args = parse_args(argv)
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    sentences, _ = read_sentences(args.test_file, max_sentences=args.max_sentences)
    trec = None
    if args.trec_dir:
        trec = tuple(read_trec(Path(args.trec_dir) / name) for name in TREC_FILES)
    results = latent_report(
        model,
        tokenizer,
        sentences,
        num_beams=args.num_beams,
        homotopy_pairs=args.homotopy_pairs,
        homotopy_steps=args.homotopy_steps,
        trec=trec,
        seed=args.seed,
    )
    results.update(model_name_or_path=str(args.model_name_or_path), test_file=str(args.test_file))
    emit_json(results, args.output_file)
    if args.markdown_file:
        title = args.title or f"Latent report: {args.model_name_or_path} on {Path(args.test_file).name}"
        write_text(args.markdown_file, render_markdown(results, title) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(report, argv)


if __name__ == "__main__":
    sys.exit(main())
