"""The training loop (`hf_sentence_vae.training.trainer`): convergence on PTB, exact resume, rate control in the loop,
weight averaging, 2-process DDP on CPU, bad-data errors, run artifacts, checkpoint bookkeeping, the offline Hub push,
and settings or runs that cannot train (one clear error each, through `train.py` where a user would meet them).

Every run here is tiny (emb/hidden 16-32, z 4-8, a few hundred PTB lines) so that the whole module runs in
well under a minute or two on two shared CPU cores.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_process_error_line,
    assert_records_close,
    head_lines,
    load_script,
    nothing_trained,
    ptb_subset,
    read_records,
    reset_accelerate,
    tiny_argv,
    tiny_config,
    train_cli_error,
    train_run,
    train_subprocess,
)

from hf_sentence_vae import SentenceVAEModel
from hf_sentence_vae.data import load_text_splits
from hf_sentence_vae.rate_control import KLSchedule
from hf_sentence_vae.training import (
    STATE_FILE,
    Trainer,
    TrainingConfig,
    evaluate_bound,
    list_checkpoints,
    resolve_checkpoint,
    shard,
    step_noise,
    train,
    update_weight_average,
)
from hf_sentence_vae.training.checkpointing import checkpoint_problem

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SIZES = dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4)
# Per-record fields that depend on wall-clock time, not on the computation.
TIMING_FIELDS = {"tokens_per_second"}


# --------------------------------------------------------------------------- helpers
def _train(config: TrainingConfig) -> dict:
    reset_accelerate()
    return train(config)


def _train_records(output_dir: Path) -> list[dict]:
    return [r for r in read_records(output_dir) if "loss" in r]


def _eval_records(output_dir: Path) -> list[dict]:
    return [r for r in read_records(output_dir) if "validation_loss" in r]


def _assert_records_close(got: list[dict], want: list[dict], rel: float) -> None:
    assert_records_close(got, want, rel, 1e-6, timing=TIMING_FIELDS)


def _assert_metrics_close(got: dict, want: dict, rel: float, prefixes=("validation_", "test_", "train_")) -> None:
    keys = [k for k in want if k.startswith(prefixes)]
    assert keys
    for key in keys:
        assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-6), f"{key}: {got[key]} != {want[key]}"


@pytest.fixture(scope="module")
def small_ptb(ptb_dir: Path, tmp_path_factory) -> dict[str, str]:
    """100 training, 40 validation and 40 test sentences of PTB (the first lines of each file)."""
    return ptb_subset(ptb_dir, tmp_path_factory.mktemp("ptb_small"), 100)


def tiny_run(data: dict[str, str], output_dir: Path, **overrides) -> TrainingConfig:
    """A run of a few steps of a tiny VAE: batches of 8 -> 13 batches per epoch on `small_ptb`."""
    kwargs = dict(
        **data,
        output_dir=str(output_dir),
        **SIZES,
        word_keep_rate=0.7,
        dropout=0.0,
        max_length=30,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_train_steps=8,
        logging_steps=2,
        eval_steps=4,
        kl_schedule="sigmoid",
        kl_sigmoid_slope=0.5,
        kl_sigmoid_midpoint=6,
        learning_rate=3e-3,
        disable_tqdm=True,
        seed=3,
    )
    kwargs.update(overrides)
    return TrainingConfig(**kwargs)


# --------------------------------------------------------------------------- KL schedules


# --------------------------------------------------------------------------- free bits


# --------------------------------------------------------------------------- helpers of the loop
def test_step_noise_is_a_pure_function_of_seed_and_step():
    a_latent, a_words = step_noise(7, 11, 6, 4, 9)
    b_latent, b_words = step_noise(7, 11, 6, 4, 9)
    assert torch.equal(a_latent, b_latent) and torch.equal(a_words, b_words)
    assert a_latent.shape == (6, 4) and a_words.shape == (6, 9)
    assert not torch.equal(step_noise(7, 12, 6, 4, 9)[0], a_latent)
    assert not torch.equal(step_noise(8, 11, 6, 4, 9)[0], a_latent)
    latent, words = step_noise(7, 11, 6, 0, 9)
    assert latent is None and words.shape == (6, 9)


@pytest.mark.parametrize("n, world", [(8, 2), (7, 2), (3, 2), (10, 3), (5, 1)])
def test_shard_partitions_the_global_batch(n, world):
    indices = torch.arange(n).numpy()
    parts = [indices[shard(indices, rank, world)] for rank in range(world)]
    assert [int(i) for part in parts for i in part] == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


# --------------------------------------------------------------------------- learning on PTB
def test_training_on_ptb_reduces_the_bound_and_keeps_kl_alive(ptb_dir, tmp_path):
    """300 steps of a tiny VAE on 600 PTB sentences: the validation bound drops well below the untrained model's
    and the first evaluation's; with sigmoid annealing and word dropout (keep 0.6) the validation KL stays
    clearly above 0. The logged KL weights follow the schedule.

    Note: with a model this small and a few hundred steps, the KL collapses to ~0 once the weight approaches 1
    (the decoder learns faster than the encoder becomes informative); the schedule is therefore chosen to end
    near weight 0.12, in the annealing phase where the paper's Figure 2 shows the KL term alive (final validation
    KL ~0.7-1.0 nats for seeds 0-2)."""
    data = {
        "train_file": head_lines(ptb_dir / "ptb.train.txt", tmp_path / "train.txt", 600),
        "validation_file": head_lines(ptb_dir / "ptb.valid.txt", tmp_path / "valid.txt", 150),
    }
    config = TrainingConfig(
        **data,
        output_dir=str(tmp_path / "run"),
        embedding_size=32,
        encoder_hidden_size=32,
        decoder_hidden_size=32,
        latent_size=8,
        word_keep_rate=0.6,
        dropout=0.0,
        min_frequency=2,
        max_length=40,
        per_device_train_batch_size=16,
        max_train_steps=300,
        eval_steps=25,
        logging_steps=25,
        kl_schedule="sigmoid",
        kl_sigmoid_slope=0.02,
        kl_sigmoid_midpoint=400,
        learning_rate=2e-3,
        disable_tqdm=True,
        seed=0,
    )
    reset_accelerate()
    trainer = Trainer(config)
    untrained = evaluate_bound(trainer.model, trainer.corpora["validation"], 64)
    untrained_loss = float(untrained[0] + untrained[1]) / float(untrained[3])
    results = trainer.run()

    evals = _eval_records(config.output_dir)
    assert [r["step"] for r in evals] == list(range(25, 301, 25))
    first, last = evals[0], evals[-1]
    assert last["validation_loss"] < first["validation_loss"] - 3.0, (first, last)
    assert last["validation_loss"] < 0.8 * untrained_loss, (untrained_loss, last)
    assert results["validation_loss"] == pytest.approx(min(r["validation_loss"] for r in evals))
    assert results["validation_loss"] == pytest.approx(results["best_validation_loss"])
    assert last["validation_kl"] > 0.1, evals
    assert results["validation_kl"] > 0.1

    schedule = KLSchedule("sigmoid", kl_sigmoid_slope=0.02, kl_sigmoid_midpoint=400)
    records = _train_records(config.output_dir)
    for record in records:
        assert record["kl_weight"] == pytest.approx(schedule(record["step"] - 1))
        assert record["loss"] == pytest.approx(record["reconstruction"] + record["kl"] * record["kl_weight"], rel=0.05)
    assert records[-1]["kl"] > 0.1


# --------------------------------------------------------------------------- exact resume
RESUME_CASES = {
    "plain": {},
    "weight_average": dict(ema_decay=0.8, locked_dropout=True, bag_of_words_weight=0.5),
    # The decoder is re-initialised at step 6, between two checkpoints; the controller's state is in checkpoint-12.
    "kl_target_after_warm_start": dict(kl_target=2.0, kl_target_ki=0.05, encoder_warmup_steps=6, ema_decay=0.8),
    # The warm start ends exactly at the resumed checkpoint: the resumed run must re-initialise the decoder.
    "warm_start_ends_at_the_checkpoint": dict(encoder_warmup_steps=12, posterior_mean_bn_scale=0.5),
    # Aggressive training: its encoder-only updates draw batches and noise from (seed, step), and whether its phase
    # is over (and the best validation MI so far) is in the trainer state.
    "aggressive_encoder_updates": dict(aggressive_encoder_steps=3, eval_steps=2),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_latest_checkpoint_matches_an_uninterrupted_run(small_ptb, tmp_path, case):
    """12 steps with checkpoints, then `latest` (checkpoint-12, mid-epoch) for 8 more in a copy of the output
    folder == 20 uninterrupted steps (crossing an epoch boundary at 13): same training records, evaluations and
    final metrics. Dropout and embedding dropout are on (locked in the weight-averaging case), so the restored RNG
    state matters too; with weight averaging, so does the average saved in the checkpoint (the evaluations use
    it); with rate control, so do the controller's state and the step at which the warm start re-initialises the
    decoder."""
    common = dict(checkpointing_steps="4", kl_schedule="linear", kl_warmup_steps=16, dropout=0.1, embedding_dropout=0.1)
    common.update(RESUME_CASES[case])
    full = tiny_run(small_ptb, tmp_path / "full", max_train_steps=20, **common)
    full_results = _train(full)

    first = tiny_run(small_ptb, tmp_path / "first", max_train_steps=12, **common)
    _train(first)
    assert [p.name for p in list_checkpoints(first.output_dir)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    shutil.copytree(first.output_dir, tmp_path / "resumed")
    resumed = tiny_run(small_ptb, tmp_path / "resumed", max_train_steps=20, resume_from_checkpoint="latest", **common)
    resumed_results = _train(resumed)

    _assert_records_close(read_records(resumed.output_dir), read_records(full.output_dir), rel=1e-5)
    assert resumed_results["global_step"] == full_results["global_step"] == 20
    assert resumed_results["best_step"] == full_results["best_step"]
    _assert_metrics_close(resumed_results, full_results, rel=1e-5)
    assert [p.name for p in list_checkpoints(resumed.output_dir)] == [f"checkpoint-{s}" for s in (4, 8, 12, 16, 20)]
    state = json.loads((Path(resumed.output_dir) / "checkpoint-20" / STATE_FILE).read_text())
    assert state["global_step"] == 20 and state["epoch"] == 1


def test_the_fused_output_layer_trains_as_the_plain_one(small_ptb, tmp_path, monkeypatch):
    """A run with the loss node of `kernels` (over many vocabulary chunks: a small chunk budget) gives the training
    records and final metrics of the same run with the output layer and its loss written plainly (`F.linear` and
    `F.cross_entropy`), to float tolerance: the fast path changes the speed, not the numbers."""
    import torch.nn.functional as F

    from hf_sentence_vae import kernels
    from hf_sentence_vae import modeling_sentence_vae as modeling

    monkeypatch.setattr(kernels, "LOSS_BUDGET", 64 * 64)
    fused = tiny_run(small_ptb, tmp_path / "fused")
    fused_results = _train(fused)

    def plain(hidden, weight, bias, targets):
        return F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")

    monkeypatch.setattr(modeling, "output_layer_nll", plain)
    reference = tiny_run(small_ptb, tmp_path / "plain")
    reference_results = _train(reference)
    _assert_records_close(read_records(fused.output_dir), read_records(reference.output_dir), rel=1e-4)
    _assert_metrics_close(fused_results, reference_results, rel=1e-4)


# --------------------------------------------------------------------------- rate control
def test_encoder_warm_start_trains_an_autoencoder_then_reinitialises_the_decoder(small_ptb, tmp_path):
    """KL weight 0 for the warm-up steps, the schedule counted from their end afterwards; at the switch the decoder
    (and only the decoder) is drawn afresh, and the run's log says so."""
    config = tiny_run(
        small_ptb,
        tmp_path / "run",
        max_train_steps=10,
        encoder_warmup_steps=6,
        kl_schedule="linear",
        kl_warmup_steps=4,
        kl_start=0.5,
        checkpointing_steps="6",
        logging_steps=1,
        eval_steps=100,
    )
    _train(config)
    records = {r["step"]: r for r in _train_records(config.output_dir)}
    assert [records[s]["kl_weight"] for s in range(1, 7)] == [0.0] * 6
    assert [records[s]["kl_weight"] for s in range(7, 11)] == pytest.approx([0.5, 0.625, 0.75, 0.875])
    from hf_sentence_vae import SentenceVAEModel

    at_switch = SentenceVAEModel.from_pretrained(Path(config.output_dir) / "checkpoint-6")
    fresh = SentenceVAEModel(at_switch.config)
    fresh.load_state_dict(at_switch.state_dict())
    fresh.reinitialize_decoder(seed=config.seed + 1)
    final = SentenceVAEModel.from_pretrained(Path(config.output_dir) / "best")

    # The decoder LSTM after the switch started from the fresh draw: 4 small Adam steps move it far less than the
    # distance between the warmed-up and the fresh weights.
    def distance(a, b) -> float:
        return float((a.decoder.weight_hh_l0 - b.decoder.weight_hh_l0).detach().norm())

    assert distance(final, fresh) < 0.5 * distance(at_switch, fresh)


