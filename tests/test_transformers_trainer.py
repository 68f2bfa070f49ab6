"""`SentenceVAETrainer`: `transformers.Trainer` with the rate control of `train_scripts/train.py` (the KL weight of
each optimizer step, the encoder warm start, the target-rate controller), its logs, its evaluation bound and its
checkpointed state."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import quiet_training_arguments
from transformers import DataCollatorWithPadding

from hf_sentence_vae.rate_control import KLSchedule, RateControl
from hf_sentence_vae.training.transformers_trainer import RateControlCallback, SentenceVAETrainer

datasets = pytest.importorskip("datasets")


@pytest.fixture
def dataset(tiny_tokenizer, tiny_sentences):
    texts = list(tiny_sentences) * 4
    return datasets.Dataset.from_dict({"text": texts}).map(
        lambda rows: tiny_tokenizer(rows["text"]), batched=True, remove_columns=["text"]
    )


def _trainer(model, tokenizer, dataset, out, rate_control, **arguments):
    settings = dict(
        per_device_train_batch_size=4,
        per_device_eval_batch_size=len(dataset),
        learning_rate=1e-2,
        max_steps=6,
        logging_steps=1,
        seed=3,
    )
    settings.update(arguments)
    return SentenceVAETrainer(
        model=model,
        args=quiet_training_arguments(out, **settings),
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        rate_control=rate_control,
    )


def _record_kl_weights(model) -> list[float]:
    """The `kl_weight` of every training-mode forward of `model`, in order."""
    seen, forward = [], model.forward

    @functools.wraps(forward)  # transformers.Trainer reads the signature for the columns to keep
    def recording(*args, **kwargs):
        if model.training:
            seen.append(kwargs["kl_weight"])
        return forward(*args, **kwargs)

    model.forward = recording
    return seen


def test_each_step_trains_at_its_scheduled_kl_weight_and_logs_the_bound(tiny_model, tiny_tokenizer, dataset, tmp_path):
    """Every micro-batch of optimizer step t sees the schedule's weight at t (two per step with gradient
    accumulation); each training log holds the step's mean reconstruction loss and KL, whose weighted sum is the
    logged loss, and the weight."""
    model = tiny_model(train=True)
    schedule = KLSchedule("linear", kl_warmup_steps=4)
    trainer = _trainer(model, tiny_tokenizer, dataset, tmp_path, RateControl(schedule), gradient_accumulation_steps=2)
    seen = _record_kl_weights(model)
    trainer.train()
    assert seen == pytest.approx([schedule(step) for step in range(6) for _ in range(2)])
    logs = [entry for entry in trainer.state.log_history if "kl_weight" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]
    for entry in logs:
        assert entry["kl_weight"] == pytest.approx(schedule(entry["step"] - 1))
        assert entry["kl"] > 0
        bound = entry["reconstruction_loss"] + entry["kl_weight"] * entry["kl"]
        assert entry["loss"] == pytest.approx(bound, rel=1e-4)


def test_the_encoder_warm_start_redraws_the_decoder_once_and_drops_its_moments(
    tiny_model, tiny_tokenizer, dataset, tmp_path
):
    """`encoder_warmup_steps=3`: weight 0 for steps 0-2, then the decoder drawn afresh before step 3 (once) with its
    Adam moments dropped, so its parameters have taken 3 steps where the encoder's have taken 6."""
    model = tiny_model(train=True)
    calls = []
    reinitialize = model.reinitialize_decoder
    model.reinitialize_decoder = lambda seed: (calls.append(seed), reinitialize(seed))
    rate = RateControl(KLSchedule("constant", kl_constant=0.5), encoder_warmup_steps=3)
    trainer = _trainer(model, tiny_tokenizer, dataset, tmp_path, rate)
    seen = _record_kl_weights(model)
    trainer.train()
    assert seen == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    assert calls == [trainer.args.seed + 1] and trainer.rate_callback.decoder_reinitialized
    steps = {name: int(trainer.optimizer.state[p]["step"]) for name, p in model.named_parameters()}
    assert steps["decoder.weight_hh_l0"] == 3 and steps["lm_head.bias"] == 3
    assert steps["encoder.weight_hh_l0"] == 6


