"""Training a sentence VAE (or its RNNLM baseline) with Accelerate: `train(TrainingConfig(...))`.

- `trainer`: the set-up ([`Trainer`]) and the loop ([`train`]);
- `checkpointing`: the `checkpoint-<step>` folders, written atomically, verified and resumed from;
- `evaluation`: the validation bound during training;
- `logs`: `metrics.jsonl`, trackers and the training curves;
- `weight_average`: `--ema_decay`.

The options are `hf_sentence_vae.training_args.TrainingConfig`, the KL weight's control `hf_sentence_vae.rate_control`.
"""

from ..training_args import (
    ARCHITECTURE_FIELDS,
    BEST_MODEL_METRICS,
    LR_SCHEDULERS,
    MODEL_FIELDS,
    OPERATIONAL_FIELDS,
    OPTIMIZERS,
    TRACKERS,
    TrainingConfig,
    describe_changes,
    model_field_changes,
    setting_changes,
)
from .checkpointing import (
    AVERAGE_FILE,
    CHECKPOINT_PREFIX,
    STATE_FILE,
    TrainerState,
    list_checkpoints,
    resolve_checkpoint,
)
from .evaluation import bound_metrics, evaluate_bound
from .logs import check_trackers, plot_training
from .trainer import (
    READABLE_NUM_BEAMS,
    Trainer,
    build_optimizer,
    readable_generation_config,
    shard,
    step_noise,
    train,
)
from .weight_average import update_weight_average

__all__ = [
    "ARCHITECTURE_FIELDS",
    "AVERAGE_FILE",
    "BEST_MODEL_METRICS",
    "CHECKPOINT_PREFIX",
    "LR_SCHEDULERS",
    "MODEL_FIELDS",
    "OPERATIONAL_FIELDS",
    "OPTIMIZERS",
    "READABLE_NUM_BEAMS",
    "STATE_FILE",
    "TRACKERS",
    "Trainer",
    "TrainerState",
    "TrainingConfig",
    "bound_metrics",
    "build_optimizer",
    "check_trackers",
    "describe_changes",
    "evaluate_bound",
    "list_checkpoints",
    "model_field_changes",
    "plot_training",
    "readable_generation_config",
    "resolve_checkpoint",
    "setting_changes",
    "shard",
    "step_noise",
    "train",
    "update_weight_average",
]