def test_a_run_that_ends_within_the_warm_start_keeps_its_final_weights(small_ptb, tmp_path, caplog):
    """No evaluation can select best/ during the warm start: a run that ends there keeps its final weights (an
    autoencoder) and says so, instead of failing as a run that trained nothing."""
    config = tiny_run(small_ptb, tmp_path / "run", max_train_steps=6, encoder_warmup_steps=10, eval_steps=3)
    with caplog.at_level("WARNING"):
        results = _train(config)
    assert results["best_step"] is None and (Path(config.output_dir) / "best" / "model.safetensors").is_file()
    assert "ended within the encoder warm start" in caplog.text


def test_kl_target_drives_the_kl_weight(small_ptb, tmp_path):
    """Each step's KL weight is the controller's answer to the KL of the steps before (replayed here from the log,
    one record per step); a target far above the KL keeps the weight at 0, one at 0 makes it rise."""
    from hf_sentence_vae.rate_control import KLTargetController

    for target, name in ((0.0, "low"), (1e4, "high")):
        config = tiny_run(
            small_ptb, tmp_path / name, max_train_steps=10, kl_target=target, kl_target_ki=0.05, logging_steps=1
        )
        _train(config)
        records = _train_records(config.output_dir)
        replay = KLTargetController(target, kp=config.kl_target_kp, ki=config.kl_target_ki)
        expected = [0.0] + [replay.update(r["kl"]) for r in records[:-1]]
        assert [r["kl_weight"] for r in records] == pytest.approx(expected, rel=1e-4, abs=1e-9)
        if target == 0.0:
            assert records[-1]["kl_weight"] > 0.0
        else:
            assert {r["kl_weight"] for r in records} == {0.0}


