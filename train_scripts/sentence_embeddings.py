"""Posterior means as sentence embeddings (the paper's appendix): TREC question classification (Table 10)
and MSRP paraphrase detection (Table 9), with L2 logistic regressions whose strength is chosen by 10-fold
cross-validation on the training set.

    python train_scripts/sentence_embeddings.py --model_name_or_path runs/ptb/vae_standard/best \
        [--data_dir ../shared/data] [--tasks trec msrp] [--normalize auto] [--cv_folds 10] \
        [--output_file results/embeddings.json]

--data_dir (default: $SENTENCE_VAE_DATA, else ../shared/data next to the repository) holds
trec/{train_5500,TREC_10}.label and msrp/msr_paraphrase_{train,test}.txt. With a Penn Treebank tokenizer
the texts are lower-cased, numbers mapped to N and punctuation dropped (`--normalize auto`); the JSON reports
the share of test words still out of the model's vocabulary. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from hf_sentence_vae.analysis import load_pretrained
from hf_sentence_vae.embeddings import (
    MSRP_FILES,
    NORMALIZATIONS,
    TREC_FILES,
    default_data_dir,
    evaluate_msrp,
    evaluate_trec,
    read_msrp,
    read_trec,
)
from hf_sentence_vae.script_runner import run_script

logger = logging.getLogger("sentence_embeddings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="save_pretrained folder of a VAE")
    parser.add_argument("--tokenizer_name_or_path", default=None, help="default: --model_name_or_path")
    parser.add_argument("--data_dir", default=None, help="default: $SENTENCE_VAE_DATA or ../shared/data")
    parser.add_argument("--tasks", nargs="+", choices=("trec", "msrp"), default=["trec", "msrp"])
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="auto")
    parser.add_argument("--cv_folds", type=int, default=10)
    parser.add_argument("--standardize", action="store_true", help="standardise features before the classifier")
    parser.add_argument("--max_train", type=int, default=None, help="use the first N training examples (smoke)")
    parser.add_argument("--max_test", type=int, default=None, help="use the first N test examples (smoke)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output_file", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.cv_folds < 2:
        parser.error(f"--cv_folds must be >= 2, got {args.cv_folds}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        raise SystemExit("error: no data directory: pass --data_dir or set SENTENCE_VAE_DATA")
    model, tokenizer = load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    if model.config.latent_size == 0:
        raise SystemExit("error: sentence embeddings need a VAE (latent_size > 0); this model is an RNNLM")
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
            evaluate = evaluate_trec
        else:
            train, test = (read_msrp(data_dir / "msrp" / name) for name in MSRP_FILES)
            evaluate = evaluate_msrp
        if args.max_train:
            train = train.subset(args.max_train)
        if args.max_test:
            test = test.subset(args.max_test)
        logger.info("%s: %d train, %d test", task, len(train), len(test))
        results[task] = evaluate(model, tokenizer, train, test, **common)
        results[task]["seconds"] = round(time.time() - start, 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    sys.exit(run_script(main))
