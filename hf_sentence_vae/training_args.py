"""The options of a training run: [`TrainingConfig`], one field per `--flag` of `train_scripts/train.py`.

The model's settings are not declared here: `TrainingConfig` gets one optional field per `SentenceVAEConfig`
setting (`SentenceVAEConfig.settings()`), with the config's own documentation as its help and its allowed values as
its choices, so a setting has one name and one description from the command line to `config.json`. The KL schedule's
options take their defaults from `rate_control.KLSchedule`, whose fields they are.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from typing import Any

from transformers import SchedulerType

from .configuration_sentence_vae import ARCHITECTURE_FIELDS, FIELD_CHOICES, SentenceVAEConfig
from .rate_control import SCHEDULES, KLSchedule
from .tokenization_sentence_vae_fast import TEXT_MODES

# The model settings, each a training option of the same name.
MODEL_FIELDS = SentenceVAEConfig.settings()
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
)
OPTIMIZERS = ("adam", "adamw", "sgd")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
ON_NONFINITE_LOSS = ("error", "skip")
# Validation figures the best model can be selected on (lower is better): the bound, or its reconstruction term
# (for runs whose KL is held at a target, where the bound also measures the target).
BEST_MODEL_METRICS = ("loss", "reconstruction")
LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType)
TRACKERS = ("all", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "aim", "swanlab")


def _option(default: Any, help: str, choices: tuple | list | None = None) -> Any:  # noqa: A002
    """A `TrainingConfig` field with its `--flag` help (and allowed values), as `HfArgumentParser` reads them."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    return field(default=default, metadata=metadata)


def _documented_fields(docstring: str) -> dict[str, str]:
    """Field name -> its description, from the `Args:` section of a `transformers`-style docstring (entries
    `name (`type`): text`, continued on more deeply indented lines)."""
    entries: dict[str, str] = {}
    name = None
    for line in docstring.split("Args:", 1)[-1].splitlines():
        match = re.match(r"^\s{4,8}(\w+) \(`[^`]+`\): (.*)$", line)
        if match:
            name, text = match.groups()
            entries[name] = text.strip()
        elif name and line.strip() and len(line) - len(line.lstrip()) > 8:
            entries[name] += " " + line.strip()
        elif not line.strip() and name:
            name = None
    return entries


def _with_model_settings(cls: type) -> type:
    """Make `cls` a dataclass with one optional field per `SentenceVAEConfig` setting after `model_name_or_path`:
    unset (None) keeps the config's default, which the help names."""
    docs = _documented_fields(SentenceVAEConfig.__doc__ or "")
    annotations: dict[str, Any] = {}
    for name, annotation in cls.__annotations__.items():
        annotations[name] = annotation
        if name != "model_name_or_path":
            continue
        for setting in MODEL_FIELDS:
            kind = SentenceVAEConfig.__annotations__[setting]
            annotations[setting] = f"{kind if isinstance(kind, str) else kind.__name__} | None"
            default = getattr(SentenceVAEConfig, setting)
            help_text = f"{docs.get(setting, setting)} (unset: the SentenceVAEConfig default, {default!r})"
            setattr(cls, setting, _option(None, help_text, FIELD_CHOICES.get(setting)))
    cls.__annotations__ = annotations
    return dataclasses.dataclass(cls)


def check_license_id(license: str) -> str:  # noqa: A002
    """`license` if it reads as a Hub license identifier (lower case: `apache-2.0`, `mit`, `cc-by-4.0`, `other`, ...);
    else a `ValueError`."""
    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise ValueError(
            f"license {license!r} is not a Hub license identifier (lower case, e.g. apache-2.0, mit, cc-by-4.0, other)"
        )
    return license