def test_a_run_with_the_bag_of_words_loss_logs_it_and_its_card_names_it(small_ptb, tmp_path):
    """Each training record holds the unweighted bag-of-words loss, and `loss` = reconstruction + KL weight x KL +
    weight x bag of words (a constant KL weight, so the record's means add up); the saved model keeps the layer."""
    weight = 0.5
    config = tiny_run(
        small_ptb, tmp_path / "run", max_train_steps=6, bag_of_words_weight=weight, kl_schedule="constant"
    )
    _train(config)
    records = _train_records(config.output_dir)
    assert len(records) == 3
    for r in records:
        assert r["bag_of_words"] > 0
        expected = r["reconstruction"] + r["kl_weight"] * r["kl"] + weight * r["bag_of_words"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    best = Path(config.output_dir) / "best"
    model = SentenceVAEModel.from_pretrained(best)
    assert model.config.bag_of_words_weight == weight and hasattr(model, "bag_of_words_head")
    assert "| bag-of-words loss weight (`bag_of_words_weight`) | 0.5 |" in (best / "README.md").read_text()
    # A run without it logs no such field.
    plain = tiny_run(small_ptb, tmp_path / "plain", max_train_steps=2)
    _train(plain)
    assert all("bag_of_words" not in r for r in _train_records(plain.output_dir))


@pytest.mark.parametrize("metric", ["loss", "reconstruction"])
def test_best_model_is_selected_on_the_chosen_metric_after_the_warm_start(small_ptb, tmp_path, metric):
    """The best step minimises validation_<metric> among the evaluations after the encoder warm start; evaluations
    during it are logged but never selected."""
    config = tiny_run(
        small_ptb,
        tmp_path / metric,
        max_train_steps=12,
        eval_steps=2,
        encoder_warmup_steps=4,
        kl_target=5.0,
        metric_for_best_model=metric,
    )
    results = _train(config)
    evals = _eval_records(config.output_dir)
    assert [r["step"] for r in evals] == [2, 4, 6, 8, 10, 12]
    eligible = [r for r in evals if r["step"] > 4]
    best = min(eligible, key=lambda r: r[f"validation_{metric}"])
    assert results["best_step"] == best["step"]
    assert results[f"best_validation_{metric}"] == pytest.approx(best[f"validation_{metric}"])
    assert results["validation_loss"] == pytest.approx(best["validation_loss"], rel=1e-5)  # final figures: best/


def test_metric_for_best_model_is_checked(small_ptb, tmp_path):
    with pytest.raises(ValueError, match="metric_for_best_model"):
        tiny_run(small_ptb, tmp_path / "run", metric_for_best_model="kl")


@pytest.mark.parametrize("flag", ["kl_target", "encoder_warmup_steps", "aggressive_encoder_steps"])
def test_rate_control_needs_a_latent_variable(small_ptb, tmp_path, flag):
    config = tiny_run(small_ptb, tmp_path / "run", latent_size=0, word_keep_rate=1.0, **{flag: 3})
    with pytest.raises(ValueError, match=f"{flag} needs a latent variable"):
        _train(config)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kl_target=-1.0),
        dict(kl_target=float("nan")),
        dict(kl_target_ki=-0.1),
        dict(encoder_warmup_steps=-1),
        dict(aggressive_encoder_steps=-1),
    ],
)
def test_rate_control_settings_are_checked(small_ptb, tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        tiny_run(small_ptb, tmp_path / "run", **kwargs)


def _parameter_copies(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(before: list[torch.Tensor], params) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


def test_aggressive_training_updates_the_encoder_alone_then_the_decoder_alone(small_ptb, tmp_path):
    """He et al. (2019): the encoder-only updates change q(z|x)'s parameters and nothing else (the shared embedding
    and its tied output layer included); the step after them changes everything but q(z|x)'s parameters."""
    config = tiny_run(small_ptb, tmp_path / "run", aggressive_encoder_steps=4, kl_schedule="constant")
    reset_accelerate()
    trainer = Trainer(config)
    try:
        model = trainer.accelerator.unwrap_model(trainer.model)
        inference = model.inference_parameters()
        assert inference and all(p.requires_grad for p in inference)
        inference_ids = {id(p) for p in inference}
        generative = [p for p in model.parameters() if id(p) not in inference_ids]
        assert any(p is model.embed_tokens.weight for p in generative)
        assert trainer.aggressive_phase()

        before_inference, before_generative = _parameter_copies(inference), _parameter_copies(generative)
        batches = trainer._epoch_batches(0)
        assert trainer._encoder_updates(batches, micro_step=0) == 4
        assert all(_moved(before_inference, inference))
        assert not any(_moved(before_generative, generative))

        before_inference, before_generative = _parameter_copies(inference), _parameter_copies(generative)
        loss, _ = trainer._train_step(batches[0], micro_step=0, decoder_only=True)
        assert loss is not None
        assert not any(_moved(before_inference, inference))
        assert all(_moved(before_generative, generative))
    finally:
        trainer.close()


@pytest.mark.parametrize("rising", [True, False])
def test_encoder_updates_stop_when_their_loss_stops_falling(small_ptb, tmp_path, monkeypatch, rising):
    """The inner loop compares the summed loss of consecutive windows of `AGGRESSIVE_WINDOW` updates: a loss that
    rises stops it after the second window; one that keeps falling runs to `--aggressive_encoder_steps`."""
    from hf_sentence_vae.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "AGGRESSIVE_WINDOW", 2)
    config = tiny_run(small_ptb, tmp_path / "run", aggressive_encoder_steps=9)
    reset_accelerate()
    trainer = Trainer(config)
    losses = iter(range(100) if rising else range(100, 0, -1))
    monkeypatch.setattr(trainer, "_global_means", lambda out, size: (float(next(losses)), 0.0, 0.0))
    try:
        assert trainer._encoder_updates(trainer._epoch_batches(0), micro_step=0) == (4 if rising else 9)
    finally:
        trainer.close()


def test_aggressive_phase_ends_at_the_first_evaluation_without_a_higher_mi(small_ptb, tmp_path):
    """The phase's bookkeeping: each evaluation's validation MI either beats the best so far (the phase goes on) or
    ends it, and an ended phase stays ended (`aggressive_phase` is False from there)."""
    config = tiny_run(small_ptb, tmp_path / "run", aggressive_encoder_steps=2)
    reset_accelerate()
    trainer = Trainer(config)
    try:
        for step, mi in ((4, 0.5), (8, 0.9)):
            trainer._update_aggressive_phase({"validation_mi": mi}, step)
            assert trainer.aggressive_phase() and trainer.state.aggressive_best_mi == mi
        trainer._update_aggressive_phase({"validation_mi": 0.9}, 12)
        assert not trainer.aggressive_phase() and trainer.state.aggressive_ended
        assert trainer.state.aggressive_best_mi == 0.9
    finally:
        trainer.close()


def test_an_aggressive_run_logs_its_phase_and_its_card_names_it(small_ptb, tmp_path):
    """A whole run: while the phase lasts every evaluation logs the validation MI and every step takes encoder-only
    updates; the first evaluation whose MI is not above the best so far ends it (replayed from the log), after which
    steps take none. The model card's training table names the option."""
    config = tiny_run(
        small_ptb, tmp_path / "run", aggressive_encoder_steps=3, max_train_steps=24, eval_steps=2, logging_steps=1
    )
    _train(config)
    evals, records = _eval_records(config.output_dir), _train_records(config.output_dir)
    best, ended_at = None, None
    for record in evals:
        if ended_at is not None:
            assert "validation_mi" not in record
            continue
        mi = record["validation_mi"]
        assert 0.0 <= mi <= math.log(config.per_device_eval_batch_size) + 0.1
        if best is None or mi > best:
            best = mi
        else:
            ended_at = record["step"]
    for record in records:
        in_phase = ended_at is None or record["step"] <= ended_at
        assert record["encoder_steps"] == (3 if in_phase else 0), (record, ended_at)
    card = (Path(config.output_dir) / "best" / "README.md").read_text(encoding="utf-8")
    assert "`aggressive_encoder_steps`" in card


def test_aggressive_training_needs_a_validation_split(small_ptb, tmp_path):
    data = {k: v for k, v in small_ptb.items() if k != "validation_file"}
    config = tiny_run(data, tmp_path / "run", aggressive_encoder_steps=3)
    with pytest.raises(ValueError, match="aggressive_encoder_steps needs a validation split"):
        _train(config)


def test_aggressive_training_refuses_gradient_accumulation(small_ptb, tmp_path):
    with pytest.raises(ValueError, match="aggressive_encoder_steps=3 .* gradient_accumulation_steps=2"):
        tiny_run(small_ptb, tmp_path / "run", aggressive_encoder_steps=3, gradient_accumulation_steps=2)


# --------------------------------------------------------------------------- weight averaging
def test_weight_average_update_follows_its_formula():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    averages = [torch.zeros(2), torch.zeros(1, 1)]
    update_weight_average(averages, params, decay=0.99, num_updates=0)  # warm-up: d = 1/10
    torch.testing.assert_close(averages, [0.9 * params[0], 0.9 * params[1]])
    update_weight_average(averages, [torch.zeros(2), torch.zeros(1, 1)], decay=0.5, num_updates=1000)  # d = 0.5
    torch.testing.assert_close(averages, [0.45 * params[0], 0.45 * params[1]])
    assert torch.equal(params[0], torch.tensor([1.0, 2.0]))  # the weights themselves are untouched


def test_weight_averaging_evaluates_and_saves_the_average(small_ptb, tmp_path):
    """With --ema_decay the validation records, best/ and the final figures come from the averaged weights, while
    a checkpoint's model folder keeps the weights being trained and its training_state/ the average."""
    from transformers import AutoTokenizer

    from hf_sentence_vae import SentenceVAEModel
    from hf_sentence_vae.data import TokenizedCorpus, tokenize_splits
    from hf_sentence_vae.training import AVERAGE_FILE, bound_metrics

    config = tiny_run(small_ptb, tmp_path / "run", eval_steps=8, checkpointing_steps="8", ema_decay=0.5)
    results = _train(config)
    run = Path(config.output_dir)
    checkpoint, best = run / "checkpoint-8", run / "best"
    trained, averaged = SentenceVAEModel.from_pretrained(checkpoint), SentenceVAEModel.from_pretrained(best)
    saved_average = torch.load(checkpoint / "training_state" / AVERAGE_FILE, weights_only=True)
    for param, average in zip(averaged.parameters(), saved_average, strict=True):
        assert torch.equal(param, average)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), averaged.parameters()))

    tokenizer = AutoTokenizer.from_pretrained(best)
    splits = load_text_splits(small_ptb["train_file"], small_ptb["validation_file"], None, None, None, "text", None)
    corpus = TokenizedCorpus.from_dataset(
        tokenize_splits(splits, tokenizer, config.max_length)[0]["validation"], tokenizer.pad_token_id
    )

    def validation_loss(model) -> float:
        sums = evaluate_bound(model, corpus, config.per_device_eval_batch_size, seed=config.seed)
        return bound_metrics(sums, "validation")["validation_loss"]

    logged = _eval_records(run)[-1]["validation_loss"]
    assert results["validation_loss"] == pytest.approx(logged, rel=1e-6)
    assert validation_loss(averaged) == pytest.approx(logged, rel=1e-6)
    assert validation_loss(trained) != pytest.approx(logged, rel=1e-4)


