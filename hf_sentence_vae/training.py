"""The Accelerate training loop for the sentence VAE (and its RNNLM baseline).

`train(TrainingConfig(...))` runs the same way under `python`, `accelerate launch` on one or several CPU
processes (gloo) or GPUs. The randomness of each step (the posterior noise and word dropout) is drawn for
the whole global batch from a generator seeded by (seed, step) and then split across processes, so a run
gives the same results whether or not it was resumed and, without the decoder's dropout-style regularisers
(`dropout`, `embedding_dropout`, `decoder_weight_drop`), whatever the number of processes: their masks come
from each process's own torch generator, seeded per rank (and saved in checkpoints, so resuming stays exact).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, SchedulerType
from transformers.utils import logging

from .annealing import SCHEDULES, KLSchedule, KLTargetController
from .checkpointing import (
    TRAINING_STATE_DIR,
    CheckpointError,
    OutputDirLock,
    check_pretrained_folder,
    checkpoint_problem,
    fsync_tree,
    load_model_config,
    load_pretrained_model,
    load_tokenizer,
    load_training_state,
    record_checksums,
    remove_dir,
    removed_on_failure,
    replace_dir,
    safe_torch_load,
    save_training_state,
    write_manifest,
)
from .configuration_sentence_vae import LATENT_INJECTIONS, VARIANCE_PARAMETERIZATIONS, SentenceVAEConfig, _validate
from .data import TokenizedCorpus, bucketed_batches, load_text_splits, pad_fraction, tokenize_splits
from .modeling_sentence_vae import SentenceVAEModel
from .tokenization_sentence_vae_fast import build_tokenizer, check_tokenizer_matches_model

logger = logging.get_logger(__name__)

MODEL_FIELDS = (
    "embedding_size",
    "encoder_hidden_size",
    "decoder_hidden_size",
    "latent_size",
    "bidirectional_encoder",
    "num_highway_layers",
    "latent_injection",
    "variance_parameterization",
    "posterior_mean_bn_scale",
    "tie_word_embeddings",
    "share_embeddings",
    "word_keep_rate",
    "dropout",
    "locked_dropout",
    "embedding_dropout",
    "decoder_weight_drop",
    "right_to_left",
    "max_sentence_length",
)
# Model fields that fix the weights' shapes or meaning: a pretrained model or a checkpoint cannot change them.
ARCHITECTURE_FIELDS = (
    "embedding_size",
    "encoder_hidden_size",
    "decoder_hidden_size",
    "latent_size",
    "bidirectional_encoder",
    "num_highway_layers",
    "latent_injection",
    "variance_parameterization",
    "posterior_mean_bn_scale",
    "tie_word_embeddings",
    "share_embeddings",
    "right_to_left",
)
# Options that change neither the model nor the optimisation: a resumed run may differ in them without a warning.
OPERATIONAL_FIELDS = (
    "output_dir",
    "resume_from_checkpoint",
    "checkpointing_steps",
    "save_total_limit",
    "disable_tqdm",
    "num_threads",
    "preprocessing_num_workers",
    "cache_dir",
    "with_tracking",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "hub_token",
    "extra",
)
OPTIMIZERS = ("adam", "adamw", "sgd")
# Validation figures the best model can be selected on (lower is better): the bound, or its reconstruction term
# (for runs whose KL is held at a target, where the bound also measures the target).
BEST_MODEL_METRICS = ("loss", "reconstruction")
READABLE_NUM_BEAMS = 5  # the beam width trained models decode with by default (`readable_generation_config`)
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
AVERAGE_FILE = "weight_average.pt"  # in a checkpoint's training_state/ when --ema_decay is set


def _option(default: Any, help: str, choices: tuple | list | None = None) -> Any:  # noqa: A002
    """A `TrainingConfig` field with its `--flag` help (and allowed values), as `HfArgumentParser` reads them."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    return field(default=default, metadata=metadata)


def _model_option(name: str, help: str, choices: tuple | None = None) -> Any:  # noqa: A002
    """A model setting: unset (None) keeps the `SentenceVAEConfig` default, which the help names."""
    return _option(
        None, f"{help} (unset: the SentenceVAEConfig default, {getattr(SentenceVAEConfig, name)!r})", choices
    )


LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType)
TRACKERS = ("all", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "aim", "swanlab")


