"""The Accelerate training loop for the sentence VAE (and its RNNLM baseline).

`train(TrainingConfig(...))` runs the same way under `python`, `accelerate launch` on one or several CPU
processes (gloo) or GPUs. The randomness of each step (the posterior noise and word dropout) is drawn for
the whole global batch from a generator seeded by (seed, step) and then split across processes, so a run
gives the same results whether or not it was resumed and, without the decoder's dropout-style regularisers
(`dropout`, `embedding_dropout`, `decoder_weight_drop`), whatever the number of processes: their masks come
from each process's own torch generator, seeded per rank (and saved in checkpoints, so resuming stays exact).

[`Trainer`] sets a run up (the output folder's lock, data, tokenizer, model, optimizer, a resumed checkpoint);
`Trainer.run` is the loop, read top to bottom: for each batch, the step's KL weight (`rate_control`), the training
step, the running record (`logs`), then on their schedules an evaluation (`evaluation`, keeping the best model)
and a checkpoint (`checkpointing`); at the end the final figures, the curves, the model card and the push (`hub`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.utils import logging

from .. import hub
from ..configuration_sentence_vae import SentenceVAEConfig, architecture_changes
from ..data import TokenizedCorpus, bucketed_batches, load_text_splits, pad_fraction, tokenize_splits
from ..files import OutputDirLock, removed_on_failure, replace_dir
from ..loading import CheckpointError, check_pretrained_folder, load_model_config, load_pretrained_model, load_tokenizer
from ..modeling_sentence_vae import SentenceVAEModel
from ..rate_control import KLSchedule, RateControl
from ..tokenization_sentence_vae_fast import build_tokenizer, check_tokenizer_matches_model
from ..training_args import TrainingConfig, describe_changes, model_field_changes, setting_changes
from .checkpointing import (
    AVERAGE_FILE,
    STATE_FILE,
    TRAINING_STATE_DIR,
    TrainerState,
    checkpoint_folders,
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    remove_stale_folders,
    resolve_checkpoint,
    safe_torch_load,
    save_training_state,
    seal_checkpoint,
)
from .evaluation import bound_metrics, evaluate_bound
from .logs import (
    CURVES_FILE,
    METRICS_FILE,
    append_record,
    check_trackers,
    empty_window,
    plot_training,
    truncate_records,
)
from .weight_average import WeightAverage

logger = logging.get_logger(__name__)

READABLE_NUM_BEAMS = 5  # the beam width trained models decode with by default (`readable_generation_config`)
# Aggressive training's encoder-only updates stop early when the summed loss of this many updates is no lower than
# that of the previous as many (He et al., 2019, check every 15 updates).
AGGRESSIVE_WINDOW = 15
TRACKING_PROJECT = "sentence-vae"


# --------------------------------------------------------------------------- pure helpers
def readable_generation_config(model_config: SentenceVAEConfig, unk_in_corpus: bool) -> GenerationConfig:
    """The decoding defaults a trained model saves in `generation_config.json`, which `generate`, the pipeline, the
    scripts and the model card use: beam search with `READABLE_NUM_BEAMS` beams for a VAE (the paper's greedy
    decodes of prior samples read "he / he was to the / a of the of the"; 5 beams read "he had a good deal in the
    room"), ancestral sampling for the RNNLM (without a latent code every greedy or beam decode is the same
    sentence), and `<unk>` suppressed when the tokenized training text holds it (PTB's literal `<unk>`, or words
    outside the vocabulary): a model that learned `<unk>` as a frequent word generates it."""
    config = GenerationConfig.from_model_config(model_config)
    if model_config.is_rnnlm:
        config.do_sample = True
    else:
        config.num_beams = READABLE_NUM_BEAMS
    if unk_in_corpus:
        config.suppress_tokens = [model_config.unk_token_id]
    return config


def _sets_decoding(config: GenerationConfig | None) -> bool:
    """Whether a loaded model's generation config already chooses how to decode (then training keeps it)."""
    return config is not None and any(
        getattr(config, name, None) is not None for name in ("num_beams", "do_sample", "suppress_tokens")
    )