def test_resume_from_an_incomplete_checkpoint_path_is_refused(small_ptb, tmp_path):
    broken = tmp_path / "checkpoint-3"
    broken.mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(str(broken), str(tmp_path))
    config = tiny_run(small_ptb, tmp_path / "run", resume_from_checkpoint=str(broken))
    reset_accelerate()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        Trainer(config)


# --------------------------------------------------------------------------- two processes (DDP over gloo)
def _ddp_worker(config_kwargs: dict) -> None:
    """Runs in each forked process of `accelerate.debug_launcher` (module level so it can be launched). Each process
    records the package's log lines, at INFO and above, in `log_<rank>.txt` of the output folder."""
    import logging

    reset_accelerate()
    torch.set_num_threads(1)
    rank = torch.distributed.get_rank()  # debug_launcher has set up the process group
    package = logging.getLogger("hf_sentence_vae")
    package.setLevel(logging.INFO)
    Path(config_kwargs["output_dir"]).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(config_kwargs["output_dir"]) / f"log_{rank}.txt")
    package.addHandler(handler)
    try:
        train(TrainingConfig(**config_kwargs))  # the Trainer builds its own Accelerator, as under `accelerate launch`
    finally:
        package.removeHandler(handler)
        handler.close()


def _rng_worker(config_kwargs: dict) -> None:
    """Builds the Trainer in each forked process and records the next draws of its torch generator."""
    from accelerate import PartialState

    from hf_sentence_vae.training import Trainer

    reset_accelerate()
    torch.set_num_threads(1)
    trainer = Trainer(TrainingConfig(**config_kwargs))
    torch.save(torch.rand(16), Path(config_kwargs["output_dir"]) / f"draws_{PartialState().process_index}.pt")
    assert trainer.rank == PartialState().process_index


