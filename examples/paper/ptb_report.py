#!/usr/bin/env python
"""The PTB language-modelling table beside the paper's Table 2, from trained run folders.

    python examples/paper/ptb_report.py --runs_dir runs/ptb --data_dir ../shared/data/ptb --iw_samples 50 \
        --output runs/ptb/report.json --markdown runs/ptb/report.md

For each run (`vae_standard`, `rnnlm_standard`, `vae_inputless`, `rnnlm_inputless`) found under --runs_dir it
loads the selected model (`best/`, chosen on validation), evaluates the training split (the bound; exact for
the RNNLM) and the test split (bound, importance-weighted NLL with --iw_samples, MI, active units), and writes
a JSON file and a markdown table. Negative log-likelihoods are per sentence (summed over words and the end of
sentence, as in the paper); perplexities are given per word (the paper's convention) and per token (words +
end of sentence).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

# The paper's Table 2: (train NLL, train KL, train PPL, test NLL, test KL, test PPL); None where not given.
PAPER = {
    "rnnlm_standard": (100, None, 95, 100, None, 116),
    "vae_standard": (98, 2, 100, 101, 2, 119),
    "rnnlm_inputless": (135, None, 600, 135, None, "> 600"),
    "vae_inputless": (120, 15, 300, 125, 15, 380),
}
TITLES = {
    "rnnlm_standard": "RNNLM",
    "vae_standard": "VAE",
    "rnnlm_inputless": "RNNLM, inputless decoder",
    "vae_inputless": "VAE, inputless decoder",
    "vae_beyond": "VAE, beyond the paper (free bits), 10 epochs",
    "vae_beyond_long": "VAE, beyond the paper (free bits), 22 epochs",
    "vae_beyond_inj": "VAE, beyond the paper, z at every input, dropout 0.3, 22 epochs",
    "vae_beyond_d5": "VAE, beyond the paper, z at every input, dropout 0.5, 30 epochs",
    "vae_beyond_d4fb3": "VAE, beyond the paper, z at every input, dropout 0.4, free bits 0.3, 26 epochs",
    "vae_beyond_tied": "VAE, beyond the paper, tied output layer, z at every input, dropout 0.3, 22 epochs",
    "vae_beyond_tied_d4fb3": "VAE, beyond the paper, tied output layer, dropout 0.4, free bits 0.3, 22 epochs",
    "vae_beyond_tied_k100_d3": "VAE, beyond the paper, tied output layer, no word dropout, dropout 0.3, 22 epochs",
    "vae_beyond_tied_k100_d4": "VAE, beyond the paper, tied output layer, no word dropout, dropout 0.4, 22 epochs",
    "vae_beyond_tied_k100_d5": "VAE, beyond the paper, tied output layer, no word dropout, dropout 0.5, 22 epochs",
    "vae_beyond_tied_k100_ld4_ed1": (
        "VAE, beyond the paper, tied output layer, no word dropout, locked dropout 0.4, embedding dropout 0.1, "
        "22 epochs"
    ),
    "vae_beyond_ld4_ed1_e45_t2": (
        "VAE, beyond the paper, tied output layer, no word dropout, locked dropout 0.4, embedding dropout 0.1, "
        "45 epochs on two threads"
    ),
    "vae_beyond_e45_ema9995": (
        "VAE, beyond the paper, run 16 with weight averaging (EMA decay 0.9995), 45 epochs on two threads"
    ),
    "vae_beyond_ld5_e50_ema9995": "VAE, beyond the paper, run 18 with locked dropout 0.5, 50 epochs on two threads",
    "vae_beyond_wd2_e45": "VAE, beyond the paper, run 16 with recurrent-weight dropout 0.2 (decoder), 45 epochs",
    "rnnlm_beyond_tied": "RNNLM control for run 6: tied output layer, word keep rate 0.75, dropout 0.3, 22 epochs",
    "rnnlm_beyond_tied_k100_d4": "RNNLM control for run 12: tied output layer, no word dropout, dropout 0.4, 22 epochs",
    "rnnlm_beyond_ld4_ed1_e45": "RNNLM control for run 16: its recipe (locked and embedding dropout, 45 epochs), no z",
    "vae_beyond_zout_e45": "VAE, beyond the paper, run 16 with z also at every decoder output (skip to the output layer)",
    "vae_r2l": "VAE, right to left (Section 5)",
    "rnnlm_r2l": "RNNLM, right to left (Section 5)",
}


def training_summary(run: Path) -> dict:
    """Steps, best step, KL weight at the end and wall time of a run, from its metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "kl_weight" in r]
    evals = [r for r in records if "validation_loss" in r]
    best = min(evals, key=lambda r: r["validation_loss"]) if evals else None
    start = (run / "tokenizer").stat().st_mtime if (run / "tokenizer").exists() else None
    end = (run / "metrics.jsonl").stat().st_mtime
    return {
        "steps": train[-1]["step"] if train else 0,
        "epochs": round(train[-1]["epoch"], 2) if train else 0,
        "final_kl_weight": train[-1]["kl_weight"] if train else None,
        "best_step": best["step"] if best else None,
        "best_validation_bound": best["validation_loss"] if best else None,
        "finished": (run / "results.json").is_file(),
        "wall_minutes": round((end - start) / 60, 1) if start else None,
    }