def step_noise(
    seed: int, micro_step: int, batch_size: int, latent_size: int, width: int, sub_step: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The randomness of one micro-step for the whole global batch: posterior noise `(B, Z)` and word-dropout
    uniforms `(B, width)`, a pure function of (seed, micro_step), and of `sub_step` for the encoder-only updates
    that aggressive training takes before a step (`sub_step` 1, 2, ...; 0 is the step itself)."""
    if sub_step:
        key = np.random.SeedSequence([seed, micro_step, sub_step]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(key) >> 1)
    else:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + micro_step)
    latent = torch.randn((batch_size, latent_size), generator=generator) if latent_size else None
    words = torch.rand((batch_size, width), generator=generator)
    return latent, words


def shard(indices: np.ndarray, rank: int, world_size: int) -> slice:
    """The contiguous slice of a global batch that process `rank` trains on."""
    bounds = np.linspace(0, len(indices), world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer `--optimizer` names over the trainable parameters (Adam and AdamW as the fused kernel: one op
    for the whole update instead of ~15 per parameter group, 1.07-1.24x faster training steps on CPU, the same
    update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return cls(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None)


def build_rate_control(config: TrainingConfig, total_steps: int) -> RateControl:
    """The run's rate control: its KL schedule, free bits, KL target and encoder warm start."""
    return RateControl(
        KLSchedule(**config.kl_schedule_options(), total_steps=total_steps),
        free_bits=config.free_bits,
        kl_target=config.kl_target,
        kl_target_kp=config.kl_target_kp,
        kl_target_ki=config.kl_target_ki,
        encoder_warmup_steps=config.encoder_warmup_steps,
    )


def restart_decoder(model: SentenceVAEModel, optimizer: torch.optim.Optimizer, seed: int) -> set[int]:
    """The encoder warm start's second phase (Li et al., 2019): the decoder's weights drawn afresh
    (`model.reinitialize_decoder(seed)`) and their optimizer moments dropped (`optimizer` may be wrapped, as by
    Accelerate), the encoder's kept. Returns the `id`s of the parameters reset."""
    model.reinitialize_decoder(seed=seed)
    reset = {id(p) for module in model.decoder_modules() for p in module.parameters()}
    if model.config.tie_word_embeddings:
        reset.add(id(model.lm_head.bias))
    optimizer = getattr(optimizer, "optimizer", optimizer)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) in reset:
                optimizer.state.pop(param, None)
    return reset