def test_each_process_draws_its_own_dropout_masks(small_ptb, tmp_path):
    """Dropout masks come from each process's torch generator: after set-up, rank 0's stream is a one-process
    run's (so single-process results do not depend on this) and rank 1's is a different one."""
    from accelerate import debug_launcher

    from hf_sentence_vae.training import Trainer

    single = tiny_run(small_ptb, tmp_path / "single", dropout=0.3)
    reset_accelerate()
    Trainer(single)
    one_process = torch.rand(16)
    reset_accelerate()
    double = tiny_run(small_ptb, tmp_path / "double", dropout=0.3)
    debug_launcher(_rng_worker, args=(dict(vars(double)),), num_processes=2)
    reset_accelerate()
    rank0, rank1 = (torch.load(tmp_path / "double" / f"draws_{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, one_process)
    assert not torch.equal(rank0, rank1)


def test_two_process_cpu_run_matches_one_process_run(small_ptb, tmp_path):
    """2 processes x 4 sentences == 1 process x 8 sentences over a whole epoch of 99 sentences (12 batches of 8
    and one of 3, split 2 + 1): same logged losses and validation metrics; the run logs and saves once."""
    from accelerate import debug_launcher

    data = dict(small_ptb, train_file=head_lines(Path(small_ptb["train_file"]), tmp_path / "train99.txt", 99))
    # The bag-of-words loss is on, so its logged mean is reduced across processes as well.
    common = dict(checkpointing_steps="3", max_train_steps=13, logging_steps=1, eval_steps=3, bag_of_words_weight=0.5)
    single = tiny_run(data, tmp_path / "single", per_device_train_batch_size=8, **common)
    single_results = _train(single)

    double = tiny_run(data, tmp_path / "double", per_device_train_batch_size=4, **common)
    debug_launcher(_ddp_worker, args=(dict(vars(double)),), num_processes=2)
    reset_accelerate()

    out = Path(double.output_dir)
    double_results = json.loads((out / "results.json").read_text())
    assert double_results["world_size"] == 2
    assert single_results["world_size"] == 1
    assert double_results["global_step"] == 13
    assert "train_loss" not in double_results  # the training split is evaluated only on request
    # logged once: one record per step and no duplicates from the second process
    records = read_records(out)
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 14))
    assert [r["step"] for r in records if "validation_loss" in r] == [3, 6, 9, 12, 13]
    # saved once: exactly the expected checkpoints, no temporary leftovers
    assert sorted((p.name for p in out.iterdir() if "checkpoint" in p.name), key=lambda n: int(n.split("-")[-1])) == [
        "checkpoint-3",
        "checkpoint-6",
        "checkpoint-9",
        "checkpoint-12",
    ]
    assert (out / "best" / "model.safetensors").is_file()
    assert not list(out.glob(".tmp-*"))
    # logged once: the main process logs the run (its warnings included), the other only errors (none here)
    main_log, other_log = ((out / f"log_{rank}.txt").read_text() for rank in (0, 1))
    assert "world size 2" in main_log and "training sentences" in main_log and "truncated" in main_log
    assert other_log == ""

    _assert_records_close(read_records(out), read_records(single.output_dir), rel=1e-5)
    _assert_metrics_close(double_results, single_results, rel=1e-5)
    assert all("bag_of_words" in r for r in records if "loss" in r)


def test_two_process_run_with_a_one_sentence_batch(small_ptb, tmp_path):
    from accelerate import debug_launcher

    data = dict(small_ptb, train_file=head_lines(Path(small_ptb["train_file"]), tmp_path / "train9.txt", 9))
    config = tiny_run(data, tmp_path / "run", per_device_train_batch_size=4, max_train_steps=2, eval_steps=2)
    try:
        debug_launcher(_ddp_worker, args=(dict(vars(config)),), num_processes=2)  # batches of 8 and 1
    finally:
        reset_accelerate()
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    assert results["world_size"] == 2
    # the 1-sentence remainder batch (fewer sentences than processes) is dropped: one 8-sentence batch an epoch
    assert results["global_step"] == 2


# --------------------------------------------------------------------------- bad data
def _expect_error_before_training(config: TrainingConfig, error: type, pattern: str) -> None:
    reset_accelerate()
    with pytest.raises(error, match=pattern):
        Trainer(config)
    out = Path(config.output_dir)
    assert not (out / "metrics.jsonl").exists()
    assert not list_checkpoints(out)