def train_from_results(run: Path, train_file: Path, latent_size: int) -> dict:
    """The training-split bound the run computed at its end (results.json), in the report's fields."""
    results = json.loads((run / "results.json").read_text())
    lines = [line.split() for line in train_file.read_text().splitlines() if line.strip()]
    sentences, words = len(lines), sum(len(line) for line in lines)
    total = results["train_loss"] * sentences
    row = {"latent_size": latent_size, "nll_bound": results["train_loss"], "kl": results["train_kl"]}
    row["nll_exact"] = results["train_loss"] if not latent_size else None  # an RNNLM's bound is its exact NLL
    row["ppl_bound_words"] = row["ppl_exact_words"] = math.exp(total / words)
    row["source"] = "results.json (single-sample bound computed by the training run)"
    return row


def evaluate_split(
    model, tokenizer, path: Path, iw_samples: int, batch_size: int, seed: int, subset: int | None = None
) -> dict:
    """Bound, IW-NLL, MI and active units on a split, or on a seeded random `subset` of its sentences."""
    from hf_sentence_vae.metrics import evaluate_model, length_sorted_batches, read_sentences

    sentences, _ = read_sentences(path)
    if subset is not None and subset < len(sentences):
        picked = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))[:subset]
        sentences = [sentences[i] for i in sorted(picked.tolist())]
    batches = length_sorted_batches(tokenizer, sentences, batch_size)
    generator = torch.Generator().manual_seed(seed)
    return evaluate_model(model, batches, iw_samples=iw_samples, generator=generator, progress=False)


