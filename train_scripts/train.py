#!/usr/bin/env python
"""Train a sentence VAE (or its RNNLM baseline with --latent_size 0).

    accelerate launch train_scripts/train.py --config train_scripts/configs/ptb_vae_standard.yaml
    python train_scripts/train.py --train_file train.txt --validation_file valid.txt --output_dir runs/x

Every option of `hf_sentence_vae.training.TrainingConfig` is a flag; `--config FILE` reads them from YAML/JSON.
An interrupted run continues exactly where its newest intact checkpoint left off with
`--resume_from_checkpoint latest` (same --output_dir and flags).

Errors in the input (missing, empty or non-UTF-8 data files, impossible settings, a tokenizer that does not match
the model, missing or corrupt weights or checkpoints, a tracker that is not installed, a `--push_to_hub` that
cannot succeed: the Hub, the token and the repository are checked before training) and a non-finite loss end the
run with one line `error: ...` on stderr and exit status 2; set SENTENCE_VAE_TRACEBACK=1 to see the full traceback
instead. With several processes only the main one logs progress.
"""

import logging
import sys
from collections.abc import Sequence

from hf_sentence_vae.cli import parse_args
from hf_sentence_vae.script_runner import run_script
from hf_sentence_vae.training import TrainingConfig, train


def _train(argv: Sequence[str] | None) -> dict:
    config = parse_args(TrainingConfig, argv, description=__doc__)
    results = train(config)
    logging.getLogger("train").info("final metrics: %s", results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(_train, argv, resume_hint="continue with --resume_from_checkpoint latest")


if __name__ == "__main__":
    sys.exit(main())