def test_missing_train_file(small_ptb, tmp_path):
    missing = tmp_path / "nope.txt"
    data = dict(small_ptb, train_file=str(missing))
    _expect_error_before_training(tiny_run(data, tmp_path / "run"), FileNotFoundError, "nope.txt.*does not exist")


def test_empty_train_file(small_ptb, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    data = dict(small_ptb, train_file=str(empty))
    _expect_error_before_training(tiny_run(data, tmp_path / "run"), ValueError, "train_file.*empty")


def test_blank_only_validation_file(small_ptb, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n\n")
    data = dict(small_ptb, validation_file=str(blank))
    _expect_error_before_training(tiny_run(data, tmp_path / "run"), ValueError, "validation split has no non-blank")


def test_non_utf8_train_file(small_ptb, tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("the caf\u00e9 was open .\nthe na\u00efve man left .\n".encode("latin-1"))
    data = dict(small_ptb, train_file=str(latin))
    _expect_error_before_training(tiny_run(data, tmp_path / "run"), ValueError, "latin1.txt.*not valid UTF-8")


@pytest.fixture
def csv_dataset(tmp_path) -> Path:
    """A local dataset folder (loadable offline by name with `datasets.load_dataset`) with columns sentence,label."""
    folder = tmp_path / "csv_dataset"
    folder.mkdir()
    rows = ["sentence,label"] + [f"the cat number {i} sat on the mat .,{i % 2}" for i in range(12)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_text_column_missing_from_dataset(csv_dataset, tmp_path):
    config = tiny_run({}, tmp_path / "run", dataset_name=str(csv_dataset), text_column="text")
    _expect_error_before_training(config, ValueError, r"--text_column 'text' is not a column.*sentence")


def test_text_column_of_a_local_dataset_is_used(csv_dataset):
    splits = load_text_splits(dataset_name=str(csv_dataset), text_column="sentence")
    assert splits["train"].column_names == ["text"]
    assert splits["train"][0]["text"] == "the cat number 0 sat on the mat ."
    assert len(splits["train"]) == 12


def test_unknown_dataset_name_fails_fast_offline(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ValueError, match="could not load --dataset_name 'no-such-user/no-such-dataset'"):
        load_text_splits(dataset_name="no-such-user/no-such-dataset")
    assert time.perf_counter() - started < 10


def test_no_data_at_all_is_refused():
    with pytest.raises(ValueError, match="--train_file"):
        TrainingConfig()
    with pytest.raises(ValueError, match="--train_file"):
        load_text_splits()


# --------------------------------------------------------------------------- the command line


# --------------------------------------------------------------------------- run artifacts
def _load_train_script():
    return load_script(REPO / "train_scripts" / "train.py")


@pytest.fixture(scope="module")
def cli_run(small_ptb, tmp_path_factory) -> Path:
    """A run through `train_scripts/train.py --config run.yaml` with checkpoints every 2 steps, the newest 2
    kept, a constant KL weight of 1, free bits of 0.5 nats per dimension and the training split evaluated."""
    folder = tmp_path_factory.mktemp("cli_run")
    out = folder / "run"
    settings = dict(
        **small_ptb,
        output_dir=str(out),
        **SIZES,
        max_length=30,
        per_device_train_batch_size=8,
        max_train_steps=8,
        logging_steps=1,
        eval_steps=4,
        checkpointing_steps=2,
        save_total_limit=2,
        kl_schedule="constant",
        free_bits=0.5,
        evaluate_train_split=True,
        disable_tqdm=True,
    )
    import yaml

    (folder / "run.yaml").write_text(yaml.safe_dump(settings))
    reset_accelerate()
    assert _load_train_script().main(["--config", str(folder / "run.yaml"), "--seed", "5"]) == 0
    return out


def test_run_writes_the_latent_report_of_the_selected_model_and_the_card_shows_it(cli_run):
    """best/latent_report.json: the selected model's report on the test split (40 sentences), consistent with the
    final test KL; the card's latent section shows its figures."""
    from hf_sentence_vae.latent_report import report_rows

    report = json.loads((cli_run / "best" / "latent_report.json").read_text())
    results = json.loads((cli_run / "results.json").read_text())
    assert report["split"] == "test" and report["num_sentences"] == 40
    assert report["kl"] == pytest.approx(results["test_kl"], rel=1e-4)  # closed-form KL, same model and sentences
    card = (cli_run / "best" / "README.md").read_text()
    assert "## How much of a sentence the code carries" in card
    for name, value in report_rows(report):
        assert f"| {name} | {value} |" in card
    assert (cli_run / "best" / "latent_report.md").read_text().startswith("# Latent report")


def test_no_latent_report_for_an_rnnlm_or_when_turned_off(small_ptb, tmp_path):
    for name, overrides in (("rnnlm", dict(latent_size=0, word_keep_rate=1.0)), ("off", dict(latent_report=False))):
        config = tiny_run(small_ptb, tmp_path / name, max_train_steps=2, **overrides)
        _train(config)
        assert (Path(config.output_dir) / "best" / "model.safetensors").is_file()
        assert not (Path(config.output_dir) / "best" / "latent_report.json").exists()


def test_run_writes_metrics_results_best_curves_and_checkpoints(cli_run):
    from transformers import AutoModel, AutoTokenizer

    records = read_records(cli_run)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in records if "validation_loss" in r] == [4, 8]
    for record in records:
        if "loss" in record:
            assert set(record) >= {"loss", "reconstruction", "kl", "kl_weight", "learning_rate", "tokens_per_second"}
            assert all(math.isfinite(v) for v in record.values())
    results = json.loads((cli_run / "results.json").read_text())
    assert results["global_step"] == 8 and results["world_size"] == 1
    for split in ("train", "validation", "test"):
        assert math.isfinite(results[f"{split}_loss"]) and results[f"{split}_ppl"] > 1
    assert (cli_run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = cli_run / "best"
    model = AutoModel.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert model.config.latent_size == 4 and model.config.vocab_size == len(tokenizer)
    assert json.loads((best / "training_config.json").read_text())["seed"] == 5  # the command line won
    assert "hub_token" not in json.loads((best / "training_config.json").read_text())
    assert json.loads((best / "eval_results.json").read_text())["validation_loss"] == pytest.approx(
        results["validation_loss"]
    )
    # the decoding defaults of a trained VAE: 5 beams, and PTB's literal <unk> suppressed
    assert model.generation_config.num_beams == 5
    assert model.generation_config.suppress_tokens == [tokenizer.unk_token_id]
    # best/ holds the selected model: re-evaluating it reproduces the final validation bound
    from hf_sentence_vae.data import TokenizedCorpus, tokenize_splits

    saved = json.loads((best / "training_config.json").read_text())
    splits = load_text_splits(saved["train_file"], saved["validation_file"])
    tokenized, _ = tokenize_splits(splits, tokenizer, 30)
    corpus = TokenizedCorpus.from_dataset(tokenized["validation"], tokenizer.pad_token_id)
    sums = evaluate_bound(model, corpus, 128, seed=5)
    assert float(sums[0] + sums[1]) / float(sums[3]) == pytest.approx(results["validation_loss"], rel=1e-5)


def test_save_total_limit_keeps_the_newest_checkpoints(cli_run):
    checkpoints = list_checkpoints(cli_run)
    assert [p.name for p in checkpoints] == ["checkpoint-6", "checkpoint-8"]
    assert sorted(p.name for p in cli_run.iterdir() if "checkpoint" in p.name) == ["checkpoint-6", "checkpoint-8"]
    for path in checkpoints:
        state = json.loads((path / STATE_FILE).read_text())
        assert state["global_step"] == int(path.name.split("-")[1])
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
        assert (path / "training_state").is_dir()


def test_free_bits_floor_holds_in_the_logged_training_loss(cli_run):
    """With a constant KL weight 1 and free bits 0.5 over 4 latent dimensions, every step's KL term is >= 2."""
    for record in _train_records(cli_run):
        assert record["kl_weight"] == 1.0
        assert record["loss"] - record["reconstruction"] >= 4 * 0.5 - 1e-4
        assert record["loss"] - record["reconstruction"] >= record["kl"] - 1e-4


def test_temporary_and_incomplete_checkpoints_are_never_latest(cli_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cli_run, out)
    tmp = out / ".tmp-checkpoint-99"
    shutil.copytree(out / "checkpoint-8", tmp)  # complete-looking, but an unfinished atomic write
    incomplete = out / "checkpoint-50"
    incomplete.mkdir()  # no trainer_state.json
    (out / "checkpoint-final").mkdir()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-6", "checkpoint-8"]
    assert resolve_checkpoint("latest", str(out)) == out / "checkpoint-8"
    # numeric, not lexicographic, order
    shutil.copytree(out / "checkpoint-8", out / "checkpoint-10")
    assert resolve_checkpoint("latest", str(out)) == out / "checkpoint-10"
    assert resolve_checkpoint("latest", str(tmp_path / "empty")) is None
    assert list_checkpoints(tmp_path / "empty") == []


# --------------------------------------------------------------------------- the Hub, offline
def test_push_folder_offline_raises_a_clear_error_quickly(cli_run, monkeypatch, tmp_path):
    from hf_sentence_vae.hub import HubPushError, push_folder, render_model_card

    folder = tmp_path / "best"
    shutil.copytree(cli_run / "best", folder)
    render_model_card(folder, license="mit")  # a push needs a chosen license; this run chose none
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(HubPushError, match="could not push.*me/sentence-vae") as info:
        push_folder(folder, "me/sentence-vae")
    assert time.perf_counter() - started < 10
    assert "HF_HUB_OFFLINE" in str(info.value) or "offline" in str(info.value).lower()


def test_push_folder_refuses_an_incomplete_folder(tmp_path):
    from hf_sentence_vae.hub import HubPushError, push_folder

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HubPushError, match="model.safetensors, tokenizer.json"):
        push_folder(tmp_path, "me/sentence-vae")


def test_push_to_hub_is_checked_before_training(small_ptb, tmp_path, monkeypatch):
    """`--push_to_hub` that cannot succeed (offline here; likewise no token, an unreachable endpoint, a bad repository
    id) fails before any data is read or step taken; it also needs a license for the card."""
    from hf_sentence_vae.hub import HubPushError

    with pytest.raises(ValueError, match="--license"):
        tiny_run(small_ptb, tmp_path / "run", push_to_hub=True, hub_model_id="me/vae")
    config = tiny_run(small_ptb, tmp_path / "run", push_to_hub=True, hub_model_id="me/vae", license="mit")
    monkeypatch.setattr("hf_sentence_vae.training.trainer.load_text_splits", _never_called)
    started = time.perf_counter()
    with pytest.raises(HubPushError, match="me/vae.*offline"):
        _train(config)
    assert time.perf_counter() - started < 10
    assert not Path(config.output_dir).exists()  # nothing trained, nothing written
    bad_id = tiny_run(small_ptb, tmp_path / "run", push_to_hub=True, hub_model_id="me/bad id", license="mit")
    with pytest.raises(HubPushError, match="not a repository id"):
        _train(bad_id)


def _never_called(*args, **kwargs):
    raise AssertionError("the data was read before the push was checked")


def test_tracking_with_tensorboard_writes_event_files(small_ptb, tmp_path):
    """The train extra brings tensorboard: `--with_tracking --report_to tensorboard` logs the run's records as
    event files; a tracker that is not installed is an error, not a warning and an untracked run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hf_sentence_vae.training import check_trackers

    config = tiny_run(small_ptb, tmp_path / "run", max_train_steps=4, with_tracking=True, report_to="tensorboard")
    _train(config)
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    scalars = set()
    for event in events:
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert {"loss", "kl", "kl_weight", "validation_loss"} <= scalars, scalars
    check_trackers("tensorboard")
    with pytest.raises(ValueError, match="wandb is not installed"):
        check_trackers("wandb")


def test_bf16_mixed_precision_runs_under_autocast_and_tracks_fp32(small_ptb, tmp_path, monkeypatch):
    """`mixed_precision="bf16"` trains with CPU bf16 autocast (the Speed section's bf16 arm); the losses stay
    within bf16 rounding of the same fp32 run (same init, batches and noise)."""
    from hf_sentence_vae.modeling_sentence_vae import SentenceVAEModel

    seen: list[bool] = []
    original = SentenceVAEModel.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SentenceVAEModel, "forward", spy)
    bf16 = _train(tiny_run(small_ptb, tmp_path / "bf16", mixed_precision="bf16"))
    assert seen and all(seen)
    seen.clear()
    fp32 = _train(tiny_run(small_ptb, tmp_path / "fp32"))
    assert seen and not any(seen)
    got, want = _train_records(tmp_path / "bf16"), _train_records(tmp_path / "fp32")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.02)
    assert bf16["validation_loss"] == pytest.approx(fp32["validation_loss"], rel=0.02)


# --------------------------------------------------------------------------- impossible settings and runs that cannot train
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"latent_size": -1}, r"invalid latent_size=-1: must be a non-negative integer"),
        ({"dropout": 1.5}, r"invalid dropout=1.5"),
        ({"word_keep_rate": 2}, r"invalid word_keep_rate=2"),
        ({"latent_injection": "inputs"}, r"invalid latent_injection='inputs'"),
        ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size must be >= 1"),
        ({"learning_rate": -1}, r"learning_rate must be a finite number > 0"),
        ({"max_length": 2}, r"max_length must be >= 3"),
        ({"checkpointing_steps": "often"}, r"checkpointing_steps must be a positive integer or 'epoch'"),
        ({"kl_schedule": "cosine"}, r"kl_schedule must be one of"),
    ],
)
def test_impossible_settings(train_script, capsys, small_data, tmp_path, overrides, pattern):
    started = time.perf_counter()
    train_cli_error(train_script, capsys, tiny_argv(small_data, tmp_path / "run", **overrides), pattern)
    nothing_trained(tmp_path / "run")
    assert time.perf_counter() - started < 30


def _nan_at(monkeypatch, training_call: int) -> None:
    """Make the `training_call`-th training-mode forward pass return a NaN loss."""
    original = SentenceVAEModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == training_call:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SentenceVAEModel, "forward", forward)


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = TrainingConfig(**small_data, output_dir=str(out), **SIZES, max_train_steps=10, logging_steps=1)
    config.checkpointing_steps, config.per_device_train_batch_size, config.disable_tqdm = "4", 8, True
    _nan_at(monkeypatch, 7)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss \(NaN or inf\) at step 7; the last good checkpoint is .*checkpoint-4\b",
    ):
        train_run(config)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert checkpoint_problem(out / "checkpoint-4") is None
    assert [r["step"] for r in read_records(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in read_records(out) if "loss" in r)


def test_nan_loss_is_skipped_and_counted_under_the_flag(small_data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    config = TrainingConfig(**small_data, output_dir=str(out), **SIZES, max_train_steps=10, logging_steps=1)
    config.per_device_train_batch_size, config.disable_tqdm, config.on_nonfinite_loss = 8, True, "skip"
    _nan_at(monkeypatch, 7)
    with caplog.at_level(logging.WARNING):
        results = train_run(config)
    assert results["skipped_steps"] == 1 and results["global_step"] == 10
    assert "non-finite loss at step 7: batch skipped (1 so far)" in caplog.text
    assert [r["step"] for r in read_records(out) if "loss" in r] == list(range(1, 11))
    assert all(math.isfinite(r["loss"]) for r in read_records(out) if "loss" in r)


def _diverging_flags(small_data, out: Path) -> list[str]:
    return tiny_argv(small_data, out, max_train_steps=10, learning_rate=1e30, max_grad_norm=0, checkpointing_steps=1)


def _check_divergence_error(line: str, out: Path) -> None:
    step = int(line.split("at step ")[-1].split(";")[0])
    assert [p.name for p in list_checkpoints(out)][-1] == f"checkpoint-{step - 1}"
    assert checkpoint_problem(out / f"checkpoint-{step - 1}") is None


DIVERGENCE = r"non-finite loss \(NaN or inf\) at step \d+; the last good checkpoint is .*checkpoint-\d+"


def test_diverging_run_through_the_cli(train_script, capsys, small_data, tmp_path):
    """A learning rate of 1e30 makes the loss non-finite within a few steps: status 2, one line naming the step
    and the last good checkpoint, which stays intact."""
    out = tmp_path / "run"
    line = train_cli_error(train_script, capsys, _diverging_flags(small_data, out), DIVERGENCE)
    _check_divergence_error(line, out)


@pytest.mark.slow
def test_diverging_run_through_a_real_process(small_data, tmp_path):
    out = tmp_path / "run"
    proc = train_subprocess(_diverging_flags(small_data, out))
    assert_process_error_line(proc, DIVERGENCE)
    _check_divergence_error(proc.stderr.strip().splitlines()[-1], out)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"max_grad_norm": -1}, r"max_grad_norm must be >= 0 .* gradient ascent"),
        ({"max_grad_norm": "nan"}, r"max_grad_norm must be >= 0"),
        ({"logging_steps": 0}, r"logging_steps must be >= 1"),
        ({"eval_steps": 0}, r"eval_steps must be >= 1"),
        ({"num_threads": -2}, r"num_threads must be >= 1"),
        ({"free_bits": "nan"}, r"free_bits must be a finite number >= 0, got nan"),
        ({"learning_rate": "nan"}, r"learning_rate must be a finite number > 0, got nan"),
        ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0"),
        ({"save_total_limit": -1}, r"save_total_limit must be >= 0"),
    ],
)
def test_impossible_training_settings(scripts, capsys, small_data, tmp_path, overrides, pattern):
    train_cli_error(scripts["train"], capsys, tiny_argv(small_data, tmp_path / "run", **overrides), pattern)
    nothing_trained(tmp_path / "run")


def test_gradient_accumulation_longer_than_an_epoch(scripts, capsys, small_data, tmp_path):
    """64 sentences in batches of 8 are 8 batches: accumulating 20 would never take a step."""
    argv = tiny_argv(small_data, tmp_path / "run", gradient_accumulation_steps=20)
    train_cli_error(
        scripts["train"], capsys, argv, r"gradient_accumulation_steps=20 is more than the 8 batch\(es\) of an epoch"
    )
    nothing_trained(tmp_path / "run")


def test_skipping_every_batch_is_a_failure(scripts, capsys, small_data, tmp_path):
    """`--on_nonfinite_loss skip` with a learning rate of 1e30: after the first step every loss is non-finite. The
    run ends with status 2 and one line instead of exit 0 with a NaN validation loss."""
    out = tmp_path / "run"
    argv = tiny_argv(small_data, out, max_train_steps=6, learning_rate=1e30, on_nonfinite_loss="skip", eval_steps=2)
    line = train_cli_error(
        scripts["train"], capsys, argv, r"no finite validation loss was reached \(no evaluation was reached\)"
    )
    assert "batch(es) with a non-finite loss were skipped" in line


def test_no_optimizer_step_at_all_is_a_failure(small_data, tmp_path, monkeypatch):
    original = SentenceVAEModel.forward

    def nan_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SentenceVAEModel, "forward", nan_forward)
    with pytest.raises(FloatingPointError, match=r"the run trained nothing: no optimizer step was taken \(8 batch"):
        train_run(tiny_config(small_data, tmp_path / "run", max_train_steps=1, on_nonfinite_loss="skip"))
    assert not (tmp_path / "run" / "best").exists()
