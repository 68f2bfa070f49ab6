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
import os
import sys

from hf_sentence_vae.cli import parse_args
from hf_sentence_vae.training import TrainingConfig, train

EXIT_USAGE = 2  # bad input or settings (as argparse), or a numerical fault
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a problem with the input or the run, not a bug: reported in one line."""
    errors = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FloatingPointError]
    try:
        from hf_sentence_vae.hub import HubPushError

        errors.append(HubPushError)
    except ImportError:  # the Hub extras are optional
        pass
    return tuple(errors)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
    try:
        config = parse_args(TrainingConfig, argv, description=__doc__)
        results = train(config)
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume_from_checkpoint latest", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as err:
        if os.environ.get("SENTENCE_VAE_TRACEBACK"):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    from accelerate import PartialState

    if PartialState().is_main_process:  # one log per run, whatever the number of processes
        logging.getLogger("train").info("final metrics: %s", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
