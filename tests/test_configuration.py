"""SentenceVAEConfig: defaults, validation, serialisation and Auto* registration."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from hf_sentence_vae import SentenceVAEConfig, check_tokenizer_matches_model


def test_defaults_are_the_papers_ptb_vae():
    config = SentenceVAEConfig()
    assert config.model_type == "sentence-vae"
    assert (config.vocab_size, config.embedding_size, config.encoder_hidden_size, config.decoder_hidden_size) == (
        10002,
        353,
        191,
        191,
    )
    assert config.latent_size == 13
    assert config.word_keep_rate == pytest.approx(0.62)
    assert config.special_token_ids == {"pad_token_id": 0, "unk_token_id": 1, "bos_token_id": 2, "eos_token_id": 3}
    assert not config.is_rnnlm
    assert SentenceVAEConfig(latent_size=0).is_rnnlm


# (overrides, field named in the message, value repr named in the message)
INVALID = [
    (dict(vocab_size=0), "vocab_size", "0"),
    (dict(vocab_size=-5), "vocab_size", "-5"),
    (dict(vocab_size=10.0), "vocab_size", "10.0"),
    (dict(vocab_size=4), "vocab_size", "4"),
    (dict(embedding_size=0), "embedding_size", "0"),
    (dict(embedding_size=2.5), "embedding_size", "2.5"),
    (dict(encoder_hidden_size=-1), "encoder_hidden_size", "-1"),
    (dict(decoder_hidden_size=0), "decoder_hidden_size", "0"),
    (dict(max_sentence_length=0), "max_sentence_length", "0"),
    (dict(latent_size=-1), "latent_size", "-1"),
    (dict(latent_size=True), "latent_size", "True"),
    (dict(latent_size=1.5), "latent_size", "1.5"),
    (dict(num_highway_layers=-2), "num_highway_layers", "-2"),
    (dict(bidirectional_encoder="yes"), "bidirectional_encoder", "'yes'"),
    (dict(bidirectional_encoder=1), "bidirectional_encoder", "1"),
    (dict(tie_word_embeddings="no"), "tie_word_embeddings", "'no'"),
    (dict(share_embeddings=None), "share_embeddings", "None"),
    (dict(right_to_left=0), "right_to_left", "0"),
    (dict(latent_injection="inputs"), "latent_injection", "'inputs'"),
    (dict(variance_parameterization="relu"), "variance_parameterization", "'relu'"),
    (dict(word_keep_rate=1.5), "word_keep_rate", "1.5"),
    (dict(word_keep_rate=-0.1), "word_keep_rate", "-0.1"),
    (dict(word_keep_rate="0.5"), "word_keep_rate", "'0.5'"),
    (dict(dropout=1.0), "dropout", "1.0"),
    (dict(dropout=-0.5), "dropout", "-0.5"),
    (dict(decoder_weight_drop=1.0), "decoder_weight_drop", "1.0"),
    (dict(embedding_dropout=1.0), "embedding_dropout", "1.0"),
    (dict(embedding_dropout=-0.2), "embedding_dropout", "-0.2"),
    (dict(locked_dropout="yes"), "locked_dropout", "'yes'"),
    (dict(decoder_weight_drop=-0.1), "decoder_weight_drop", "-0.1"),
    (dict(decoder_weight_drop="0.3"), "decoder_weight_drop", "'0.3'"),
    (dict(initializer_range=0), "initializer_range", "0"),
    (dict(initializer_range=-0.02), "initializer_range", "-0.02"),
    (dict(pad_token_id=-1), "pad_token_id", "-1"),
    (dict(vocab_size=8, eos_token_id=8), "eos_token_id", "8"),
    (dict(unk_token_id=None), "unk_token_id", "None"),
    (dict(bos_token_id=0), "bos_token_id", "0"),  # collides with pad_token_id
    (
        dict(latent_size=0, latent_injection="initial_state_and_inputs"),
        "latent_injection",
        "'initial_state_and_inputs'",
    ),
]


@pytest.mark.parametrize(("overrides", "field", "value"), INVALID, ids=[f"{f}={v}" for _, f, v in INVALID])
def test_invalid_values_raise_naming_field_and_value(overrides, field, value):
    with pytest.raises(ValueError) as info:
        SentenceVAEConfig(**overrides)
    message = str(info.value)
    assert f"{field}={value}" in message, message


@pytest.mark.parametrize(
    "overrides",
    [
        dict(latent_size=0),
        dict(word_keep_rate=0.0),
        dict(word_keep_rate=1),
        dict(dropout=0.5),
        dict(tie_word_embeddings=True, embedding_size=16, decoder_hidden_size=16),
        dict(tie_word_embeddings=True, embedding_size=32, decoder_hidden_size=16),  # tied through a projection
        dict(latent_injection="initial_state_and_inputs", variance_parameterization="softplus"),
        dict(vocab_size=5),
        dict(pad_token_id=3, unk_token_id=2, bos_token_id=1, eos_token_id=0),
    ],
)
def test_valid_edge_values_are_accepted(overrides):
    config = SentenceVAEConfig(**overrides)
    for key, value in overrides.items():
        assert getattr(config, key) == value


def test_invalid_config_json_raises_on_load(tmp_path):
    SentenceVAEConfig(vocab_size=10).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["latent_size"] = -2
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="latent_size=-2"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocab_size=0"):
        SentenceVAEConfig.from_dict({"vocab_size": 0})


def test_config_round_trip_and_auto_config(tmp_path):
    config = SentenceVAEConfig(
        vocab_size=30,
        embedding_size=12,
        encoder_hidden_size=10,
        decoder_hidden_size=12,
        latent_size=5,
        bidirectional_encoder=True,
        num_highway_layers=2,
        latent_injection="initial_state_and_inputs",
        variance_parameterization="softplus",
        tie_word_embeddings=True,
        share_embeddings=False,
        word_keep_rate=0.25,
        dropout=0.1,
        locked_dropout=True,
        embedding_dropout=0.15,
        decoder_weight_drop=0.35,
        right_to_left=True,
        max_sentence_length=17,
        initializer_range=0.05,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sentence-vae"
    assert saved["auto_map"]["AutoConfig"] == "configuration_sentence_vae.SentenceVAEConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is SentenceVAEConfig
    fields = [
        "vocab_size",
        "embedding_size",
        "encoder_hidden_size",
        "decoder_hidden_size",
        "latent_size",
        "bidirectional_encoder",
        "num_highway_layers",
        "latent_injection",
        "variance_parameterization",
        "tie_word_embeddings",
        "share_embeddings",
        "word_keep_rate",
        "dropout",
        "locked_dropout",
        "embedding_dropout",
        "decoder_weight_drop",
        "right_to_left",
        "max_sentence_length",
        "initializer_range",
        "pad_token_id",
        "unk_token_id",
        "bos_token_id",
        "eos_token_id",
    ]
    for name in fields:
        assert getattr(loaded, name) == getattr(config, name), name


def test_auto_config_resolves_the_registered_class():
    config = AutoConfig.for_model("sentence-vae", vocab_size=12, latent_size=3)
    assert type(config) is SentenceVAEConfig
    assert (config.vocab_size, config.latent_size) == (12, 3)


def test_tokenizer_model_vocab_mismatch_raises(tiny_tokenizer, tiny_config):
    matching = tiny_config(vocab_size=len(tiny_tokenizer))
    check_tokenizer_matches_model(tiny_tokenizer, matching)  # no error

    wrong_size = tiny_config(vocab_size=len(tiny_tokenizer) + 3)
    with pytest.raises(ValueError, match=rf"{len(tiny_tokenizer)}.*{len(tiny_tokenizer) + 3}"):
        check_tokenizer_matches_model(tiny_tokenizer, wrong_size)

    wrong_ids = tiny_config(vocab_size=len(tiny_tokenizer), bos_token_id=3, eos_token_id=2)
    with pytest.raises(ValueError, match="bos_token_id"):
        check_tokenizer_matches_model(tiny_tokenizer, wrong_ids)


def test_ptb_tokenizer_matches_default_config(ptb_tokenizer):
    check_tokenizer_matches_model(ptb_tokenizer, SentenceVAEConfig())
    with pytest.raises(ValueError, match="vocab"):
        check_tokenizer_matches_model(ptb_tokenizer, SentenceVAEConfig(vocab_size=10000))


def test_tokenizer_ids_outside_model_vocab_raise_in_forward(tiny_tokenizer, tiny_model):
    model = tiny_model(vocab_size=len(tiny_tokenizer) - 3)
    batch = tiny_tokenizer(["the mat was red and the cat was happy ."], return_tensors="pt")
    assert int(batch["input_ids"].max()) >= model.config.vocab_size  # the premise of the test
    with pytest.raises(ValueError, match="vocabulary"):
        model(**batch)
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[2, -4, 3]]))