def fmt(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def markdown(rows: dict) -> str:
    lines = [
        "| model | | train NLL (KL) | train PPL | test NLL (KL) | test PPL | test IW-NLL | test PPL (IW) "
        "| MI | active units | steps (epochs) | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        p = PAPER.get(name)
        if p is not None:
            paper_train = f"{p[0]}" + (f" ({p[1]})" if p[1] is not None else "")
            paper_test = f"{p[3]}" + (f" ({p[4]})" if p[4] is not None else "")
            lines.append(
                f"| {TITLES[name]} | paper | {paper_train} | {p[2]} | {paper_test} | {p[5]} | – | – | – | – | – | – |"
            )
        train, test, summary = row.get("train"), row["test"], row["training"]
        is_vae = test["latent_size"] > 0

        def nll_kl(result, is_vae=is_vae):
            if result is None:
                return "–"
            if is_vae:
                return f"{result['nll_bound']:.1f} ({result['kl']:.1f})"
            return f"{result['nll_exact']:.1f}"

        def ppl(result, is_vae=is_vae):
            if result is None:
                return "–"
            return fmt(result["ppl_bound_words"] if is_vae else result["ppl_exact_words"])

        lines.append(
            f"| {'' if p is not None else TITLES.get(name, name)} | ours | {nll_kl(train)} | {ppl(train)} | {nll_kl(test)} | {ppl(test)} "
            f"| {fmt(test.get('nll_iw'))} | {fmt(test.get('ppl_iw_words'))} "
            f"| {fmt(test.get('mutual_information'), 2) if is_vae else '–'} "
            f"| {test.get('active_units') if is_vae else '–'} / {test['latent_size']} "
            f"| {summary['steps']} ({summary['epochs']}) | {fmt(summary['wall_minutes'])} |"
        )
    subsets = [(name, row["test_subset"]) for name, row in rows.items() if row.get("test_subset")]
    if subsets:
        lines += [
            "",
            "| model | test sentences (seeded random subset) | IW samples k | IW-NLL | bound on the same subset (KL) |",
            "|---|---|---|---|---|",
        ]
        for name, sub in subsets:
            lines.append(
                f"| {TITLES.get(name, name)} | {sub['num_sentences']} | {sub['iw_samples']} | {fmt(sub.get('nll_iw'))} "
                f"| {fmt(sub.get('nll_bound'))} ({fmt(sub.get('kl'))}) |"
            )
    return "\n".join(lines)


def ptb_default() -> str | None:
    """`$SENTENCE_VAE_DATA/ptb`, or None."""
    return os.path.join(os.environ["SENTENCE_VAE_DATA"], "ptb") if "SENTENCE_VAE_DATA" in os.environ else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", default="runs/ptb")
    parser.add_argument(
        "--data_dir",
        required="SENTENCE_VAE_DATA" not in os.environ,
        default=ptb_default(),
        help="folder holding ptb.{train,test}.txt (default: $SENTENCE_VAE_DATA/ptb)",
    )
    parser.add_argument("--iw_samples", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--skip_train", action="store_true", help="do not evaluate the training split")
    parser.add_argument("--models", nargs="*", default=list(PAPER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset_iw_samples", type=int, default=None, help="also: IW-NLL with this k on a subset")
    parser.add_argument("--subset_size", type=int, default=1000, help="test sentences in that seeded subset")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    import hf_sentence_vae  # noqa: F401  (registers the Auto classes)

    rows = {}
    for name in args.models:
        run = Path(args.runs_dir) / name
        if not (run / "best" / "model.safetensors").is_file():
            print(f"skipping {name}: no {run / 'best'}", file=sys.stderr)
            continue
        model = AutoModel.from_pretrained(run / "best").eval()
        tokenizer = AutoTokenizer.from_pretrained(run / "best")
        start = time.time()
        row = {"training": training_summary(run)}
        row["test"] = evaluate_split(
            model, tokenizer, Path(args.data_dir) / "ptb.test.txt", args.iw_samples, args.batch_size, args.seed
        )
        if args.subset_iw_samples and not model.config.is_rnnlm:
            row["test_subset"] = evaluate_split(
                model,
                tokenizer,
                Path(args.data_dir) / "ptb.test.txt",
                args.subset_iw_samples,
                args.batch_size,
                args.seed,
                subset=args.subset_size,
            )
        if (run / "results.json").is_file() and "train_loss" in json.loads((run / "results.json").read_text()):
            row["train"] = train_from_results(run, Path(args.data_dir) / "ptb.train.txt", model.config.latent_size)
        elif not args.skip_train:
            row["train"] = evaluate_split(
                model, tokenizer, Path(args.data_dir) / "ptb.train.txt", 0, args.batch_size, args.seed
            )
        for split in ("test", "train", "test_subset"):
            if split in row:
                row[split].pop("active_unit_variances", None)
        row["evaluation_seconds"] = round(time.time() - start, 1)
        rows[name] = row
        print(f"{name}: {json.dumps(row['test'])}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
