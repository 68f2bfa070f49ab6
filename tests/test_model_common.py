"""What `transformers`' generic model tests (`ModelTesterMixin`) expect of any model, checked on ours: tuples with
`return_dict=False`, `hidden_states` on request, finite logits, a deterministic evaluation-mode forward (sampling on
request), save/load, `torch.export`, `resize_token_embeddings`; and the training-mode sampling the loop relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import needs_data_dependent_export
from transformers import AutoModel

VARIANTS = {
    "default": dict(),
    "separate_embeddings_z_at_inputs": dict(share_embeddings=False, latent_injection="initial_state_and_inputs"),
    "tied_through_projection_z_at_outputs": dict(
        tie_word_embeddings=True, embedding_size=12, latent_injection="initial_state_inputs_and_outputs"
    ),
    "rnnlm": dict(latent_size=0),
}


@pytest.fixture
def inputs(random_batch):
    def make(config):
        input_ids, attention_mask = random_batch(config, [5, 2, 7], seed=1)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    return make


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_return_dict_false_gives_a_tuple(tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant])
    batch = inputs(model.config)
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        model.config.return_dict = False
        by_config = model(**batch)
    assert isinstance(as_tuple, tuple) and isinstance(by_config, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    for a, b in zip(as_tuple, expected):
        torch.testing.assert_close(a, b)
    assert torch.equal(as_tuple[0], as_dict.loss)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_hidden_states_on_request(tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant])
    cfg = model.config
    batch = inputs(cfg)
    with torch.no_grad():
        assert model(**batch).hidden_states is None
        out = model(**batch, output_hidden_states=True)
        model.config.output_hidden_states = True
        by_config = model(**batch)
    length = batch["input_ids"].shape[1] - 1  # the decoder reads <bos> w_1 ... w_n
    inputs_width = cfg.embedding_size + (cfg.latent_size if cfg.latent_injection != "initial_state" else 0)
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == 2  # embeddings, then the LSTM layer
    assert out.hidden_states[0].shape == (3, length, inputs_width)
    assert out.hidden_states[1].shape == (3, length, cfg.decoder_hidden_size)
    for a, b in zip(out.hidden_states, by_config.hidden_states):
        torch.testing.assert_close(a, b)
    # they are the states the logits come from
    features = out.hidden_states[1]
    if cfg.latent_injection == "initial_state_inputs_and_outputs":
        features = torch.cat([features, out.z.unsqueeze(1).expand(-1, length, -1)], -1)
    if hasattr(model, "output_projection"):
        features = model.output_projection(features)
    with torch.no_grad():
        logits = F.linear(features, model.lm_head.weight, model.lm_head.bias)
    predicted = ~model.logit_mask.isinf()
    torch.testing.assert_close(out.logits[..., predicted], logits[..., predicted])


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_logits_are_finite(tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant])
    cfg = model.config
    batch = inputs(cfg)
    with torch.no_grad():
        out = model(**batch)
        assert torch.isfinite(out.logits).all()
        never = out.logits[..., [cfg.pad_token_id, cfg.bos_token_id]]
        assert torch.all(never == torch.finfo(out.logits.dtype).min)  # still never predicted
        assert torch.isfinite(out.loss)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**batch)
        assert low.logits.dtype == torch.bfloat16 and torch.isfinite(low.logits).all()
        assert torch.all(low.logits[..., cfg.pad_token_id] == torch.finfo(torch.bfloat16).min)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_evaluation_mode_forward_is_deterministic(tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant], word_keep_rate=0.5, dropout=0.2)
    batch = inputs(model.config)
    with torch.no_grad():
        first, second = model(**batch), model(**batch)
    for name in ("loss", "logits", "z"):
        if getattr(first, name) is not None:
            torch.testing.assert_close(getattr(first, name), getattr(second, name))
    if model.config.latent_size:
        torch.testing.assert_close(first.z, first.mu)  # the posterior mean
        with torch.no_grad():
            sampled = model(**batch, sample_latent=True, generator=torch.Generator().manual_seed(0))
        assert not torch.allclose(sampled.z, sampled.mu)  # sampling on request


def test_training_mode_samples_z_as_the_loop_needs(tiny_model, inputs):
    model = tiny_model(train=True)
    batch = inputs(model.config)
    first, second = model(**batch), model(**batch)
    assert not torch.allclose(first.z, first.mu) and not torch.allclose(first.z, second.z)
    noise = torch.randn(3, model.config.latent_size, generator=torch.Generator().manual_seed(1))
    given = model(**batch, latent_noise=noise)
    torch.testing.assert_close(given.z, given.mu + torch.exp(0.5 * given.logvar) * noise)
    model.eval()  # noise given in evaluation mode is used too (it asks for a sample)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, latent_noise=noise).z, given.z)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_save_and_load_give_the_same_outputs(tmp_path, tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant])
    batch = inputs(model.config)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    with torch.no_grad():
        before, after = model(**batch), loaded(**batch)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.loss, before.loss, rtol=1e-5, atol=1e-5)


@needs_data_dependent_export
@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
@pytest.mark.parametrize("variant", ["default", "rnnlm"])
def test_torch_export_of_forward(tiny_model, inputs, variant, strict):
    """`torch.export` of the forward, non-strict and strict (traced by TorchDynamo, through the loss node's backward
    too): the exported program computes the eager logits and loss."""
    model = tiny_model(**VARIANTS[variant])
    batch = inputs(model.config)
    exported = torch.export.export(model, args=(), kwargs=batch, strict=strict)
    with torch.no_grad():
        eager = model(**batch)
    again = exported.module()(**batch)
    torch.testing.assert_close(again.logits if hasattr(again, "logits") else again["logits"], eager.logits)
    torch.testing.assert_close(again.loss if hasattr(again, "loss") else again["loss"], eager.loss)
    # the input checks skipped while tracing still run eagerly
    bad = batch["input_ids"].clone()
    bad[0, 0] = model.config.eos_token_id
    with pytest.raises(ValueError, match="<bos> words <eos>"):
        model(bad, batch["attention_mask"])


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_resize_token_embeddings(tiny_model, inputs, variant):
    model = tiny_model(**VARIANTS[variant], initializer_range=0.5)
    cfg = model.config
    old_size = cfg.vocab_size
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    batch = inputs(cfg)
    with torch.no_grad():
        before = model(**batch)

    model.resize_token_embeddings(old_size + 10)
    assert cfg.vocab_size == old_size + 10 and model.logit_mask.shape == (old_size + 10,)
    assert model.lm_head.weight.shape[0] == old_size + 10 and model.lm_head.bias.shape == (old_size + 10,)
    if hasattr(model, "encoder_embed_tokens"):
        assert model.encoder_embed_tokens.weight.shape[0] == old_size + 10
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight
    torch.testing.assert_close(model.get_input_embeddings().weight[:old_size], old_embeddings)
    new_ids = batch["input_ids"].clone()
    new_ids[0, 1] = old_size + 9  # a new token
    with torch.no_grad():
        grown = model(new_ids, batch["attention_mask"])
        same = model(**batch)
    assert grown.logits.shape[-1] == old_size + 10 and torch.isfinite(grown.logits).all()
    assert torch.all(grown.logits[..., [cfg.pad_token_id, cfg.bos_token_id]] == torch.finfo(torch.float32).min)
    # old tokens keep their (unnormalised) scores
    torch.testing.assert_close(same.logits[..., :old_size], before.logits, rtol=1e-5, atol=1e-5)
    ids = model.generate(num_samples=2, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert ids.shape[0] == 2 and int(ids.max()) < old_size + 10

    model.resize_token_embeddings(old_size - 5)
    assert cfg.vocab_size == old_size - 5 and model.logit_mask.shape == (old_size - 5,)
    small = batch["input_ids"].clamp(max=old_size - 6)
    with torch.no_grad():
        out = model(small, batch["attention_mask"])
    assert out.logits.shape[-1] == old_size - 5 and torch.isfinite(out.loss)
    model.generate(num_samples=2, max_new_tokens=5)
    with pytest.raises(ValueError, match="special tokens"):
        model.resize_token_embeddings(max(cfg.special_token_ids.values()))


def test_resized_model_saves_and_loads(tmp_path, tiny_model, inputs):
    model = tiny_model()
    model.resize_token_embeddings(model.config.vocab_size + 3, pad_to_multiple_of=8)
    assert model.config.vocab_size % 8 == 0 and model.logit_mask.shape == (model.config.vocab_size,)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.vocab_size == model.config.vocab_size
    batch = inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_quantized_layers_are_refused_by_name(tiny_model, inputs):
    """The model reads its layers' float weights: layers swapped for quantized ones (torch's dynamic quantization)
    give a ValueError naming them, not an AttributeError from deep inside."""
    quantization = getattr(torch.ao, "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    model = tiny_model()
    batch = inputs(model.config)
    quantized = quantization.quantize_dynamic(model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)
    for call in (
        lambda: quantized(**batch),
        lambda: quantized.encode(batch["input_ids"], batch["attention_mask"]),
        lambda: quantized.generate(latent=torch.zeros(1, model.config.latent_size)),
    ):
        with pytest.raises(ValueError, match=r"runs float layers, got quantized ones: \{.*'lm_head': 'Linear'"):
            call()
    model(**batch)  # the float model it was made from still runs
