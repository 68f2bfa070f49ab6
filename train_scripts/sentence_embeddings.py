"""Posterior means as sentence embeddings (the paper's appendix): TREC question classification (Table 10)
and MSRP paraphrase detection (Table 9), with L2 logistic regressions whose strength is chosen by 10-fold
cross-validation on the training set.

    python train_scripts/sentence_embeddings.py --model_name_or_path runs/ptb/vae_standard/best \
        [--data_dir ../shared/data] [--tasks trec msrp] [--normalize auto] [--cv_folds 10] \
        [--output_file results/embeddings.json]

--data_dir (default: $SENTENCE_VAE_DATA) holds
trec/{train_5500,TREC_10}.label and msrp/msr_paraphrase_{train,test}.txt. With a Penn Treebank tokenizer
the texts are lower-cased, numbers mapped to N and punctuation dropped (`--normalize auto`); the JSON reports
the share of test words still out of the model's vocabulary. `--fine_tune_epochs N` also fine-tunes the encoder
with a linear classifier on TREC for N epochs (`SentenceVAEForSequenceClassification`; `trec.fine_tuned` in the
JSON). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.embeddings import (
    MSRP_FILES,
    NORMALIZATIONS,
    TREC_FILES,
    evaluate_msrp,
    evaluate_trec,
    fine_tune_trec,
    read_msrp,
    read_trec,
)
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script

logger = logging.getLogger("sentence_embeddings")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, model="save_pretrained folder of a VAE")
    parser.add_argument("--data_dir", default=os.environ.get("SENTENCE_VAE_DATA"), help="default: $SENTENCE_VAE_DATA")
    parser.add_argument("--tasks", nargs="+", choices=("trec", "msrp"), default=["trec", "msrp"])
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="auto")
    parser.add_argument("--cv_folds", type=int, default=10)
    parser.add_argument("--standardize", action="store_true", help="standardise features before the classifier")
    parser.add_argument("--max_train", type=int, default=None, help="use the first N training examples (smoke)")
    parser.add_argument("--max_test", type=int, default=None, help="use the first N test examples (smoke)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--fine_tune_epochs", type=int, default=0, help="also fine-tune the encoder on TREC for N epochs (0: no)"
    )
    parser.add_argument("--fine_tune_learning_rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.cv_folds < 2:
        parser.error(f"--cv_folds must be >= 2, got {args.cv_folds}")
    if args.fine_tune_epochs < 0:
        parser.error(f"--fine_tune_epochs must be >= 0, got {args.fine_tune_epochs}")
    return args


def evaluate(argv: Sequence[str] | None = None) -> dict:
    """Evaluate the embeddings as the arguments say; prints (and writes) the results and returns them."""
    args = parse_args(argv)
    if not args.data_dir:
        raise ValueError("no data directory: pass --data_dir or set SENTENCE_VAE_DATA")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data_dir {str(data_dir)!r} is not a folder")
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    if model.config.is_rnnlm:
        raise ValueError("sentence embeddings need a VAE (latent_size > 0); this model is an RNNLM")
    common = dict(
        normalize=args.normalize,
        cv_folds=args.cv_folds,
        standardize=args.standardize,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    results: dict = {
        "model_name_or_path": str(args.model_name_or_path),
        "latent_size": model.config.latent_size,
        "corpus_note": (
            "model trained on the Penn Treebank (the paper's appendix used a 1200-unit VAE trained on the Books "
            "Corpus); TREC/MSRP text is mapped to PTB form and many words remain out of vocabulary"
        ),
    }
    for task in args.tasks:
        start = time.time()
        if task == "trec":
            train, test = (read_trec(data_dir / "trec" / name) for name in TREC_FILES)
            task_evaluation = evaluate_trec
        else:
            train, test = (read_msrp(data_dir / "msrp" / name) for name in MSRP_FILES)
            task_evaluation = evaluate_msrp
        if args.max_train:
            train = train.subset(args.max_train)
        if args.max_test:
            test = test.subset(args.max_test)
        logger.info("%s: %d train, %d test", task, len(train), len(test))
        results[task] = task_evaluation(model, tokenizer, train, test, **common)
        results[task]["seconds"] = round(time.time() - start, 2)
        if task == "trec" and args.fine_tune_epochs:
            start = time.time()
            results[task]["fine_tuned"] = fine_tune_trec(
                args.model_name_or_path,
                tokenizer,
                train,
                test,
                normalize=args.normalize,
                epochs=args.fine_tune_epochs,
                learning_rate=args.fine_tune_learning_rate,
                seed=args.seed,
            )
            results[task]["fine_tuned"]["seconds"] = round(time.time() - start, 2)
    emit_json(results, args.output_file)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