@dataclass
class TrainingConfig:
    """Every option of a training run; `train_scripts/train.py` exposes each as a `--flag` (its help, default and
    choices come from the field's metadata, as with `transformers.HfArgumentParser`).

    `ema_decay` turns on weight averaging (an exponential moving average of the weights, Polyak & Juditsky
    1992): evaluations, `best/` and the final figures use the averaged weights, the training loss is that of
    the weights being trained, and checkpoints keep both so that a resumed run continues exactly."""

    # data
    train_file: str | None = _option(None, "training text, one sentence a line (or give --dataset_name)")
    validation_file: str | None = _option(None, "validation text: evaluated every --eval_steps, selects best/")
    test_file: str | None = _option(None, "test text, evaluated once at the end with the selected model")
    dataset_name: str | None = _option(None, "a `datasets` dataset (Hub id or local folder) instead of text files")
    dataset_config_name: str | None = _option(None, "the dataset's configuration name")
    text_column: str = _option("text", "the dataset column holding the sentences")
    max_length: int = _option(100, "longest tokenized sentence kept, <bos> and <eos> included (longer: truncated)")
    tokenizer_name_or_path: str | None = _option(
        None, "a saved tokenizer (unset: the model's, or one built from the training split)"
    )
    vocab_size: int | None = _option(None, "largest vocabulary built from the training split (unset: every word)")
    min_frequency: int = _option(0, "words seen fewer times in the training split become <unk>")
    text_mode: str = _option(
        "pretokenized",
        "pretokenized: split on whitespace (PTB); raw: lower-case and split punctuation off",
        ("pretokenized", "raw"),
    )
    preprocessing_num_workers: int | None = _option(None, "processes for tokenizing with datasets.map")
    cache_dir: str | None = _option(None, "the datasets cache folder (unset: the datasets default)")
    # model (None = the SentenceVAEConfig default)
    model_name_or_path: str | None = _option(None, "start from this saved model (fine-tuning) instead of a new one")
    embedding_size: int | None = _model_option("embedding_size", "word embedding size")
    encoder_hidden_size: int | None = _model_option("encoder_hidden_size", "encoder LSTM units (per direction)")
    decoder_hidden_size: int | None = _model_option("decoder_hidden_size", "decoder LSTM units")
    latent_size: int | None = _model_option("latent_size", "size of z; 0 trains the RNNLM baseline")
    bidirectional_encoder: bool | None = _model_option("bidirectional_encoder", "read sentences in both directions")
    num_highway_layers: int | None = _model_option(
        "num_highway_layers", "highway layers before the posterior and after z"
    )
    latent_injection: str | None = _model_option(
        "latent_injection", "where the decoder sees z besides its initial state", LATENT_INJECTIONS
    )
    variance_parameterization: str | None = _model_option(
        "variance_parameterization",
        "exp: the encoder predicts log sigma^2; softplus: sigma^2",
        VARIANCE_PARAMETERIZATIONS,
    )
    posterior_mean_bn_scale: float | None = _model_option(
        "posterior_mean_bn_scale", "batch-normalised posterior means scaled by this (BN-VAE); 0 turns it off"
    )
    tie_word_embeddings: bool | None = _model_option(
        "tie_word_embeddings", "tie the output layer to the decoder's input embedding"
    )
    share_embeddings: bool | None = _model_option("share_embeddings", "encoder and decoder read one embedding")
    word_keep_rate: float | None = _model_option(
        "word_keep_rate", "word dropout: probability of keeping each decoder input word; 0 = inputless decoder"
    )
    dropout: float | None = _model_option("dropout", "dropout on decoder embeddings and LSTM outputs")
    locked_dropout: bool | None = _model_option("locked_dropout", "one dropout mask per sentence for all time steps")
    embedding_dropout: float | None = _model_option(
        "embedding_dropout", "drop whole word types from the decoder's embedding"
    )
    decoder_weight_drop: float | None = _model_option(
        "decoder_weight_drop", "DropConnect on the decoder LSTM's recurrent weights"
    )
    right_to_left: bool | None = _model_option("right_to_left", "generate sentences from the last word to the first")
    max_sentence_length: int | None = _model_option(
        "max_sentence_length", "longest sentence generate() produces by default (tokens, <eos> included)"
    )
    # optimisation
    output_dir: str = _option(
        "runs/sentence-vae", "run folder: best/ (the selected model), checkpoints, metrics; its name titles the card"
    )
    per_device_train_batch_size: int = _option(32, "sentences per batch and process")
    per_device_eval_batch_size: int = _option(128, "sentences per evaluation batch and process")
    learning_rate: float = _option(1e-3, "peak learning rate (after warm-up, before decay)")
    weight_decay: float = _option(0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)")
    optimizer: str = _option("adam", "the optimizer (Adam and AdamW run fused)", OPTIMIZERS)
    lr_scheduler_type: str = _option("constant", "learning-rate schedule (transformers' get_scheduler)", LR_SCHEDULERS)
    num_warmup_steps: int = _option(0, "learning-rate warm-up steps")
    num_train_epochs: int = _option(10, "epochs (unless --max_train_steps is set)")
    max_train_steps: int | None = _option(None, "optimizer steps; overrides --num_train_epochs")
    gradient_accumulation_steps: int = _option(1, "batches per optimizer step")
    max_grad_norm: float | None = _option(5.0, "clip the gradient norm to this (none: no clipping)")
    ema_decay: float | None = _option(None, "average the weights with this EMA decay, e.g. 0.9995 (none: off)")
    mixed_precision: str = _option(
        "no", "mixed precision: the autocast dtype (no: float32 throughout)", ("no", "bf16", "fp16")
    )
    seed: int = _option(42, "seed of the batches, the posterior noise and word dropout, and the initialisation")
    # objective
    kl_schedule: str = _option("sigmoid", "KL weight schedule (annealing)", SCHEDULES)
    kl_sigmoid_slope: float = _option(0.0025, "sigmoid schedule: slope (per step)")
    kl_sigmoid_midpoint: float = _option(2500.0, "sigmoid schedule: step at which the weight is 0.5")
    kl_warmup_steps: int = _option(10000, "linear schedule: steps to reach weight 1")
    kl_start: float = _option(0.0, "linear schedule: weight at step 0")
    kl_cycles: int = _option(4, "cyclical schedule: number of cycles over the run")
    kl_cycle_ratio: float = _option(0.5, "cyclical schedule: fraction of each cycle spent rising to 1")
    kl_constant: float = _option(1.0, "constant schedule: the weight")
    free_bits: float = _option(0.0, "minimum KL per latent dimension in the loss (nats, batch-averaged); 0: off")
    kl_target: float | None = _option(
        None, "hold the KL at this many nats per sentence with a PI controller of the weight (none: use the schedule)"
    )
    kl_target_kp: float = _option(0.01, "--kl_target controller: proportional gain")
    kl_target_ki: float = _option(1e-4, "--kl_target controller: integral gain")
    encoder_warmup_steps: int = _option(
        0, "train as an autoencoder (KL weight 0) for this many steps, then re-initialise the decoder; 0: off"
    )
    # loop
    logging_steps: int = _option(50, "steps between training log records (metrics.jsonl)")
    eval_steps: int | None = _option(None, "steps between validation evaluations (unset: once an epoch)")
    early_stopping_patience: int | None = _option(None, "stop after this many evaluations without improvement")
    metric_for_best_model: str = _option(
        "loss",
        "validation figure that selects best/ and drives early stopping: the bound (loss) or its reconstruction term "
        "(for runs whose KL is held at a high target)",
        BEST_MODEL_METRICS,
    )
    checkpointing_steps: str | None = _option(None, "write checkpoint-N/ every N steps, or 'epoch' (unset: never)")
    save_total_limit: int | None = _option(None, "keep at most this many checkpoints (unset: all)")
    resume_from_checkpoint: str | None = _option(None, "a checkpoint folder, or 'latest' in --output_dir")
    on_nonfinite_loss: str = _option(
        "error", "a NaN or infinite loss stops the run, or skips the batch", ("error", "skip")
    )
    with_tracking: bool = _option(False, "log metrics to experiment trackers (--report_to)")
    report_to: str = _option(
        "all",
        "tracker for --with_tracking ('all': every one installed; tensorboard comes with the train extra)",
        TRACKERS,
    )
    push_to_hub: bool = _option(
        False, "push best/ to --hub_model_id at the end (the Hub, token and repository are checked before training)"
    )
    hub_model_id: str | None = _option(None, "repository for --push_to_hub: namespace/name")
    hub_token: str | None = _option(None, "Hub token (unset: HF_TOKEN, then the stored login)")
    hub_private: bool = _option(False, "create the repository as private")
    license: str | None = _option(  # noqa: A003
        None,
        "license in the model card's metadata, a Hub license id (e.g. apache-2.0, mit, cc-by-4.0); unset: the card "
        "says none was chosen (license: other), and --push_to_hub refuses",
    )
    disable_tqdm: bool = _option(False, "hide the progress bar")
    evaluate_train_split: bool = _option(False, "also evaluate the training split at the end")
    num_threads: int | None = _option(None, "torch threads per process (1 is safest on a busy machine)")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.on_nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"on_nonfinite_loss must be 'error' or 'skip', got {self.on_nonfinite_loss!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not (self.max_grad_norm >= 0):  # also NaN
            raise ValueError(
                f"max_grad_norm must be >= 0 (0 or none: no clipping), got {self.max_grad_norm}; a negative norm "
                "would turn every step into gradient ascent"
            )
        for name in ("logging_steps", "eval_steps", "early_stopping_patience", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")
        for name in ("num_warmup_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"max_train_steps must be >= 1, got {self.max_train_steps}")
        if self.num_train_epochs < 1:
            raise ValueError(f"num_train_epochs must be >= 1, got {self.num_train_epochs}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (or unset), got {self.ema_decay}")
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise ValueError(f"free_bits must be a finite number >= 0, got {self.free_bits}")
        for name in ("kl_target", "kl_target_kp", "kl_target_ki"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.encoder_warmup_steps < 0:
            raise ValueError(f"encoder_warmup_steps must be >= 0, got {self.encoder_warmup_steps}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.license is not None:
            from .hub import check_license_id

            check_license_id(self.license)
        if self.push_to_hub and not self.license:
            raise ValueError(
                "--push_to_hub needs --license: choose the license the model is shared under (a Hub license id, e.g. "
                "apache-2.0, mit, cc-by-4.0)"
            )
        if self.report_to not in TRACKERS:
            raise ValueError(f"report_to must be one of {TRACKERS}, got {self.report_to!r}")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_type!r}")
        if self.checkpointing_steps is not None:
            value = str(self.checkpointing_steps)
            if value != "epoch" and not (value.isdigit() and int(value) > 0):
                raise ValueError(f"checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
        if self.metric_for_best_model not in BEST_MODEL_METRICS:
            raise ValueError(
                f"metric_for_best_model must be one of {BEST_MODEL_METRICS}, got {self.metric_for_best_model!r}"
            )
        if self.kl_schedule not in SCHEDULES:
            raise ValueError(f"kl_schedule must be one of {SCHEDULES}, got {self.kl_schedule!r}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<bos>, a word, <eos>), got {self.max_length}")
        if self.text_mode not in ("pretokenized", "raw"):
            raise ValueError(f"text_mode must be 'pretokenized' or 'raw', got {self.text_mode!r}")
        if not self.train_file and not self.dataset_name:
            raise ValueError("give --train_file (and --validation_file) or --dataset_name")

    def model_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("hub_token", None)
        return data


@dataclass
class TrainerState:
    """What a checkpoint needs besides model/optimizer/scheduler to resume exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = math.inf
    best_step: int | None = None
    evals_without_improvement: int = 0
    skipped_steps: int = 0
    tokens_seen: int = 0
    window: dict[str, float] = field(default_factory=dict)  # sums since the last log record
    kl_controller: dict[str, float] = field(default_factory=dict)  # KLTargetController.state_dict()
    decoder_reinitialized: bool = False  # the encoder warm start's second phase has begun
    checksums: dict[str, str] = field(default_factory=dict)  # SHA-256 of the checkpoint's weights and state files

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


# --------------------------------------------------------------------------- helpers
def readable_generation_config(model_config: SentenceVAEConfig, unk_in_corpus: bool) -> GenerationConfig:
    """The decoding defaults a trained model saves in `generation_config.json`, which `generate`, the pipeline, the
    scripts and the model card use: beam search with `READABLE_NUM_BEAMS` beams for a VAE (the paper's greedy
    decodes of prior samples read "he / he was to the / a of the of the"; 5 beams read "he had a good deal in the
    room"), ancestral sampling for the RNNLM (without a latent code every greedy or beam decode is the same
    sentence), and `<unk>` suppressed when the tokenized training text holds it (PTB's literal `<unk>`, or words
    outside the vocabulary): a model that learned `<unk>` as a frequent word generates it."""
    config = GenerationConfig.from_model_config(model_config)
    if model_config.latent_size > 0:
        config.num_beams = READABLE_NUM_BEAMS
    else:
        config.do_sample = True
    if unk_in_corpus:
        config.suppress_tokens = [model_config.unk_token_id]
    return config


def _sets_decoding(config: GenerationConfig | None) -> bool:
    """Whether a loaded model's generation config already chooses how to decode (then training keeps it)."""
    return config is not None and any(
        getattr(config, name, None) is not None for name in ("num_beams", "do_sample", "suppress_tokens")
    )


def check_trackers(report_to: str) -> None:
    """Raise a `ValueError` unless the tracker `--report_to` names (or, for `all`, at least one) is installed:
    Accelerate would only warn and train without logging."""
    from accelerate.tracking import get_available_trackers

    available = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
    if report_to == "all" and not available:
        raise ValueError(
            "--with_tracking found no experiment tracker installed: install the train extra (it brings tensorboard) "
            "or name one with --report_to"
        )
    if report_to != "all" and report_to not in available:
        raise ValueError(
            f"--with_tracking --report_to {report_to}: {report_to} is not installed (installed: {available or 'none'}); "
            f"pip install {report_to} (tensorboard comes with the train extra: pip install -e '.[train]')"
        )


def step_noise(
    seed: int, micro_step: int, batch_size: int, latent_size: int, width: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The randomness of one micro-step for the whole global batch: posterior noise `(B, Z)` and word-dropout
    uniforms `(B, width)`, a pure function of (seed, micro_step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + micro_step)
    latent = torch.randn((batch_size, latent_size), generator=generator) if latent_size else None
    words = torch.rand((batch_size, width), generator=generator)
    return latent, words


def update_weight_average(
    averages: list[torch.Tensor], params: list[torch.Tensor], decay: float, num_updates: int
) -> None:
    """In place, an exponential moving average of the weights after `num_updates + 1` optimizer steps:
    average <- d average + (1 - d) param, with d = min(decay, (1 + n) / (10 + n)) so that the first steps'
    averages do not keep the initialisation (the warm-up of TensorFlow's ExponentialMovingAverage)."""
    d = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    with torch.no_grad():
        for average, param in zip(averages, params, strict=True):
            average.lerp_(param.detach().to(average.dtype), 1.0 - d)


def _copy_into(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)


def shard(indices: np.ndarray, rank: int, world_size: int) -> slice:
    """The contiguous slice of a global batch that process `rank` trains on."""
    bounds = np.linspace(0, len(indices), world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with a trainer state file), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(value: str, output_dir: str) -> Path | None:
    """`latest` -> the newest complete, intact checkpoint in `output_dir` (None if there is none): a corrupt one
    (a file missing, truncated or altered; see `checkpointing.checkpoint_problem`) is skipped with a warning.
    Else the path, which must be an intact checkpoint (`CheckpointError` otherwise)."""
    if value == "latest":
        for path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path, STATE_FILE)
            if problem is None:
                return path
            logger.warning(f"skipping corrupt checkpoint {path}: {problem}; trying the previous one")
        return None
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {value!r} is not a complete checkpoint (no {STATE_FILE})")
    problem = checkpoint_problem(path, STATE_FILE)
    if problem is not None:
        others = [p.name for p in list_checkpoints(path.parent) if p != path]
        hint = f"; other checkpoints there: {', '.join(others)}" if others else ""
        raise CheckpointError(f"--resume_from_checkpoint {value!r} is corrupt: {problem}{hint}")
    return path


def model_field_changes(overrides: dict[str, Any], model_config) -> dict[str, tuple[Any, Any]]:
    """The model options among `overrides` whose values differ from `model_config`'s: name -> (old, new)."""
    return {
        name: (getattr(model_config, name, None), value)
        for name, value in overrides.items()
        if getattr(model_config, name, None) != value
    }


def setting_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The training options (model and operational options aside) that differ between a checkpoint's
    `training_config.json` and the current run: name -> (old, new)."""
    skip = set(MODEL_FIELDS) | set(OPERATIONAL_FIELDS)
    return {
        name: (saved.get(name), value)
        for name, value in current.items()
        if name not in skip and name in saved and saved[name] != value
    }


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """`--name (old -> new)`, comma-separated."""
    return ", ".join(f"--{name} ({old!r} -> {new!r})" for name, (old, new) in changes.items())


def _empty_window() -> dict[str, float]:
    return {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "tokens": 0, "n": 0}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint's step (they will be produced again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a record torn by the interruption
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel (one op for the whole update instead of ~15 per parameter group) measured 1.07-1.24x
    # faster training steps on CPU (BENCHMARKS.md, "Speed"); it computes the same update.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return cls(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None)


@torch.no_grad()
def evaluate_bound(
    model: SentenceVAEModel,
    corpus: TokenizedCorpus,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Single-sample bound on a corpus: per-sentence reconstruction, KL and their sum (the negative ELBO),
    and the bound's perplexity (tokens incl. end of sentence). Process `rank` of `world_size` evaluates
    every `world_size`-th batch; returns the sums of this process (reduce them across processes)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    batches = bucketed_batches(corpus.lengths, batch_size, shuffle=False)
    for index in range(rank, len(batches), world_size):
        batch = {k: v.to(device) for k, v in corpus.batch(batches[index]).items()}
        generator = torch.Generator(device=device).manual_seed(seed + index)
        out = model(**batch, return_logits=False, generator=generator, sample_latent=True, return_dict=True)
        sums += torch.tensor(
            [
                float(out.reconstruction_per_sentence.sum()),
                float(out.kl_per_sentence.sum()),
                float(out.num_tokens),
                len(batches[index]),
            ],
            dtype=torch.float64,
        )
    model.train(was_training)
    return sums


def bound_metrics(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    reconstruction, kl, tokens, sentences = (float(x) for x in sums)
    sentences = max(sentences, 1.0)
    return {
        f"{prefix}_loss": (reconstruction + kl) / sentences,
        f"{prefix}_reconstruction": reconstruction / sentences,
        f"{prefix}_kl": kl / sentences,
        f"{prefix}_ppl": math.exp(min((reconstruction + kl) / max(tokens, 1.0), 700.0)),
    }


def plot_training(metrics_path: Path, output_path: Path) -> Path | None:
    """The paper's Figure 2 from a run: KL weight and unweighted KL over steps, plus the validation bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "kl_weight" in r]
    evals = [r for r in records if "validation_loss" in r]
    if not train:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    steps = [r["step"] for r in train]
    top.plot(steps, [r["kl"] for r in train], color="tab:blue", label="KL term value (unweighted)")
    top.set_ylabel("KL (nats / sentence)")
    twin = top.twinx()
    twin.plot(steps, [r["kl_weight"] for r in train], color="tab:orange", label="KL term weight")
    twin.set_ylabel("KL weight")
    twin.set_ylim(0, 1.05)
    lines = top.get_lines() + twin.get_lines()
    top.legend(lines, [line.get_label() for line in lines], loc="center right")
    top.set_title("KL cost annealing (cf. Bowman et al. 2016, Figure 2)")
    if evals:
        bottom.plot([r["step"] for r in evals], [r["validation_loss"] for r in evals], marker="o", label="bound")
        bottom.plot([r["step"] for r in evals], [r["validation_kl"] for r in evals], marker=".", label="KL part")
        bottom.legend()
    bottom.set_ylabel("validation -ELBO (nats / sentence)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(output_path, dpi=120)
    plt.close(fig)
    return output_path


# --------------------------------------------------------------------------- the run
class Trainer:
    """Holds one run's objects; `run()` trains, evaluates, checkpoints and returns the final metrics."""

    def __init__(self, config: TrainingConfig, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        if config.with_tracking:
            check_trackers(config.report_to)
        if config.push_to_hub:  # before any work: a push that cannot succeed is found out now, not after training
            from .hub import preflight

            preflight(config.hub_model_id, config.hub_token, what=f"the model trained in {config.output_dir}")
        if accelerator is None:
            accelerator = Accelerator(
                gradient_accumulation_steps=config.gradient_accumulation_steps,
                mixed_precision=config.mixed_precision,
                log_with=config.report_to if config.with_tracking else None,
                project_dir=str(self.output_dir),
                step_scheduler_with_optimizer=False,
            )
        self.accelerator = accelerator
        if not accelerator.is_main_process:
            # One log per run: the main process logs for all (every process reads the same data and takes the same
            # steps, so their messages repeat the main one's); the others report errors only.
            package_logger = logging.get_logger(__name__.split(".")[0])
            package_logger.setLevel(max(package_logger.getEffectiveLevel(), logging.ERROR))
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        set_seed(config.seed)
        logger.info(
            f"world size {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}"
        )
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        # One run per output folder: a second one would mix its records and checkpoints into this one's.
        self._lock = OutputDirLock(self.output_dir) if accelerator.is_main_process else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            accelerator.wait_for_everyone()
            self.metrics_path = self.output_dir / "metrics.jsonl"
            self.resume_path = (
                resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)
                if config.resume_from_checkpoint
                else None
            )
            if config.resume_from_checkpoint == "latest" and self.resume_path is None:
                logger.warning(f"no intact checkpoint in {self.output_dir}: starting from scratch")
            self._prepare_data_and_model()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output folder's lock (`train` does this when the run ends, however it ends)."""
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ setup
    def _prepare_data_and_model(self) -> None:
        config, accelerator = self.config, self.accelerator
        if self.resume_path is None and not config.model_name_or_path:
            SentenceVAEConfig(vocab_size=8, **config.model_overrides())  # impossible settings fail before the data
        source, flag = self._model_source()
        if source is not None:
            folder = check_pretrained_folder(source, flag)  # so do missing or truncated weights
            if folder is not None:  # and architecture flags that the weights cannot follow
                self._model_overrides(load_model_config(SentenceVAEModel, folder, flag))
        splits = load_text_splits(
            config.train_file,
            config.validation_file,
            config.test_file,
            config.dataset_name,
            config.dataset_config_name,
            config.text_column,
            config.cache_dir,
        )
        self.tokenizer = self._load_or_build_tokenizer(splits)
        with accelerator.main_process_first():
            tokenized, self.truncated = tokenize_splits(
                splits, self.tokenizer, config.max_length, num_proc=config.preprocessing_num_workers
            )
        pad = self.tokenizer.pad_token_id
        self.corpora = {split: TokenizedCorpus.from_dataset(ds, pad) for split, ds in tokenized.items()}
        self.train_corpus = self.corpora["train"]

        if source is not None:
            model = load_pretrained_model(SentenceVAEModel, source, flag)
            changes = self._model_overrides(model.config)
            for name, (_, value) in changes.items():
                setattr(model.config, name, value)  # e.g. a different word keep rate for fine-tuning
            _validate(model.config)
            if self.resume_path is not None:
                self._warn_about_changed_settings(changes)
        else:
            model_config = SentenceVAEConfig(
                vocab_size=len(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                unk_token_id=self.tokenizer.unk_token_id,
                bos_token_id=self.tokenizer.bos_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **config.model_overrides(),
            )
            model = SentenceVAEModel(model_config)
        try:
            check_tokenizer_matches_model(self.tokenizer, model.config)
        except ValueError as err:
            source = self.resume_path or config.tokenizer_name_or_path or config.model_name_or_path or "built"
            raise ValueError(
                f"{err} (tokenizer: {source}; model: {self.resume_path or config.model_name_or_path})"
            ) from None
        self.latent_size = model.config.latent_size
        if self.resume_path is None and not _sets_decoding(model.generation_config):
            unk_in_corpus = bool((self.train_corpus.ids == self.tokenizer.unk_token_id).any())
            model.generation_config = readable_generation_config(model.config, unk_in_corpus)
        model.train()

        self.global_batch = config.per_device_train_batch_size * self.world
        self.batches_per_epoch = len(self._epoch_batches(0))
        if self.batches_per_epoch < config.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps={config.gradient_accumulation_steps} is more than the "
                f"{self.batches_per_epoch} batch(es) of an epoch ({len(self.train_corpus)} training sentences, global "
                f"batch {self.global_batch}): no optimizer step could be taken; lower it or the batch size"
            )
        self.steps_per_epoch = max(1, self.batches_per_epoch // config.gradient_accumulation_steps)
        self.max_train_steps = config.max_train_steps or config.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_train_steps / self.steps_per_epoch)
        self.kl_schedule = KLSchedule(
            name=config.kl_schedule,
            slope=config.kl_sigmoid_slope,
            midpoint=config.kl_sigmoid_midpoint,
            warmup_steps=config.kl_warmup_steps,
            start=config.kl_start,
            cycles=config.kl_cycles,
            ratio=config.kl_cycle_ratio,
            total_steps=self.max_train_steps,
            value=config.kl_constant,
        )
        self.kl_controller = (
            None
            if config.kl_target is None
            else KLTargetController(config.kl_target, kp=config.kl_target_kp, ki=config.kl_target_ki)
        )
        if model.config.is_rnnlm:
            for name in ("kl_target", "encoder_warmup_steps"):
                if getattr(config, name):
                    raise ValueError(f"{name} needs a latent variable, but this model is an RNNLM (latent_size=0)")
        self.current_kl_weight = 0.0
        from transformers import get_scheduler

        optimizer = build_optimizer(model, config)
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=config.num_warmup_steps,
            num_training_steps=self.max_train_steps,
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.state = TrainerState()
        self.weight_average = self._initial_weight_average()
        if self.rank > 0:
            # The decoder's dropout-style masks come from each process's own generator, which `set_seed` started
            # alike on every rank: give each rank its own stream (rank 0 keeps `seed`'s, so a one-process run is
            # unchanged), or equal-shaped shards would draw the same masks. A resume restores these states.
            torch.manual_seed(config.seed + 1_000_003 * self.rank)
        if self.resume_path is not None:
            # Our own state files, read with torch.load(weights_only=True) (not accelerator.load_state, which
            # unpickles registered objects such as the scheduler with weights_only=False).
            load_training_state(
                self.resume_path / TRAINING_STATE_DIR, self.optimizer, self.scheduler, accelerator.scaler, self.rank
            )
            self.state = TrainerState.load(self.resume_path / STATE_FILE)
            if self.kl_controller is not None and self.state.kl_controller:
                self.kl_controller.load_state_dict(self.state.kl_controller)
            accelerator.step = 0  # checkpoints are written on optimizer-step boundaries
            if accelerator.is_main_process:
                _truncate_metrics(self.metrics_path, self.state.global_step)
            logger.info(f"resumed from {self.resume_path} at step {self.state.global_step}")
        elif accelerator.is_main_process and self.metrics_path.exists():
            self.metrics_path.unlink()

    def _model_source(self) -> tuple[str | Path | None, str]:
        """Where the model's weights come from (a checkpoint, a pretrained model, or nowhere) and the flag naming it."""
        if self.resume_path is not None:
            return self.resume_path, "--resume_from_checkpoint"
        if self.config.model_name_or_path:
            return self.config.model_name_or_path, "--model_name_or_path"
        return None, ""

    def _model_overrides(self, model_config) -> dict[str, tuple[Any, Any]]:
        """The model flags that differ from the loaded model's config (name -> (old, new)); a `ValueError` naming
        each architecture flag among them: the weights fix the architecture."""
        changes = model_field_changes(self.config.model_overrides(), model_config)
        architecture = {name: change for name, change in changes.items() if name in ARCHITECTURE_FIELDS}
        if architecture:
            source, flag = self._model_source()
            raise ValueError(
                f"{flag} {str(source)!r} fixes the architecture, which these flags would change: "
                f"{describe_changes(architecture)}; drop them"
                + ("" if self.resume_path is not None else ", or train from scratch without --model_name_or_path")
            )
        return changes

    def _warn_about_changed_settings(self, model_changes: dict[str, tuple[Any, Any]]) -> None:
        """On resume: one warning naming every setting that differs from the checkpoint's run."""
        saved_file = self.resume_path / "training_config.json"
        changes = dict(model_changes)
        if saved_file.is_file():
            try:
                saved = json.loads(saved_file.read_text(encoding="utf-8"))
            except ValueError:
                saved = {}
            changes.update(setting_changes(saved, self.config.to_dict()))
        if changes:
            logger.warning(
                f"resuming from {self.resume_path} with settings that differ from its run: {describe_changes(changes)}"
            )

    def _initial_weight_average(self) -> list[torch.Tensor] | None:
        """The running weight average (`--ema_decay`): a copy of the weights, or a resumed checkpoint's average."""
        if self.config.ema_decay is None:
            return None
        params = list(self.accelerator.unwrap_model(self.model).parameters())
        saved = None if self.resume_path is None else self.resume_path / TRAINING_STATE_DIR / AVERAGE_FILE
        if saved is not None and saved.is_file():
            averages = safe_torch_load(saved)
            if len(averages) != len(params) or any(a.shape != p.shape for a, p in zip(averages, params)):
                raise CheckpointError(f"the weight average in {saved} does not match the model's parameters")
            return [a.to(p.device, p.dtype) for a, p in zip(averages, params)]
        if saved is not None:
            logger.warning(
                f"--ema_decay is set but {saved.parent} holds no weight average (trained without it): the average "
                "starts from the resumed weights"
            )
        return [p.detach().clone() for p in params]

    @contextmanager
    def _averaged_weights(self) -> Iterator[None]:
        """Within the block the model holds the weight average (a no-op without `--ema_decay`)."""
        if self.weight_average is None:
            yield
            return
        params = list(self.accelerator.unwrap_model(self.model).parameters())
        trained = [p.detach().clone() for p in params]
        _copy_into(params, self.weight_average)
        try:
            yield
        finally:
            _copy_into(params, trained)

    def _load_or_build_tokenizer(self, splits):
        from transformers import AutoTokenizer

        config, accelerator = self.config, self.accelerator
        if self.resume_path is not None:
            return load_tokenizer(self.resume_path, "--resume_from_checkpoint")
        if config.tokenizer_name_or_path:
            return load_tokenizer(config.tokenizer_name_or_path)
        if config.model_name_or_path:
            return load_tokenizer(config.model_name_or_path, "--model_name_or_path")
        folder = self.output_dir / "tokenizer"
        if accelerator.is_main_process:
            tokenizer = build_tokenizer(
                splits["train"]["text"],
                vocab_size=config.vocab_size,
                min_frequency=config.min_frequency,
                mode=config.text_mode,
                model_max_length=config.max_length,
            )
            tokenizer.save_pretrained(folder)
            logger.info(f"built a {len(tokenizer)}-entry vocabulary from the training split -> {folder}")
        accelerator.wait_for_everyone()
        return AutoTokenizer.from_pretrained(folder)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches; a batch smaller than the number of processes (the corpus's remainder)
        is dropped, since every process needs at least one sentence."""
        batches = bucketed_batches(self.train_corpus.lengths, self.global_batch, self.config.seed, epoch)
        return [b for b in batches if len(b) >= self.world]

    # ------------------------------------------------------------------ saving
    def _save_model_folder(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """Hub-ready folder (weights, config, custom code, tokenizer) written by the main process."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / "training_config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        if extra:
            (folder / "eval_results.json").write_text(json.dumps(extra, indent=2))

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-<step>` atomically: everything goes into a temporary folder (model, tokenizer, our
        weights_only-loadable training state, trainer state, then a manifest of sizes and SHA-256s), is fsynced,
        and the folder is renamed into place; only then are old checkpoints pruned."""
        accelerator = self.accelerator
        step = self.state.global_step
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
        if accelerator.is_main_process:
            for stale in [*self.output_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"), *self.output_dir.glob(".trash-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
            (tmp / TRAINING_STATE_DIR).mkdir(parents=True)
        accelerator.wait_for_everyone()
        with removed_on_failure(tmp):
            save_training_state(tmp / TRAINING_STATE_DIR, self.optimizer, self.scheduler, accelerator.scaler, self.rank)
        accelerator.wait_for_everyone()
        if self.kl_controller is not None:
            self.state.kl_controller = self.kl_controller.state_dict()
        if accelerator.is_main_process:
            with removed_on_failure(tmp):
                if self.weight_average is not None:
                    torch.save([a.cpu() for a in self.weight_average], tmp / TRAINING_STATE_DIR / AVERAGE_FILE)
                self._save_model_folder(tmp)  # the weights being trained; their average is in training_state/
                # Checked on their own when the manifest is missing (see checkpointing.checkpoint_problem).
                self.state.checksums = record_checksums(tmp)
                self.state.save(tmp / STATE_FILE)
                write_manifest(tmp)
                fsync_tree(tmp)
            replace_dir(tmp, final)
            self._prune_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        for old in list_checkpoints(self.output_dir)[:-limit] if limit > 0 else []:
            remove_dir(old)

    def _save_best(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        final, tmp = self.output_dir / "best", self.output_dir / ".tmp-best"
        if tmp.exists():
            shutil.rmtree(tmp)
        with self._averaged_weights(), removed_on_failure(tmp):
            self._save_model_folder(tmp, extra={"step": self.state.global_step, **metrics})
        replace_dir(tmp, final)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        accelerator = self.accelerator
        with self._averaged_weights():
            sums = evaluate_bound(
                accelerator.unwrap_model(self.model),
                self.corpora[split],
                self.config.per_device_eval_batch_size,
                seed=self.config.seed,
                rank=self.rank,
                world_size=self.world,
                device=accelerator.device,
            )
        if self.world > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        return bound_metrics(sums, split)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            _append_jsonl(self.metrics_path, record)
        if self.config.with_tracking:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    # ------------------------------------------------------------------ the loop
    def _train_step(self, indices: np.ndarray, micro_step: int) -> tuple[torch.Tensor | None, Any]:
        config, accelerator = self.config, self.accelerator
        width = int(self.train_corpus.lengths[indices].max())
        latent_noise, word_noise = step_noise(config.seed, micro_step, len(indices), self.latent_size, width)
        part = shard(indices, self.rank, self.world)
        batch = {k: v.to(accelerator.device) for k, v in self.train_corpus.batch(indices[part], pad_to=width).items()}
        if latent_noise is not None:
            latent_noise = latent_noise[part].to(accelerator.device)
        kl_weight = self.current_kl_weight = self.kl_weight(self.state.global_step)
        with accelerator.accumulate(self.model):
            out = self.model(
                **batch,
                kl_weight=kl_weight,
                free_bits=config.free_bits,
                return_logits=False,
                latent_noise=latent_noise,
                word_dropout_noise=word_noise[part].to(accelerator.device),
                return_dict=True,
            )
            # Each process averages over its share; rescale so DDP's mean of gradients is the global mean.
            loss = out.loss * (len(batch["input_ids"]) * self.world / len(indices))
            finite = torch.isfinite(loss.detach())
            if self.world > 1:
                finite = accelerator.reduce(finite.float(), reduction="sum") == self.world
            if not bool(finite):
                return None, out
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
                if self.weight_average is not None:
                    params = list(accelerator.unwrap_model(self.model).parameters())
                    update_weight_average(self.weight_average, params, config.ema_decay, self.state.global_step)
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), out

    def kl_weight(self, step: int) -> float:
        """The KL weight of optimizer step `step`: 0 during the encoder warm start, then the target-rate
        controller's weight (`kl_target`) or the schedule, counted from the end of the warm start."""
        warmup = self.config.encoder_warmup_steps
        if step < warmup:
            return 0.0
        if self.kl_controller is not None:
            return self.kl_controller.weight
        return self.kl_schedule(step - warmup)

    def _reinitialize_decoder(self) -> None:
        """The encoder warm start's second phase (Li et al., 2019): fresh decoder weights, their optimizer moments
        (and weight averages) dropped, the encoder kept."""
        model = self.accelerator.unwrap_model(self.model)
        model.reinitialize_decoder(seed=self.config.seed + 1)
        reset = {id(p) for module in model.decoder_modules() for p in module.parameters()}
        if model.config.tie_word_embeddings:
            reset.add(id(model.lm_head.bias))
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) in reset:
                    optimizer.state.pop(param, None)
        if self.weight_average is not None:
            for i, param in enumerate(model.parameters()):
                if id(param) in reset:
                    self.weight_average[i] = param.detach().clone().to(self.weight_average[i].dtype)
        self.state.decoder_reinitialized = True
        logger.info(
            f"encoder warm start: decoder re-initialised after {self.state.global_step} autoencoder steps; "
            "the KL term is on from here"
        )

    def _global_means(self, out, global_size: int) -> tuple[float, float, float]:
        """Loss, reconstruction and KL averaged over the whole global batch: each process holds the means over
        its own share, so with several processes they are weighted by share size and summed across processes."""
        local = torch.stack([out.loss.detach(), out.reconstruction_loss.detach(), out.kl.detach()]).double()
        if self.world == 1:
            return tuple(float(x) for x in local)
        share = len(out.kl_per_sentence)
        sums = self.accelerator.reduce((local * share).to(self.accelerator.device), reduction="sum").cpu()
        return tuple(float(x) / global_size for x in sums)

    def _handle_nonfinite(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        last = list_checkpoints(self.output_dir)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        step = self.state.global_step + 1  # the step being attempted, numbered as in the logs
        if self.config.on_nonfinite_loss == "skip":
            self.state.skipped_steps += 1
            logger.warning(
                f"non-finite loss at step {step}: batch skipped ({self.state.skipped_steps} so far); {where}"
            )
            return
        raise FloatingPointError(
            f"non-finite loss (NaN or inf) at step {step}; {where}. "
            "Lower the learning rate, clip gradients (--max_grad_norm), or pass --on_nonfinite_loss skip."
        )

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        config, accelerator, state = self.config, self.accelerator, self.state
        if config.with_tracking:
            accelerator.init_trackers(
                "sentence-vae", config={k: v for k, v in config.to_dict().items() if k != "extra"}
            )
        train_lengths = self.train_corpus.lengths
        epoch_batches = self._epoch_batches(state.epoch)
        logger.info(
            f"{len(self.train_corpus)} training sentences, {self.train_corpus.num_tokens} tokens; global batch "
            f"{self.global_batch}; {self.max_train_steps} steps; pad fraction "
            f"{pad_fraction(train_lengths, epoch_batches):.3f} (length-bucketed)"
        )
        eval_every = config.eval_steps or self.steps_per_epoch
        checkpoint_every = (
            None
            if config.checkpointing_steps is None
            else self.steps_per_epoch
            if str(config.checkpointing_steps) == "epoch"
            else int(config.checkpointing_steps)
        )
        has_validation = "validation" in self.corpora
        progress = tqdm(
            total=self.max_train_steps,
            initial=state.global_step,
            disable=config.disable_tqdm or not accelerator.is_local_main_process,
            desc="training",
        )
        window = state.window = state.window or _empty_window()
        window_start = time.perf_counter()
        stop = state.global_step >= self.max_train_steps
        ga = config.gradient_accumulation_steps
        step_kl = []  # the global-batch KL of each micro-step of the current optimizer step
        while not stop and state.epoch < self.num_epochs:
            epoch_batches = self._epoch_batches(state.epoch)
            usable = (len(epoch_batches) // ga) * ga
            while state.batch_in_epoch < usable:
                index = state.batch_in_epoch
                micro_step = state.epoch * usable + index
                if 0 < config.encoder_warmup_steps <= state.global_step and not state.decoder_reinitialized:
                    self._reinitialize_decoder()
                loss, out = self._train_step(epoch_batches[index], micro_step)
                state.batch_in_epoch += 1
                if loss is None:
                    self._handle_nonfinite()
                    continue
                loss_value, reconstruction_value, kl_value = self._global_means(out, len(epoch_batches[index]))
                window["loss"] += loss_value
                window["reconstruction"] += reconstruction_value
                window["kl"] += kl_value
                window["tokens"] += int(train_lengths[epoch_batches[index]].sum()) - len(epoch_batches[index])
                window["n"] += 1
                step_kl.append(kl_value)
                if not accelerator.sync_gradients:
                    continue
                if self.kl_controller is not None and state.global_step >= config.encoder_warmup_steps:
                    self.kl_controller.update(sum(step_kl) / len(step_kl))
                step_kl = []
                state.global_step += 1
                state.tokens_seen = state.tokens_seen + window["tokens"]
                progress.update(1)
                step = state.global_step
                if step % config.logging_steps == 0 or step == self.max_train_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": step,
                        "epoch": state.epoch + state.batch_in_epoch / max(usable, 1),
                        "loss": window["loss"] / window["n"],
                        "reconstruction": window["reconstruction"] / window["n"],
                        "kl": window["kl"] / window["n"],
                        "kl_weight": self.current_kl_weight,
                        "learning_rate": self.scheduler.get_last_lr()[0],
                        "tokens_per_second": window["tokens"] / max(elapsed, 1e-9),  # global-batch tokens
                    }
                    self._log(record)
                    progress.set_postfix(loss=f"{record['loss']:.2f}", kl=f"{record['kl']:.2f}")
                    window = state.window = _empty_window()
                    window_start = time.perf_counter()
                if has_validation and (step % eval_every == 0 or step == self.max_train_steps):
                    stop = self._evaluate_and_select(step) or stop
                if checkpoint_every and step % checkpoint_every == 0:
                    self.save_checkpoint()
                if step >= self.max_train_steps:
                    stop = True
                if stop:
                    break
            if state.batch_in_epoch >= usable:
                state.epoch += 1
                state.batch_in_epoch = 0
        progress.close()
        return self._finish(has_validation)

    def _evaluate_and_select(self, step: int) -> bool:
        """Evaluate on validation, keep the best folder, and tell whether early stopping triggers. Evaluations during
        the encoder warm start (an autoencoder whose decoder is then drawn afresh) are logged but not selectable."""
        state = self.state
        metrics = self.evaluate("validation")
        key = f"validation_{self.config.metric_for_best_model}"
        if step > self.config.encoder_warmup_steps:
            if metrics[key] < state.best_metric:
                state.best_metric, state.best_step = metrics[key], step
                state.evals_without_improvement = 0
                self._save_best(metrics)
            else:
                state.evals_without_improvement += 1
        self._log({"step": step, **metrics, f"best_{key}": state.best_metric})
        patience = self.config.early_stopping_patience
        if patience is not None and state.evals_without_improvement >= patience:
            logger.info(f"early stopping at step {step}: no improvement in {patience} evaluations")
            return True
        return False

    def _ended_in_warm_start(self) -> bool:
        """Whether the run stopped before the encoder warm start was over (no evaluation could select best/)."""
        return self.state.global_step <= self.config.encoder_warmup_steps

    def _training_failure(self, has_validation: bool) -> str | None:
        """Why the run produced no usable model (no optimizer step taken, every validation loss non-finite, or
        non-finite weights), or None."""
        state = self.state
        last = list_checkpoints(self.output_dir)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
        skipped = f"{state.skipped_steps} batch(es) with a non-finite loss were skipped"
        if state.global_step == 0:
            return f"the run trained nothing: no optimizer step was taken ({skipped}); lower the learning rate"
        if has_validation and state.best_step is None and not self._ended_in_warm_start():
            count = state.evals_without_improvement
            detail = f"all {count} evaluation(s) gave NaN or inf" if count else "no evaluation was reached"
            return (
                f"no finite validation loss was reached ({detail}), so no best model was kept ({skipped}); {where}; "
                "lower the learning rate"
            )
        params = self.accelerator.unwrap_model(self.model).parameters()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            return f"the trained weights are not finite (NaN or inf) ({skipped}); {where}; lower the learning rate"
        return None

    def _finish(self, has_validation: bool) -> dict[str, Any]:
        accelerator, state = self.accelerator, self.state
        accelerator.wait_for_everyone()
        failure = self._training_failure(has_validation)
        if failure is not None:
            raise FloatingPointError(failure)
        best = self.output_dir / "best"
        if not has_validation:
            self._save_best({})
        elif state.best_step is None and self._ended_in_warm_start():
            logger.warning(
                f"the run ended within the encoder warm start (step {state.global_step} of "
                f"{self.config.encoder_warmup_steps}): best/ holds the final weights, an autoencoder with a decoder that "
                "the warm start would have re-initialised"
            )
            self._save_best({})
        accelerator.wait_for_everyone()
        results: dict[str, Any] = {
            "global_step": state.global_step,
            "best_step": state.best_step,
            "metric_for_best_model": self.config.metric_for_best_model,
            f"best_validation_{self.config.metric_for_best_model}": (
                None if math.isinf(state.best_metric) else state.best_metric
            ),
            "skipped_steps": state.skipped_steps,
            "world_size": self.world,
            "truncated_lines": self.truncated,
        }
        # Final figures come from the selected (best) model, as in the paper's Table 2.
        if has_validation and best.is_dir():
            unwrapped = accelerator.unwrap_model(self.model)
            best_model = SentenceVAEModel.from_pretrained(best).to(accelerator.device)
            unwrapped.load_state_dict(best_model.state_dict())
            self.weight_average = None  # best/ already holds the averaged weights
        for split in ("train", "validation", "test"):
            if split in self.corpora and (split != "train" or self.config.evaluate_train_split):
                results.update(self.evaluate(split))
        if accelerator.is_main_process:
            (self.output_dir / "results.json").write_text(json.dumps(results, indent=2))
            if best.is_dir():
                (best / "eval_results.json").write_text(json.dumps(results, indent=2))
            plot_training(self.metrics_path, self.output_dir / "training_curves.png")
            if best.is_dir():
                self._finalize_best(best)
        if self.config.with_tracking:
            accelerator.end_training()
        if self.config.push_to_hub and accelerator.is_main_process:
            from .hub import push_folder

            push_folder(best, self.config.hub_model_id, token=self.config.hub_token, private=self.config.hub_private)
        accelerator.wait_for_everyone()
        return results

    def _finalize_best(self, best: Path) -> None:
        """Make `best/` Hub-ready: the run's metrics and curves, the pipeline file and the model card (README.md).
        The card is a convenience: a failure here only warns, the trained model is already saved."""
        try:
            for name in ("metrics.jsonl", "training_curves.png"):
                if (self.output_dir / name).is_file():
                    shutil.copy2(self.output_dir / name, best / name)
            from .hub import finalize_model_folder

            finalize_model_folder(best)
        except Exception as err:
            logger.warning(f"could not write the model card in {best}: {type(err).__name__}: {err}")


def train(config: TrainingConfig, accelerator=None) -> dict[str, Any]:
    """Train a sentence VAE (or RNNLM) as configured; returns the final metrics (also in `results.json`). The output
    folder is locked for the run (`checkpointing.OutputDirLock`): a second run on it fails at once."""
    trainer = Trainer(config, accelerator)
    try:
        return trainer.run()
    finally:
        trainer.close()
