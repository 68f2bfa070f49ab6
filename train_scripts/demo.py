#!/usr/bin/env python
"""`make demo`: train a small sentence VAE end to end on a built-in corpus and show what it learned.

Default corpus: the example sentences of WordNet 3.0 (Debian's wordnet-base). Any other corpus: --corpus_file
(one sentence a line). Writes the run (checkpoints, metrics, the annealing plot) and `demo_outputs.md` with
prior samples, posterior reconstructions and a homotopy to --output_dir, and prints them.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from hf_sentence_vae import analysis
from hf_sentence_vae.data import DEFAULT_WORDNET_DIR, read_wordnet_examples, split_corpus
from hf_sentence_vae.training import TrainingConfig, train

RECONSTRUCT = [
    "the children played in the park",
    "he drove the car to the station",
    "she was very happy with the results",
    "they ate dinner at a small restaurant",
]
HOMOTOPY = ("he was lost in thought", "the children played in the park")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--corpus_file", help="one sentence a line; default: WordNet's example sentences")
    parser.add_argument("--wordnet_dir", default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--num_train_epochs", type=int, default=4)
    parser.add_argument(
        "--num_threads", type=int, default=None, help="torch threads (1 is safest on a busy machine: see README)"
    )
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument(
        "--allow_unk", action="store_true", help="let the decodes contain <unk> (suppressed by default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse(argv)
    out = Path(args.output_dir)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if args.corpus_file:
        lines = [line.strip() for line in open(args.corpus_file, encoding="utf-8") if line.strip()]
    else:
        lines = read_wordnet_examples(args.wordnet_dir)
    train_lines, valid_lines = split_corpus(lines, validation_fraction=0.05, seed=args.seed)
    (data / "train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (data / "valid.txt").write_text("\n".join(valid_lines) + "\n", encoding="utf-8")
    logging.info("corpus: %d training and %d validation sentences", len(train_lines), len(valid_lines))

    start = time.time()
    config = TrainingConfig(
        train_file=str(data / "train.txt"),
        validation_file=str(data / "valid.txt"),
        output_dir=str(out / "run"),
        text_mode="raw",
        min_frequency=2,
        max_length=40,
        embedding_size=128,
        encoder_hidden_size=192,
        decoder_hidden_size=192,
        latent_size=16,
        word_keep_rate=0.6,
        per_device_train_batch_size=64,
        learning_rate=2e-3,
        num_train_epochs=args.num_train_epochs,
        max_train_steps=args.max_train_steps,
        kl_schedule="sigmoid",
        kl_sigmoid_slope=0.003,
        kl_sigmoid_midpoint=1500,
        logging_steps=100,
        seed=args.seed,
        num_threads=args.num_threads,
    )
    results = train(config)
    minutes = (time.time() - start) / 60

    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(out / "run" / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "run" / "best")
    generator = torch.Generator().manual_seed(args.seed)
    decoding = {} if args.allow_unk else {"suppress_tokens": [tokenizer.unk_token_id]}
    samples = analysis.prior_samples(model, tokenizer, 8, generator=generator, max_new_tokens=30, **decoding)
    posterior = analysis.posterior_decodes(
        model, tokenizer, RECONSTRUCT, num_samples=2, generator=generator, **decoding
    )
    path = analysis.homotopy(model, tokenizer, *HOMOTOPY, steps=7, **decoding)

    report = [f"# Demo run ({minutes:.1f} min of training)", "", "## Validation", "", "```json"]
    report += [json.dumps({k: v for k, v in results.items() if k.startswith("validation")}, indent=2), "```", ""]
    note = "" if args.allow_unk else "; `<unk>` suppressed"
    report += [f"## Prior samples, greedy decoding (cf. the paper's Table 5{note})", ""]
    report += [f"- {s}" for s in samples] + ["", "## Posterior reconstructions (cf. Table 7)", ""]
    for row in posterior:
        report += [f"- input: {row['input']}", f"  - mean: {row['mean']}"]
        report += [f"  - sample: {s}" for s in row["samples"]]
    report += ["", f"## Homotopy: '{HOMOTOPY[0]}' -> '{HOMOTOPY[1]}' (cf. Table 8)", ""]
    report += [f"{i}. {s}" for i, s in enumerate(path, 1)]
    report += ["", "Training curves (KL weight and KL, cf. Figure 2): `run/training_curves.png`", ""]
    text = "\n".join(report)
    (out / "demo_outputs.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"\nWritten to {out / 'demo_outputs.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
