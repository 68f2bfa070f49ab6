"""Adversarial evaluation of imputations (the paper's Section 5, Table 4), on the Penn Treebank.

    python train_scripts/adversarial_eval.py \
        --vae_model runs/ptb/vae_r2l/best --rnnlm_model runs/ptb/rnnlm_r2l/best \
        --scorer_model runs/ptb/rnnlm_standard/best \
        --test_file ../shared/data/ptb/ptb.test.txt [--test_file ../shared/data/ptb/ptb.valid.txt] \
        [--max_sentences N] [--output_file results/adversarial.json] [--markdown_file results/adversarial.md]

For each model, the final 20% of every held-out sentence is imputed (VAE: 3 ICM steps of a beam-5 search;
RNNLM: beam 15; the paper's models decode right to left). Each true sentence (positive) and its imputed
version (negative) form a balanced data set split 80/10/10 by sentence; a bag-of-unigrams logistic
regression and an LSTM classifier are trained on it (model selection on dev) and the adversarial error
(test accuracy - 50, in percentage points; lower is better) is reported, with the mean negative
log-likelihood (nats per sentence) the separately trained --scorer_model RNNLM gives the completed
sentences. Imputations can be read from `impute.py` outputs instead (--vae_imputations,
--rnnlm_imputations). The paper used 320k Books Corpus sentences; PTB's held-out sets are far smaller.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hf_sentence_vae.adversarial import adversarial_evaluation, sentence_nll
from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.data import load_sentences
from hf_sentence_vae.imputation import impute_texts
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script, write_text

logger = logging.getLogger("adversarial_eval")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, model=None)
    parser.add_argument("--vae_model", default=None, help="save_pretrained folder of the VAE (right to left)")
    parser.add_argument("--rnnlm_model", default=None, help="save_pretrained folder of the RNNLM (right to left)")
    parser.add_argument("--scorer_model", default=None, help="separately trained RNNLM scoring the completions")
    parser.add_argument("--vae_imputations", default=None, help="JSONL from impute.py instead of --vae_model")
    parser.add_argument("--rnnlm_imputations", default=None, help="JSONL from impute.py instead of --rnnlm_model")
    parser.add_argument("--test_file", action="append", default=None, help="held-out sentences (repeatable)")
    parser.add_argument("--max_sentences", type=int, default=None)
    parser.add_argument("--min_words", type=int, default=1, help="skip sentences with fewer words")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--vae_beams", type=int, default=5)
    parser.add_argument("--vae_steps", type=int, default=3)
    parser.add_argument("--rnnlm_beams", type=int, default=15)
    parser.add_argument("--forbid_unk", action="store_true", help="never impute <unk>")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lstm_embedding_size", type=int, default=64)
    parser.add_argument("--lstm_hidden_size", type=int, default=128)
    parser.add_argument("--lstm_dropout", type=float, default=0.2)
    parser.add_argument("--lstm_learning_rate", type=float, default=1e-3)
    parser.add_argument("--lstm_max_epochs", type=int, default=30)
    parser.add_argument("--lstm_patience", type=int, default=3)
    parser.add_argument("--num_examples", type=int, default=10)
    parser.add_argument("--imputations_dir", default=None, help="also save each model's imputations (JSONL)")
    parser.add_argument("--markdown_file", default=None, help="write a Table-4-style markdown report here")
    args = parser.parse_args(argv)
    if not (args.vae_model or args.vae_imputations or args.rnnlm_model or args.rnnlm_imputations):
        parser.error("give at least one of --vae_model, --vae_imputations, --rnnlm_model, --rnnlm_imputations")
    if (args.vae_model or args.rnnlm_model) and not args.test_file:
        parser.error("--test_file is required to impute with --vae_model / --rnnlm_model")
    return args


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def markdown_report(results: dict) -> str:
    lines = [
        "# Adversarial evaluation of imputations (cf. the paper's Table 4)",
        "",
        f"Data: {', '.join(results['test_files']) or 'imputation files'} — the Penn Treebank, not the paper's "
        "Books Corpus (unavailable). "
        f"{results['num_sentences']} held-out sentences; the final {100 * results['fraction']:.0f}% of the words "
        "imputed; discriminators trained on a balanced 80/10/10 split by sentence "
        f"({results['num_sentences'] * 2} examples in all).",
        "",
        "Adversarial error = test accuracy - 50 (percentage points; lower is better). "
        "NLL = mean -log p(x) (nats per sentence) of the completed sentences under a separately trained RNNLM "
        f"({results.get('scorer_model') or 'no scorer'}).",
        "",
        "| Model | Adv. Err. unigram (%) | Adv. Err. LSTM (%) | RNNLM NLL |",
        "|---|---|---|---|",
    ]
    for row in results["models"].values():
        nll = row.get("scorer_nll")
        lines.append(
            f"| {row['label']} | {row['unigram']['adversarial_error']:.2f} | {row['lstm']['adversarial_error']:.2f} "
            f"| {'' if nll is None else f'{nll:.2f}'} |"
        )
    if results.get("true_sentences_scorer_nll") is not None:
        lines.append(f"| (true sentences) | | | {results['true_sentences_scorer_nll']:.2f} |")
    lines += ["", "## Examples (cf. Table 3)", ""]
    names = list(results["models"])
    examples = {name: results["models"][name]["examples"] for name in names}
    for i in range(min(len(v) for v in examples.values()) if examples else 0):
        first = examples[names[0]][i]
        lines.append(f"- {first['prefix']} ...")
        lines.append(f"  - True: {first['true_suffix']}")
        for name in names:
            lines.append(f"  - {results['models'][name]['label']}: {examples[name][i]['imputed_suffix']}")
    return "\n".join(lines) + "\n"


def evaluate(argv: Sequence[str] | None = None) -> dict:
    """Impute and evaluate as the arguments say; prints (and writes) the results and returns them."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    records: dict[str, list[dict]] = {}
    labels: dict[str, str] = {}
    settings: dict[str, dict] = {}
    for name, model_path, path in (
        ("rnnlm", args.rnnlm_model, args.rnnlm_imputations),
        ("vae", args.vae_model, args.vae_imputations),
    ):
        if path:
            records[name] = read_jsonl(path)
            labels[name] = f"{name.upper()} ({path})"
            settings[name] = {"imputations": str(path)}
            continue
        if not model_path:
            continue
        model, tokenizer = load_pretrained(model_path, device=device)
        expected = "rnnlm" if name == "rnnlm" else "vae"
        actual = "rnnlm" if model.config.is_rnnlm else "vae"
        if actual != expected:
            raise ValueError(f"--{name}_model {model_path} is a {actual}, not a {expected}")
        if not model.config.right_to_left:
            logger.warning("--%s_model decodes left to right; the paper imputes with right-to-left models", name)
        sentences = load_sentences(args.test_file, tokenizer, args.max_sentences, args.min_words)
        beams = args.rnnlm_beams if name == "rnnlm" else args.vae_beams
        steps = None if name == "rnnlm" else args.vae_steps
        logger.info("%s: imputing %d sentences", name, len(sentences))
        start = time.time()
        records[name] = impute_texts(
            model,
            tokenizer,
            sentences,
            fraction=args.fraction,
            batch_size=args.batch_size,
            num_beams=beams,
            num_steps=steps,
            allow_unk=not args.forbid_unk,
        )
        labels[name] = f"{name.upper()} ({beams} bm.)" if steps is None else f"VAE ({steps}x{beams} bm.)"
        settings[name] = {
            "model": str(model_path),
            "right_to_left": bool(model.config.right_to_left),
            "num_beams": beams,
            "num_steps": steps,
            "seconds": round(time.time() - start, 2),
        }
        del model
        if args.imputations_dir:
            out = Path(args.imputations_dir) / f"{name}_imputations.jsonl"
            write_text(out, "".join(json.dumps(r) + "\n" for r in records[name]))

    if len(records) == 2 and [r["original"] for r in records["vae"]] != [r["original"] for r in records["rnnlm"]]:
        raise ValueError("the two models' imputations are not of the same sentences (tokenizers differ?)")

    scorer = scorer_tokenizer = None
    if args.scorer_model:
        scorer, scorer_tokenizer = load_pretrained(args.scorer_model, device=device)
        if not scorer.config.is_rnnlm:
            raise ValueError(f"--scorer_model {args.scorer_model} must be an RNNLM (latent_size=0)")
    any_records = next(iter(records.values()))
    results: dict = {
        "test_files": [str(p) for p in args.test_file or []],
        "corpus_note": "Penn Treebank held-out sentences; the paper used the Books Corpus (not available)",
        "num_sentences": len(any_records),
        "fraction": args.fraction,
        "seed": args.seed,
        "scorer_model": args.scorer_model,
        "models": {},
    }
    if scorer is not None:
        true_nll = sentence_nll(scorer, scorer_tokenizer, [r["original"] for r in any_records], args.batch_size)
        results["true_sentences_scorer_nll"] = float(np.mean(true_nll))
    lstm_kwargs = dict(
        embedding_size=args.lstm_embedding_size,
        hidden_size=args.lstm_hidden_size,
        dropout=args.lstm_dropout,
        learning_rate=args.lstm_learning_rate,
        max_epochs=args.lstm_max_epochs,
        patience=args.lstm_patience,
        device=device,
    )
    for name, rows in records.items():
        true_texts = [r["original"] for r in rows]
        imputed_texts = [r["imputed"] for r in rows]
        logger.info("%s: training the discriminators on %d pairs", name, len(rows))
        evaluation = adversarial_evaluation(true_texts, imputed_texts, seed=args.seed, lstm_kwargs=lstm_kwargs)
        entry = {
            "label": labels[name],
            **settings[name],
            **evaluation,
            "suffix_exact_match": sum(r["true_suffix"] == r["imputed_suffix"] for r in rows) / len(rows),
            "distinct_imputed_suffixes": len({r["imputed_suffix"] for r in rows}) / len(rows),
            "examples": rows[: args.num_examples],
        }
        if scorer is not None:
            entry["scorer_nll"] = float(np.mean(sentence_nll(scorer, scorer_tokenizer, imputed_texts, args.batch_size)))
        results["models"][name] = entry
    emit_json(results, args.output_file)
    if args.markdown_file:
        write_text(args.markdown_file, markdown_report(results))
        logger.info("wrote %s", args.markdown_file)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
