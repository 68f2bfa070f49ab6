"""`SentenceVAEForSequenceClassification`: a trained VAE's encoder and a classifier on its posterior mean, loaded
through `AutoModelForSequenceClassification`, with `transformers`' losses by `problem_type`, fine-tuned by
`transformers.Trainer`, saved and loaded back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_training_arguments
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

from hf_sentence_vae import SentenceVAEForSequenceClassification

INIT = 0.5
ENCODERS = {
    "default": dict(),
    "own_embedding_bn_bidirectional": dict(
        share_embeddings=False, posterior_mean_bn_scale=0.6, bidirectional_encoder=True, num_highway_layers=1
    ),
}


@pytest.fixture
def batch(tiny_tokenizer, tiny_sentences):
    return tiny_tokenizer(tiny_sentences[:4], padding=True, return_tensors="pt")


@pytest.mark.parametrize("variant", list(ENCODERS), ids=list(ENCODERS))
def test_a_trained_vae_encoder_under_a_new_classifier(tiny_model, batch, tmp_path, variant):
    vae = tiny_model(initializer_range=INIT, **ENCODERS[variant])
    vae.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3).eval()
    assert type(model) is SentenceVAEForSequenceClassification and model.config.num_labels == 3
    # the encoder's weights (and BN-VAE's statistics) are the VAE's; nothing of the decoder is built
    encoder = {k: v for k, v in vae.state_dict().items() if k in model.state_dict() and not k.startswith("score.")}
    assert {k for k in model.state_dict() if not k.startswith("score.")} == set(encoder)
    for name, value in encoder.items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    assert not any(name.startswith(("decoder", "lm_head", "latent_to_state")) for name in model.state_dict())
    # the features are the posterior mean, the logits a linear map of them
    vae.eval()
    with torch.no_grad():
        mu, _ = vae.encode(batch["input_ids"], batch["attention_mask"])
        out = model(**batch)
    torch.testing.assert_close(out.hidden_states[0], mu)
    torch.testing.assert_close(out.logits, F.linear(mu, model.score.weight, model.score.bias))
    # left padding gives the same scores; right padding is what the tokenizer makes
    left = torch.stack([row.roll(int((m == 0).sum())) for row, m in zip(batch["input_ids"], batch["attention_mask"])])
    with torch.no_grad():
        torch.testing.assert_close(model(left, left.ne(0)).logits, out.logits)


def test_losses_follow_the_problem_type(tiny_config, batch):
    def model_for(**overrides):
        torch.manual_seed(0)
        return SentenceVAEForSequenceClassification(tiny_config(**overrides)).eval()

    single = model_for(num_labels=3)
    labels = torch.tensor([0, 2, 1, 2])
    out = single(**batch, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert single.config.problem_type == "single_label_classification"
    regression = model_for(num_labels=1)
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(**batch, labels=targets)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))
    multi = model_for(num_labels=3)
    flags = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    out = multi(**batch, labels=flags)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, flags))
    assert multi.config.problem_type == "multi_label_classification"
    as_tuple = multi(**batch, labels=flags, return_dict=False)
    torch.testing.assert_close(as_tuple[:2], (out.loss, out.logits))
    with pytest.raises(ValueError, match="problem_type must be"):
        model_for(num_labels=2, problem_type="ranking")(**batch, labels=labels)
    with pytest.raises(ValueError, match="needs latent_size > 0"):
        SentenceVAEForSequenceClassification(tiny_config(latent_size=0))
    with pytest.raises(ValueError, match="<bos> words <eos>"):
        single(batch["input_ids"][:, 1:])


def test_fine_tuned_by_trainer_then_saved_and_loaded(tiny_tokenizer, tiny_sentences, tiny_config, tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = tiny_sentences[:8]
    data = datasets.Dataset.from_dict({"text": texts, "labels": [i % 2 for i in range(len(texts))]}).map(
        lambda rows: tiny_tokenizer(rows["text"]), batched=True, remove_columns=["text"]
    )
    torch.manual_seed(0)
    model = SentenceVAEForSequenceClassification(tiny_config(num_labels=2, id2label={0: "no", 1: "yes"}))
    args = quiet_training_arguments(
        tmp_path / "run",
        per_device_train_batch_size=8,
        learning_rate=0.05,
        num_train_epochs=40,
        logging_steps=1,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tiny_tokenizer))
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert losses[-1] < 0.5 * losses[0], losses
    assert trainer.evaluate(data)["eval_loss"] == pytest.approx(losses[-1], abs=0.2)
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.id2label == {0: "no", 1: "yes"}
    batch = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits)