def test_the_rate_control_resumes_from_a_checkpoint(tiny_model, tiny_tokenizer, dataset, tmp_path):
    """The controller's state and the warm start's progress go into the checkpoint and come back on resuming: the
    resumed run does not redraw the decoder again and ends with the uninterrupted run's controller."""

    def run(out, resume=None):
        model = tiny_model(train=True)
        calls = []
        reinitialize = model.reinitialize_decoder
        model.reinitialize_decoder = lambda seed: (calls.append(seed), reinitialize(seed))
        rate = RateControl(KLSchedule(), kl_target=0.001, kl_target_kp=0.5, kl_target_ki=0.05, encoder_warmup_steps=1)
        trainer = _trainer(model, tiny_tokenizer, dataset, out, rate, save_strategy="steps", save_steps=3)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, calls

    whole, whole_calls = run(tmp_path / "whole")
    saved = whole.state.stateful_callbacks["RateControlCallback"]["attributes"]
    assert saved["decoder_reinitialized"] and whole_calls == [4]
    assert whole.rate_control.controller.weight > 0  # the KL rose above its target: the controller acted
    resumed, resumed_calls = run(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-3"))
    assert resumed_calls == []
    assert resumed.rate_callback.decoder_reinitialized
    assert resumed.rate_control.controller.integral == pytest.approx(whole.rate_control.controller.integral, rel=1e-4)
    assert resumed.rate_control.controller.weight == pytest.approx(whole.rate_control.controller.weight, rel=1e-4)


def test_evaluation_reports_the_negative_elbo(tiny_model, tiny_tokenizer, dataset, tmp_path):
    """`evaluate` gives the bound at full KL weight, without free bits or word dropout, whatever the training
    weight: the model's own reconstruction loss plus KL on the evaluation set."""
    model = tiny_model(word_keep_rate=0.5)
    trainer = _trainer(model, tiny_tokenizer, dataset, tmp_path, RateControl(KLSchedule(), free_bits=2.0))
    metrics = trainer.evaluate()
    batch = DataCollatorWithPadding(tiny_tokenizer)(list(dataset))
    model.eval()
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], return_logits=False)
    assert metrics["eval_reconstruction_loss"] == pytest.approx(float(out.reconstruction_loss), rel=1e-5)
    assert metrics["eval_kl"] == pytest.approx(float(out.kl), rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(float(out.reconstruction_loss + out.kl), rel=1e-5)


def test_the_callback_state_is_what_a_checkpoint_needs():
    rate = RateControl(KLSchedule(), kl_target=5.0)
    rate.controller.update(7.0)
    callback = RateControlCallback(rate)
    assert callback.state() == {
        "args": {},
        "attributes": {"decoder_reinitialized": False, "controller": rate.controller.state_dict()},
    }


def test_plain_trainer_divides_the_loss_by_gradient_accumulation(tiny_model, tiny_tokenizer, dataset, tmp_path):
    """`transformers.Trainer` itself (no rate control): two accumulated half batches update and log as one whole
    batch does, since the model declares that its loss takes no `num_items_in_batch` (a forward with `**kwargs`
    would otherwise be trusted to normalise the loss itself: its logged loss doubled)."""
    from transformers import DataCollatorForSeq2Seq, Trainer

    # with labels, as language-modelling data carries them (Trainer then counts num_items_in_batch)
    data = dataset.select(range(4)).map(lambda row: {"labels": row["input_ids"]})
    collator = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)
    results, losses = [], []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = tiny_model(latent_size=0, train=True)  # the RNNLM: a deterministic loss
        before = [p.detach().clone() for p in model.parameters()]
        args = quiet_training_arguments(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_steps=1,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        assert trainer.model_accepts_loss_kwargs is False
        losses.append(trainer.train().training_loss)
        results.append([p.detach() - b for p, b in zip(model.parameters(), before)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # its evaluation scores the batches' labels: the model's mean loss per sentence
    with torch.no_grad():
        expected = model.eval()(**collator([dict(row) for row in data])).loss.item()
    assert trainer.evaluate(data)["eval_loss"] == pytest.approx(expected, rel=1e-5)
    for whole, accumulated in zip(*results):
        torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)
    assert any(bool(update.abs().max() > 1e-3) for update in results[0]), "premise: the step moved the model"