# --------------------------------------------------------------------------- the run
class Trainer:
    """One run's objects, set up on construction; `run()` trains, evaluates, checkpoints and returns the final
    metrics. The output folder is locked from construction to `close()`."""

    def __init__(self, config: TrainingConfig, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        if config.with_tracking:
            check_trackers(config.report_to)
        if config.push_to_hub:  # before any work: a push that cannot succeed is found out now, not after training
            hub.preflight(config.hub_model_id, config.hub_token, what=f"the model trained in {config.output_dir}")
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
            self.metrics_path = self.output_dir / METRICS_FILE
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

    # ------------------------------------------------------------------ set-up
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

        model = self._load_or_build_model(source, flag)
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
        self.rate_control = build_rate_control(config, self.max_train_steps)
        if model.config.is_rnnlm:
            for name in ("kl_target", "encoder_warmup_steps", "aggressive_encoder_steps"):
                if getattr(config, name):
                    raise ValueError(f"{name} needs a latent variable, but this model is an RNNLM (latent_size=0)")
        if config.aggressive_encoder_steps and "validation" not in self.corpora:
            raise ValueError(
                "aggressive_encoder_steps needs a validation split: its phase ends when the validation mutual "
                "information stops rising"
            )
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
            self.rate_control.load_state_dict(self.state.kl_controller)
            accelerator.step = 0  # checkpoints are written on optimizer-step boundaries
            if accelerator.is_main_process:
                truncate_records(self.metrics_path, self.state.global_step)
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

    def _load_or_build_model(self, source, flag: str) -> SentenceVAEModel:
        """The model of `source` (its non-architecture settings overridden by the flags), or a new one."""
        config = self.config
        if source is not None:
            model = load_pretrained_model(SentenceVAEModel, source, flag)
            changes = self._model_overrides(model.config)
            for name, (_, value) in changes.items():
                setattr(model.config, name, value)  # e.g. a different word keep rate for fine-tuning
            model.config.validate()
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
        return model

    def _model_overrides(self, model_config) -> dict[str, tuple[Any, Any]]:
        """The model flags that differ from the loaded model's config (name -> (old, new)); a `ValueError` naming
        each architecture flag among them: the weights fix the architecture."""
        changes = model_field_changes(self.config.model_overrides(), model_config)
        architecture = architecture_changes(changes)
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

    def _initial_weight_average(self) -> WeightAverage | None:
        """The running weight average (`--ema_decay`): a copy of the weights, or a resumed checkpoint's average."""
        if self.config.ema_decay is None:
            return None
        model = self.accelerator.unwrap_model(self.model)
        params = list(model.parameters())
        saved = None if self.resume_path is None else self.resume_path / TRAINING_STATE_DIR / AVERAGE_FILE
        if saved is not None and saved.is_file():
            averages = safe_torch_load(saved)
            if len(averages) != len(params) or any(a.shape != p.shape for a, p in zip(averages, params)):
                raise CheckpointError(f"the weight average in {saved} does not match the model's parameters")
            return WeightAverage(
                model, self.config.ema_decay, [a.to(p.device, p.dtype) for a, p in zip(averages, params)]
            )
        if saved is not None:
            logger.warning(
                f"--ema_decay is set but {saved.parent} holds no weight average (trained without it): the average "
                "starts from the resumed weights"
            )
        return WeightAverage(model, self.config.ema_decay, [p.detach().clone() for p in params])

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

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        config, accelerator, state = self.config, self.accelerator, self.state
        if config.with_tracking:
            accelerator.init_trackers(TRACKING_PROJECT, config=config.to_dict())
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
        window = state.window = state.window or empty_window()
        window_start = time.perf_counter()
        stop = state.global_step >= self.max_train_steps
        ga = config.gradient_accumulation_steps
        step_kl = []  # the global-batch KL of each micro-step of the current optimizer step
        while not stop and state.epoch < self.num_epochs:
            epoch_batches = self._epoch_batches(state.epoch)
            usable = (len(epoch_batches) // ga) * ga
            while state.batch_in_epoch < usable:
                index = state.batch_in_epoch
                batch = epoch_batches[index]
                if self.rate_control.reinitialization_due(state.global_step, state.decoder_reinitialized):
                    self._reinitialize_decoder()
                micro_step = state.epoch * usable + index
                aggressive = self.aggressive_phase()
                if aggressive:  # the inference network catches up first; the step then trains the decoder alone
                    encoder_updates = self._encoder_updates(epoch_batches, micro_step)
                    window["encoder_steps"] = window.get("encoder_steps", 0) + encoder_updates
                # One micro-step: forward and backward; the optimizer steps every `ga` of them.
                loss, out = self._train_step(batch, micro_step=micro_step, decoder_only=aggressive)
                state.batch_in_epoch += 1
                if loss is None:
                    self._handle_nonfinite()
                    continue
                loss_value, reconstruction_value, kl_value, *bag_of_words = self._global_means(out, len(batch))
                if bag_of_words:
                    window["bag_of_words"] = window.get("bag_of_words", 0.0) + bag_of_words[0]
                window["loss"] += loss_value
                window["reconstruction"] += reconstruction_value
                window["kl"] += kl_value
                window["tokens"] += int(train_lengths[batch].sum()) - len(batch)
                window["n"] += 1
                step_kl.append(kl_value)
                if not accelerator.sync_gradients:
                    continue
                # An optimizer step was taken.
                self.rate_control.observe(state.global_step, sum(step_kl) / len(step_kl))
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
                    if "bag_of_words" in window:  # the bag-of-words loss (unweighted; in `loss` weighted)
                        record["bag_of_words"] = window["bag_of_words"] / window["n"]
                    if config.aggressive_encoder_steps:  # encoder-only updates per step (0 once the phase ends)
                        record["encoder_steps"] = window.get("encoder_steps", 0) / window["n"]
                    self._log(record)
                    progress.set_postfix(loss=f"{record['loss']:.2f}", kl=f"{record['kl']:.2f}")
                    window = state.window = empty_window()
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

    def _forward(self, indices: np.ndarray, micro_step: int, sub_step: int = 0) -> tuple[torch.Tensor | None, Any]:
        """The forward pass of this process's share of the global batch `indices`, with the step's noise
        (`step_noise`). Returns the loss to backpropagate (rescaled so that DDP's mean of gradients is the global
        mean; None when it is not finite on some process) and the model output."""
        config, accelerator = self.config, self.accelerator
        width = int(self.train_corpus.lengths[indices].max())
        latent_noise, word_noise = step_noise(
            config.seed, micro_step, len(indices), self.latent_size, width, sub_step=sub_step
        )
        part = shard(indices, self.rank, self.world)
        batch = {k: v.to(accelerator.device) for k, v in self.train_corpus.batch(indices[part], pad_to=width).items()}
        if latent_noise is not None:
            latent_noise = latent_noise[part].to(accelerator.device)
        kl_weight = self.current_kl_weight = self.rate_control.kl_weight(self.state.global_step)
        out = self.model(
            **batch,
            kl_weight=kl_weight,
            free_bits=self.rate_control.free_bits,
            return_logits=False,
            latent_noise=latent_noise,
            word_dropout_noise=word_noise[part].to(accelerator.device),
            return_dict=True,
        )
        loss = out.loss * (len(batch["input_ids"]) * self.world / len(indices))
        finite = torch.isfinite(loss.detach())
        if self.world > 1:
            finite = accelerator.reduce(finite.float(), reduction="sum") == self.world
        return (loss if bool(finite) else None), out

    def _train_step(
        self, indices: np.ndarray, micro_step: int, decoder_only: bool = False
    ) -> tuple[torch.Tensor | None, Any]:
        """Forward and backward of one micro-batch (this process's share of the global batch `indices`), and, at
        the end of a gradient accumulation, the optimizer and scheduler steps and the weight average. Returns the
        loss (None when it is not finite on some process: nothing is updated) and the model output. `decoder_only`
        (aggressive training's phase): the inference network's parameters are left as they are."""
        config, accelerator = self.config, self.accelerator
        with accelerator.accumulate(self.model):
            loss, out = self._forward(indices, micro_step)
            if loss is None:
                return None, out
            accelerator.backward(loss)
            if decoder_only:
                self._drop_gradients(self._inference_parameters())
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
                if self.weight_average is not None:
                    self.weight_average.update(self.state.global_step)
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), out

    # ------------------------------------------------------------------ aggressive training (He et al., 2019)
    def aggressive_phase(self) -> bool:
        """Whether the next step belongs to aggressive training's phase: `--aggressive_encoder_steps` set, the
        encoder warm start over, and the validation mutual information still rising."""
        return (
            self.config.aggressive_encoder_steps > 0
            and not self.state.aggressive_ended
            and self.state.global_step >= self.config.encoder_warmup_steps
        )

    def _inference_parameters(self) -> list[torch.nn.Parameter]:
        return self.accelerator.unwrap_model(self.model).inference_parameters()

    @staticmethod
    def _drop_gradients(params) -> None:
        """Set these parameters' gradients to None: the optimizer then leaves them (and their moments) as they are."""
        for param in params:
            param.grad = None

    def _encoder_updates(self, epoch_batches: list[np.ndarray], micro_step: int) -> int:
        """Aggressive training's inner loop (He et al., 2019): up to `--aggressive_encoder_steps` updates of the
        inference network alone (q(z | x): `SentenceVAEModel.inference_parameters`), each on a batch of the epoch
        drawn at random, with the step's KL weight; they stop early when the summed loss of `AGGRESSIVE_WINDOW`
        updates is no lower than that of the previous as many. The batches and noise are pure functions of (seed,
        micro_step), so a resumed run draws the same. Returns the number of updates taken."""
        config, accelerator = self.config, self.accelerator
        inference = {id(p) for p in self._inference_parameters()}
        generative = [p for p in self.model.parameters() if id(p) not in inference]
        rng = np.random.default_rng([config.seed, micro_step])
        previous, current = math.inf, 0.0
        taken = 0
        for sub_step in range(1, config.aggressive_encoder_steps + 1):
            indices = epoch_batches[int(rng.integers(len(epoch_batches)))]
            loss, out = self._forward(indices, micro_step, sub_step=sub_step)
            if loss is None:  # a non-finite loss: no update, and the inner loop ends here
                self.optimizer.zero_grad(set_to_none=True)
                break
            accelerator.backward(loss)
            self._drop_gradients(generative)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            taken += 1
            current += self._global_means(out, len(indices))[0]
            if sub_step % AGGRESSIVE_WINDOW == 0:
                if current >= previous:
                    break
                previous, current = current, 0.0
        return taken

    def _update_aggressive_phase(self, metrics: dict[str, float], step: int) -> None:
        """At an evaluation within the aggressive phase: it goes on while the validation mutual information rises,
        and ends at the first evaluation where it does not (He et al., 2019)."""
        state, mi = self.state, metrics["validation_mi"]
        if state.aggressive_best_mi is None or mi > state.aggressive_best_mi:
            state.aggressive_best_mi = mi
            return
        state.aggressive_ended = True
        logger.info(
            f"aggressive training ends at step {step}: validation mutual information {mi:.3f} nats, not above "
            f"{state.aggressive_best_mi:.3f}; from here encoder and decoder train together"
        )

    def kl_weight(self, step: int) -> float:
        """The KL weight of optimizer step `step` (see `rate_control.RateControl.kl_weight`)."""
        return self.rate_control.kl_weight(step)

    def _reinitialize_decoder(self) -> None:
        """The encoder warm start's second phase (Li et al., 2019): fresh decoder weights, their optimizer moments
        (and weight averages) dropped, the encoder kept."""
        reset = restart_decoder(self.accelerator.unwrap_model(self.model), self.optimizer, seed=self.config.seed + 1)
        if self.weight_average is not None:
            self.weight_average.restart(reset)
        self.state.decoder_reinitialized = True
        logger.info(
            f"encoder warm start: decoder re-initialised after {self.state.global_step} autoencoder steps; "
            "the KL term is on from here"
        )

    def _global_means(self, out, global_size: int) -> tuple[float, ...]:
        """Loss, reconstruction and KL (and the bag-of-words loss when the model has it) averaged over the whole
        global batch: each process holds the means over its own share, so with several processes they are weighted
        by share size and summed across processes."""
        terms = [out.loss, out.reconstruction_loss, out.kl]
        if out.bag_of_words_loss is not None:
            terms.append(out.bag_of_words_loss)
        local = torch.stack([t.detach().float() for t in terms]).double()
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

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            append_record(self.metrics_path, record)
        if self.config.with_tracking:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str, mutual_information: bool = False) -> dict[str, float]:
        """The single-sample bound on `split` (with the averaged weights under `--ema_decay`), across processes;
        with `mutual_information`, also `{split}_mi` (see `evaluation.evaluate_bound`)."""
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
                mutual_information=mutual_information,
            )
        if self.world > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        return bound_metrics(sums, split)

    def _averaged_weights(self):
        """A context in which the model holds the weight average (a no-op without `--ema_decay`)."""
        from contextlib import nullcontext

        return nullcontext() if self.weight_average is None else self.weight_average.applied()

    def _evaluate_and_select(self, step: int) -> bool:
        """Evaluate on validation, keep the best folder, and tell whether early stopping triggers. Evaluations during
        the encoder warm start (an autoencoder whose decoder is then drawn afresh) are logged but not selectable."""
        state = self.state
        metrics = self.evaluate("validation", mutual_information=self.aggressive_phase())
        if "validation_mi" in metrics:
            self._update_aggressive_phase(metrics, step)
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
        final, tmp = checkpoint_folders(self.output_dir, self.state.global_step)
        if accelerator.is_main_process:
            remove_stale_folders(self.output_dir)  # left by an interrupted run
            (tmp / TRAINING_STATE_DIR).mkdir(parents=True)
        accelerator.wait_for_everyone()
        with removed_on_failure(tmp):
            save_training_state(tmp / TRAINING_STATE_DIR, self.optimizer, self.scheduler, accelerator.scaler, self.rank)
        accelerator.wait_for_everyone()
        self.state.kl_controller = self.rate_control.state_dict()
        if accelerator.is_main_process:
            with removed_on_failure(tmp):
                if self.weight_average is not None:
                    averages = [a.cpu() for a in self.weight_average.averages]
                    torch.save(averages, tmp / TRAINING_STATE_DIR / AVERAGE_FILE)
                self._save_model_folder(tmp)  # the weights being trained; their average is in training_state/
                seal_checkpoint(tmp, self.state)
            replace_dir(tmp, final)
            prune_checkpoints(self.output_dir, self.config.save_total_limit)
        accelerator.wait_for_everyone()
        return final

    def _save_best(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        final, tmp = self.output_dir / "best", self.output_dir / ".tmp-best"
        if tmp.exists():
            shutil.rmtree(tmp)
        with self._averaged_weights(), removed_on_failure(tmp):
            self._save_model_folder(tmp, extra={"step": self.state.global_step, **metrics})
        replace_dir(tmp, final)

    # ------------------------------------------------------------------ the end
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
                self._write_latent_report(best)
            plot_training(self.metrics_path, self.output_dir / CURVES_FILE)
            if best.is_dir():
                self._finalize_best(best)
        if self.config.with_tracking:
            accelerator.end_training()
        if self.config.push_to_hub and accelerator.is_main_process:
            hub.push_folder(
                best, self.config.hub_model_id, token=self.config.hub_token, private=self.config.hub_private
            )
        accelerator.wait_for_everyone()
        return results

    def _write_latent_report(self, best: Path) -> None:
        """`best/latent_report.json` (and `.md`): the selected VAE's latent report on the test split, else the
        validation split (`--latent_report`)."""
        split = next((s for s in ("test", "validation") if s in self.corpora), None)
        model = self.accelerator.unwrap_model(self.model)
        if not self.config.latent_report or split is None or model.config.is_rnnlm:
            return
        from ..analysis import ids_to_texts
        from ..latent_report import REPORT_FILE, latent_report, render_markdown, report_rows

        corpus = self.corpora[split]
        sentences = ids_to_texts(self.tokenizer, [ids.tolist() for ids in corpus.sequences()])
        report = latent_report(model, self.tokenizer, sentences, seed=self.config.seed)
        report["split"] = split
        (best / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
        title = f"Latent report: {self.output_dir.name}, {split} split"
        (best / REPORT_FILE).with_suffix(".md").write_text(render_markdown(report, title) + "\n", encoding="utf-8")
        summary = "; ".join(f"{name}: {value}" for name, value in report_rows(report) if "per dimension" not in name)
        logger.info(f"latent report ({split}): {summary}")

    def _finalize_best(self, best: Path) -> None:
        """Make `best/` Hub-ready: the run's metrics and curves, the pipeline file and the model card (README.md).
        The card is a convenience: a failure here only warns, the trained model is already saved."""
        try:
            for name in (METRICS_FILE, CURVES_FILE):
                if (self.output_dir / name).is_file():
                    shutil.copy2(self.output_dir / name, best / name)
            hub.finalize_model_folder(best)
        except Exception as err:
            logger.warning(f"could not write the model card in {best}: {type(err).__name__}: {err}")


def train(config: TrainingConfig, accelerator=None) -> dict[str, Any]:
    """Train a sentence VAE (or RNNLM) as configured; returns the final metrics (also in `results.json`). The output
    folder is locked for the run (`files.OutputDirLock`): a second run on it fails at once."""
    trainer = Trainer(config, accelerator)
    try:
        return trainer.run()
    finally:
        trainer.close()


__all__ = [
    "AGGRESSIVE_WINDOW",
    "READABLE_NUM_BEAMS",
    "Trainer",
    "build_optimizer",
    "readable_generation_config",
    "shard",
    "step_noise",
    "train",
]
