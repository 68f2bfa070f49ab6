"""Training a sentence VAE with `transformers.Trainer`: the KL side of the objective as a plug-in.

A plain `transformers.Trainer` already trains the model (its `forward` scores its input without `labels`), but with
the KL term at full weight from the first step, which collapses the posterior (the paper's Section 3.1).
[`SentenceVAETrainer`] is a `transformers.Trainer` that takes a [`rate_control.RateControl`] (the KL schedules,
free bits, a target rate, the encoder warm start: the same objects and option names as `train_scripts/train.py`)
and hands every training forward its step's KL weight and free bits; word dropout follows the model config
(`word_keep_rate`) in training mode, as in `forward`. Everything else is `transformers.Trainer`'s own: data
collators, `TrainingArguments`, logging integrations, checkpoints, `push_to_hub`.

    from transformers import DataCollatorWithPadding, TrainingArguments
    from hf_sentence_vae.rate_control import KLSchedule, RateControl
    from hf_sentence_vae.training.transformers_trainer import SentenceVAETrainer

    trainer = SentenceVAETrainer(
        model=model,
        args=TrainingArguments(output_dir="runs/vae", per_device_train_batch_size=32, max_grad_norm=5.0),
        train_dataset=train,  # tokenized: input_ids, attention_mask
        eval_dataset=valid,
        data_collator=DataCollatorWithPadding(tokenizer),
        rate_control=RateControl(KLSchedule("linear", kl_warmup_steps=5000), free_bits=0.5),
    )
    trainer.train()

The logs gain the training window's mean `reconstruction_loss` and `kl` (nats per sentence) and the last
`kl_weight`. `evaluate` reports the negative ELBO per sentence (KL at full weight, no free bits, no word dropout) as
`eval_loss`, with `eval_reconstruction_loss` and `eval_kl`. The rate control's state (the target-rate controller,
whether the warm start's decoder re-initialisation has happened) is saved in each checkpoint's
`trainer_state.json` and read back when training resumes from it. Not here: aggressive encoder updates
(`--aggressive_encoder_steps`), the exponential moving average of the weights and the selection on the
importance-weighted bound, which `train_scripts/train.py` has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from ..rate_control import KLSchedule, RateControl
from .trainer import restart_decoder

# The metrics `compute_loss` gathers over each logging window (nats per sentence).
WINDOW_METRICS = ("reconstruction_loss", "kl")


class RateControlCallback(TrainerCallback, ExportableState):
    """The step-level side of [`SentenceVAETrainer`]'s rate control: before an optimizer step, the encoder warm
    start's decoder re-initialisation when it is due; after it, the step's mean KL fed to the target-rate
    controller. Its state goes into checkpoints (`ExportableState`) and is read back on resuming."""

    def __init__(
        self, rate_control: RateControl, seed: int = 0, mean: Callable[[list[float]], list[float]] | None = None
    ):
        self.rate_control = rate_control
        self.seed = seed
        # The mean over the processes of a few numbers (the step's KL), so that every process's controller sees the
        # same KL and sets the same weight.
        self.mean = mean if mean is not None else (lambda values: values)
        self.decoder_reinitialized = False
        self.step_kls: list[float] = []

    def state(self) -> dict[str, Any]:
        return {
            "args": {},
            "attributes": {
                "decoder_reinitialized": self.decoder_reinitialized,
                "controller": self.rate_control.state_dict(),
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        # On resuming, `state` is the checkpoint's (its `stateful_callbacks` hold what `state()` gave at saving).
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):
            attributes = saved.get("attributes", {})
            self.decoder_reinitialized = bool(attributes.get("decoder_reinitialized", False))
            self.rate_control.load_state_dict(attributes.get("controller", {}))
        self.step_kls = []

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.rate_control.reinitialization_due(state.global_step, self.decoder_reinitialized):
            restart_decoder(model, optimizer, seed=self.seed + 1)
            self.decoder_reinitialized = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_kls:
            (kl,) = self.mean([sum(self.step_kls) / len(self.step_kls)])
            self.rate_control.observe(state.global_step - 1, kl)
        self.step_kls = []


class SentenceVAETrainer(Trainer):
    """`transformers.Trainer` for a `SentenceVAEModel`, with the KL weight of each training step from `rate_control`
    (default: the paper's sigmoid annealing, `KLSchedule()`); see the module docstring. Every other argument is
    `transformers.Trainer`'s."""

    def __init__(self, *args, rate_control: RateControl | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_control = RateControl(KLSchedule()) if rate_control is None else rate_control
        self.rate_callback = RateControlCallback(self.rate_control, seed=self.args.seed, mean=self._mean_over_processes)
        self.add_callback(self.rate_callback)
        self._window = dict.fromkeys(WINDOW_METRICS, 0.0)
        self._window_batches = 0
        self._last_kl_weight = self.rate_control.kl_weight(0)
        self._eval_sums = torch.zeros(3, dtype=torch.float64)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss at this step's KL weight and free bits (in training), or the negative ELBO (in
        evaluation: weight 1, no free bits)."""
        training = model.training
        if training:
            kl_weight = self._last_kl_weight = self.rate_control.kl_weight(self.state.global_step)
            free_bits = self.rate_control.free_bits
        else:
            kl_weight, free_bits = 1.0, 0.0
        outputs = model(**inputs, kl_weight=kl_weight, free_bits=free_bits, return_logits=False, return_dict=True)
        if not training:
            size = inputs["input_ids"].shape[0]
            parts = [float(outputs.reconstruction_loss) * size, float(outputs.kl) * size, size]
            self._eval_sums += torch.tensor(parts, dtype=torch.float64, device=self._eval_sums.device)
        else:
            kl = float(outputs.kl.detach())
            self.rate_callback.step_kls.append(kl)
            self._window["kl"] += kl
            self._window["reconstruction_loss"] += float(outputs.reconstruction_loss.detach())
            self._window_batches += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The evaluation loss alone (the model's logits are never gathered)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        """`transformers.Trainer.evaluation_loop`, its metrics joined by the mean reconstruction loss and KL per
        sentence (`<prefix>_reconstruction_loss`, `<prefix>_kl`)."""
        self._eval_sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        sums = self.accelerator.reduce(self._eval_sums, reduction="sum")
        if float(sums[2]) > 0:
            output.metrics[f"{metric_key_prefix}_reconstruction_loss"] = float(sums[0] / sums[2])
            output.metrics[f"{metric_key_prefix}_kl"] = float(sums[1] / sums[2])
        return output

    def _mean_over_processes(self, values: list[float]) -> list[float]:
        if self.args.world_size == 1:
            return values
        local = torch.tensor(values, dtype=torch.float64, device=self.args.device)
        return self.accelerator.reduce(local, reduction="mean").tolist()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs gain the window's mean `reconstruction_loss` and `kl`, and the last `kl_weight`."""
        if "loss" in logs and self._window_batches:
            means = self._mean_over_processes([value / self._window_batches for value in self._window.values()])
            logs.update(zip(self._window, means))
            logs["kl_weight"] = self._last_kl_weight
            self._window = dict.fromkeys(WINDOW_METRICS, 0.0)
            self._window_batches = 0
        super().log(logs, start_time)


__all__ = ["RateControlCallback", "SentenceVAETrainer"]
