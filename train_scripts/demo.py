#!/usr/bin/env python
"""`make demo`: train a small sentence VAE end to end on a built-in corpus and show what it learned.

Default corpus: the example sentences of WordNet 3.0 (Debian's wordnet-base). Any other corpus: --corpus_file
(one sentence a line). --output_dir (default `runs/demo`) becomes the run folder: the trained model in `best/`
(a `save_pretrained` folder with its model card and `latent_report.json`), metrics and the training curves, the
corpus split in `data/`, and `demo_outputs.md` with the latent report on the held-out sentences, prior samples,
posterior reconstructions and a homotopy. It prints them, then where the model is and commands to try on it.

The recipe is the one of `train_scripts/configs/ptb_vae_latent.yaml` at the demo's size: the encoder first trains
alone as an autoencoder (`encoder_warmup_steps`), then the decoder is drawn afresh and the KL weight is steered so
that the code holds `kl_target` nats (free bits as a floor under every dimension), so the code carries the sentence
instead of collapsing to the prior.
"""

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hf_sentence_vae import analysis
from hf_sentence_vae.data import DEFAULT_WORDNET_DIR, load_sentences, read_wordnet_examples, split_corpus
from hf_sentence_vae.latent_report import REPORT_FILE, report_rows
from hf_sentence_vae.script_runner import run_script
from hf_sentence_vae.training import TrainingConfig, train

RECONSTRUCT = [
    "the children played in the park",
    "he drove the car to the station",
    "she was very happy with the results",
    "they ate dinner at a small restaurant",
]
HOMOTOPY = ("he was lost in thought", "the children played in the park")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--corpus_file", help="one sentence a line; default: WordNet's example sentences")
    parser.add_argument("--wordnet_dir", default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--num_train_epochs", type=int, default=5)
    parser.add_argument("--kl_target", type=float, default=20.0, help="nats the code is steered to hold")
    parser.add_argument(
        "--num_threads", type=int, default=None, help="torch threads (1 is safest on a busy machine: see README)"
    )
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument(
        "--allow_unk",
        action="store_true",
        help="let the decodes contain <unk> (the trained model's generation_config suppresses it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def demo(argv: Sequence[str] | None = None) -> None:
    """Train and show the demo model as the arguments say."""
    args = parse(argv)
    out = Path(args.output_dir)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if args.corpus_file:
        lines = load_sentences(args.corpus_file, label="--corpus_file")
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
        output_dir=str(out),
        text_mode="raw",
        min_frequency=2,
        max_length=40,
        embedding_size=128,
        encoder_hidden_size=192,
        decoder_hidden_size=192,
        latent_size=16,
        latent_injection="initial_state_and_inputs",
        word_keep_rate=1.0,
        dropout=0.3,
        per_device_train_batch_size=64,
        learning_rate=2e-3,
        num_train_epochs=args.num_train_epochs,
        max_train_steps=args.max_train_steps,
        encoder_warmup_steps=700,
        kl_target=args.kl_target,
        free_bits=0.5,
        logging_steps=100,
        seed=args.seed,
        num_threads=args.num_threads,
    )
    results = train(config)
    minutes = (time.time() - start) / 60

    from transformers import AutoModel, AutoTokenizer

    best = out / "best"
    model = AutoModel.from_pretrained(best).eval()
    tokenizer = AutoTokenizer.from_pretrained(best)
    generator = torch.Generator().manual_seed(args.seed)
    decoding = {"suppress_tokens": None} if args.allow_unk else {}  # else: the model's generation_config
    samples = analysis.prior_samples(model, tokenizer, 8, generator=generator, max_new_tokens=30, **decoding)
    posterior = analysis.posterior_decodes(
        model, tokenizer, RECONSTRUCT, num_samples=2, generator=generator, **decoding
    )
    path = analysis.homotopy(model, tokenizer, *HOMOTOPY, steps=7, **decoding)

    report = [f"# Demo run ({minutes:.1f} min of training)", "", "## Validation", "", "```json"]
    report += [json.dumps({k: v for k, v in results.items() if k.startswith("validation")}, indent=2), "```", ""]
    report += latent_section(best)
    how = analysis.describe_decoding(model, tokenizer, **decoding)
    report += [f"## Prior samples (cf. the paper's Table 5; {how})", ""]
    report += [f"- {s}" for s in samples] + ["", "## Posterior reconstructions (cf. Table 7)", ""]
    for row in posterior:
        report += [f"- input: {row['input']}", f"  - mean: {row['mean']}"]
        report += [f"  - sample: {s}" for s in row["samples"]]
    report += ["", f"## Homotopy: '{HOMOTOPY[0]}' -> '{HOMOTOPY[1]}' (cf. Table 8)", ""]
    report += [f"{i}. {s}" for i, s in enumerate(path, 1)]
    report += ["", f"Training curves (KL weight and KL, cf. Figure 2): `{out / 'training_curves.png'}`", ""]
    text = "\n".join(report)
    (out / "demo_outputs.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"\nWritten to {out / 'demo_outputs.md'}\n\n" + next_steps(best) + "\n")


def latent_section(best: Path) -> list[str]:
    """Markdown lines with the figures of the trained model's latent report (on the held-out sentences)."""
    path = best / REPORT_FILE
    if not path.is_file():  # e.g. a run too short to leave the encoder warm start
        return []
    latent = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"## How much of a sentence the code carries ({latent.get('split', 'held-out')} split)", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in report_rows(latent)]
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(demo, argv)


def next_steps(best: Path) -> str:
    """Where the demo's model is and what to run on it next."""
    quoted = str(best)
    return "\n".join(
        [
            f"The trained model is in {quoted} (model, tokenizer, generation_config.json, model card README.md).",
            "Try next:",
            f"  python train_scripts/generate.py prior --model_name_or_path {quoted} --num_samples 10",
            f"  python train_scripts/generate.py homotopy --model_name_or_path {quoted} \\",
            '      --start "he was lost in thought" --end "the children played in the park" --steps 7',
            f"  python train_scripts/evaluate_model.py --model_name_or_path {quoted} --test_file {best.parent / 'data' / 'valid.txt'}",
            '  python -c "from transformers import pipeline; import hf_sentence_vae; '
            f"print(pipeline('sentence-vae', model='{quoted}')('the children played in the park'))\"",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