@_with_model_settings
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
        TEXT_MODES,
    )
    preprocessing_num_workers: int | None = _option(None, "processes for tokenizing with datasets.map")
    cache_dir: str | None = _option(None, "the datasets cache folder (unset: the datasets default)")
    model_name_or_path: str | None = _option(None, "start from this saved model (fine-tuning) instead of a new one")
    # model: one optional field per SentenceVAEConfig setting, inserted here by `_with_model_settings`
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
        "no", "mixed precision: the autocast dtype (no: float32 throughout)", MIXED_PRECISIONS
    )
    seed: int = _option(42, "seed of the batches, the posterior noise and word dropout, and the initialisation")
    # objective
    kl_schedule: str = _option(KLSchedule.kl_schedule, "KL weight schedule (annealing)", SCHEDULES)
    kl_sigmoid_slope: float = _option(KLSchedule.kl_sigmoid_slope, "sigmoid schedule: slope (per step)")
    kl_sigmoid_midpoint: float = _option(
        KLSchedule.kl_sigmoid_midpoint, "sigmoid schedule: step at which the weight is 0.5"
    )
    kl_warmup_steps: int = _option(KLSchedule.kl_warmup_steps, "linear schedule: steps to reach weight 1")
    kl_start: float = _option(KLSchedule.kl_start, "linear schedule: weight at step 0")
    kl_cycles: int = _option(KLSchedule.kl_cycles, "cyclical schedule: number of cycles over the run")
    kl_cycle_ratio: float = _option(
        KLSchedule.kl_cycle_ratio, "cyclical schedule: fraction of each cycle spent rising to 1"
    )
    kl_constant: float = _option(KLSchedule.kl_constant, "constant schedule: the weight")
    free_bits: float = _option(0.0, "minimum KL per latent dimension in the loss (nats, batch-averaged); 0: off")
    kl_target: float | None = _option(
        None, "hold the KL at this many nats per sentence with a PI controller of the weight (none: use the schedule)"
    )
    kl_target_kp: float = _option(0.01, "--kl_target controller: proportional gain")
    kl_target_ki: float = _option(1e-4, "--kl_target controller: integral gain")
    encoder_warmup_steps: int = _option(
        0, "train as an autoencoder (KL weight 0) for this many steps, then re-initialise the decoder; 0: off"
    )
    aggressive_encoder_steps: int = _option(
        0,
        "aggressive inference-network training (He et al. 2019): before each step, at most this many encoder-only "
        "updates (fewer once their loss stops falling), and that step updates the decoder only, until the validation "
        "mutual information stops rising; 0: off (He et al. use 100)",
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
        "error", "a NaN or infinite loss stops the run, or skips the batch", ON_NONFINITE_LOSS
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
    latent_report: bool = _option(
        True,
        "at the end, measure how much of a sentence the selected VAE's code carries (KL, mutual information, active "
        "units, reconstruction BLEU, homotopies) on the test split (else validation): best/latent_report.json, shown "
        "on the model card",
    )
    num_threads: int | None = _option(None, "torch threads per process (1 is safest on a busy machine)")

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.on_nonfinite_loss not in ON_NONFINITE_LOSS:
            raise ValueError(f"on_nonfinite_loss must be 'error' or 'skip', got {self.on_nonfinite_loss!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
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
        if self.aggressive_encoder_steps < 0:
            raise ValueError(f"aggressive_encoder_steps must be >= 0, got {self.aggressive_encoder_steps}")
        if self.aggressive_encoder_steps and self.gradient_accumulation_steps > 1:
            raise ValueError(
                f"aggressive_encoder_steps={self.aggressive_encoder_steps} takes one batch per encoder update; it "
                f"cannot be combined with gradient_accumulation_steps={self.gradient_accumulation_steps}"
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.license is not None:
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
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if not self.train_file and not self.dataset_name:
            raise ValueError("give --train_file (and --validation_file) or --dataset_name")

    def model_overrides(self) -> dict[str, Any]:
        """The model settings given (not None): keyword arguments of `SentenceVAEConfig`."""
        return {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}

    def kl_schedule_options(self) -> dict[str, Any]:
        """The options of the KL-weight schedule: keyword arguments of `rate_control.KLSchedule`."""
        return {name: getattr(self, name) for name in KLSchedule.options()}

    def to_dict(self) -> dict[str, Any]:
        """Every option (the Hub token left out), as `training_config.json` records them."""
        data = dataclasses.asdict(self)
        data.pop("hub_token", None)
        return data

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option's default value."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


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


__all__ = [
    "ARCHITECTURE_FIELDS",
    "BEST_MODEL_METRICS",
    "MODEL_FIELDS",
    "OPERATIONAL_FIELDS",
    "TrainingConfig",
    "check_license_id",
    "describe_changes",
    "model_field_changes",
    "setting_changes",
]
