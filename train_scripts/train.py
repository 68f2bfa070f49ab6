#!/usr/bin/env python
"""Train a sentence VAE (or its RNNLM baseline with --latent_size 0).

    accelerate launch train_scripts/train.py --config train_scripts/configs/ptb_vae_standard.yaml
    python train_scripts/train.py --train_file train.txt --validation_file valid.txt --output_dir runs/x

Every option of `hf_sentence_vae.training.TrainingConfig` is a flag; `--config FILE` reads them from YAML/JSON.
"""

import logging
import sys

from hf_sentence_vae.cli import parse_args
from hf_sentence_vae.training import TrainingConfig, train


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    config = parse_args(TrainingConfig, argv, description=__doc__)
    results = train(config)
    logging.getLogger("train").info("final metrics: %s", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
