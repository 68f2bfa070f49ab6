"""SentenceVAEModel.forward: the ELBO terms, the RNNLM baseline, word dropout, padding, right-to-left models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_sentence_vae.latent import gaussian_kl, gaussian_log_density, reparameterize

# Larger weights than the default initialisation so that KL terms and logits are far from trivial.
INIT = 0.5

VARIANTS = {
    "default": dict(),
    "bidirectional": dict(bidirectional_encoder=True),
    "highway_softplus_inputs": dict(
        num_highway_layers=2, variance_parameterization="softplus", latent_injection="initial_state_and_inputs"
    ),
    "separate_embeddings_tied_head": dict(share_embeddings=False, tie_word_embeddings=True),
    "latent_at_outputs_tied": dict(latent_injection="initial_state_inputs_and_outputs", tie_word_embeddings=True),
    "right_to_left": dict(right_to_left=True, bidirectional_encoder=True),
    "rnnlm": dict(latent_size=0),
    "permuted_special_ids": dict(pad_token_id=3, unk_token_id=2, bos_token_id=1, eos_token_id=0),
}


def _per_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits.double(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- the ELBO terms


@pytest.mark.parametrize("kl_weight", [0.0, 0.1, 0.5, 1.0, 3.7])
def test_loss_is_reconstruction_plus_weighted_kl(tiny_model, random_batch, kl_weight):
    model = tiny_model(initializer_range=INIT, word_keep_rate=0.62, train=True)
    input_ids, attention_mask = random_batch(model.config, [5, 3, 7, 1])
    out = model(
        input_ids,
        attention_mask,
        kl_weight=kl_weight,
        free_bits=0.0,
        generator=torch.Generator().manual_seed(1),
        return_logits=False,
    )
    assert out.kl.item() > 1e-3 and out.reconstruction_loss.item() > 1.0  # non-trivial terms
    assert torch.equal(out.loss, out.reconstruction_loss + kl_weight * out.kl)
    # The terms are the batch means of the per-sentence terms; the KL is the closed form of q(z|x).
    assert torch.equal(out.reconstruction_loss, out.reconstruction_per_sentence.mean())
    torch.testing.assert_close(out.kl_per_sentence, gaussian_kl(out.mu, out.logvar).sum(-1))
    assert torch.equal(out.kl, out.kl_per_sentence.mean())
    assert out.num_tokens.item() == 5 + 3 + 7 + 1 + 4  # words + one end of sentence per row


def test_gaussian_kl_agrees_with_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    logvar = torch.rand(3, 5, generator=generator, dtype=torch.float64) * 3.0 - 1.5
    closed_form = gaussian_kl(mu, logvar).sum(-1)

    z = reparameterize(mu, logvar, num_samples=200_000, generator=generator)
    assert z.shape == (200_000, 3, 5)
    log_ratio = gaussian_log_density(z, mu, logvar) - gaussian_log_density(z)  # log q(z|x) - log p(z)
    estimate = log_ratio.mean(0)
    std_error = log_ratio.std(0) / log_ratio.shape[0] ** 0.5
    assert torch.all((estimate - closed_form).abs() < 5 * std_error + 1e-3), (estimate, closed_form, std_error)
    assert torch.all(closed_form > 0.1)

    # Independent references: torch.distributions.
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p))
    torch.testing.assert_close(gaussian_log_density(z[:10], mu, logvar), q.log_prob(z[:10]).sum(-1))
    torch.testing.assert_close(gaussian_log_density(z[:10]), p.log_prob(z[:10]).sum(-1))


def test_reparameterize_has_the_posterior_moments():
    generator = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    z = reparameterize(mu, logvar, num_samples=100_000, generator=generator)
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.exp(), atol=0.03, rtol=0.02)


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_free_bits_clamps_the_batch_averaged_kl_per_dimension(tiny_model, random_batch, kl_weight):
    model = tiny_model(initializer_range=INIT, latent_size=6)
    input_ids, attention_mask = random_batch(model.config, [4, 6, 2, 5, 3])
    kwargs = dict(sample_latent=False, kl_weight=kl_weight)
    plain = model(input_ids, attention_mask, **kwargs)
    per_dim = gaussian_kl(plain.mu.double(), plain.logvar.double()).mean(0)  # mean over the batch, (Z,)
    assert per_dim.unique().numel() == 6
    ordered = per_dim.sort().values
    lambdas = [
        ordered[0].item() / 2,  # below every dimension: no effect
        ((ordered[2] + ordered[3]) / 2).item(),  # clamps half of them
        ordered[-1].item() * 2,  # above every dimension
    ]
    for lam in lambdas:
        out = model(input_ids, attention_mask, free_bits=lam, **kwargs)
        expected_term = torch.clamp(per_dim, min=lam).sum()
        assert torch.equal(out.reconstruction_loss, plain.reconstruction_loss)
        torch.testing.assert_close(
            (out.loss - out.reconstruction_loss).double(), kl_weight * expected_term, rtol=1e-5, atol=1e-6
        )
        # The reported KL stays the true KL.
        assert torch.equal(out.kl, plain.kl)
    # Below every dimension, free bits do not change the loss.
    out = model(input_ids, attention_mask, free_bits=lambdas[0], **kwargs)
    torch.testing.assert_close(out.loss, plain.loss)
    # Above every dimension, the KL term is latent_size * lambda.
    out = model(input_ids, attention_mask, free_bits=lambdas[2], **kwargs)
    torch.testing.assert_close(
        (out.loss - out.reconstruction_loss).double(),
        torch.tensor(kl_weight * 6 * lambdas[2], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
    )


def test_labels_with_ignore_index_drop_exactly_those_tokens(tiny_model, random_batch):
    model = tiny_model(initializer_range=INIT)
    input_ids, attention_mask = random_batch(model.config, [5, 3])
    latent = torch.randn(2, 4)
    full = model(input_ids, attention_mask, latent=latent)
    labels = input_ids.clone()
    labels[0, 2] = -100  # the second word of row 0: predicted at decoder position 1
    partial = model(input_ids, attention_mask, labels=labels, latent=latent)
    nll = _per_token_nll(full.logits[0, 1], input_ids[0, 2]).float()
    torch.testing.assert_close(partial.reconstruction_per_sentence[0], full.reconstruction_per_sentence[0] - nll)
    torch.testing.assert_close(partial.reconstruction_per_sentence[1], full.reconstruction_per_sentence[1])
    assert partial.num_tokens.item() == full.num_tokens.item() - 1
    with pytest.raises(ValueError, match="labels"):
        model(input_ids, attention_mask, labels=labels[:, :-1])


def test_log_likelihood_given_latent_is_minus_reconstruction(tiny_model, random_batch):
    model = tiny_model(initializer_range=INIT)
    input_ids, attention_mask = random_batch(model.config, [5, 3])
    latent = torch.randn(2, 4)
    out = model(input_ids, attention_mask, latent=latent)
    assert out.mu is None and out.kl.item() == 0.0 and torch.equal(out.z, latent)
    torch.testing.assert_close(
        model.log_likelihood_given_latent(input_ids, attention_mask, latent), -out.reconstruction_per_sentence
    )


def test_log_likelihood_given_latent_supplies_all_words_in_training_mode(tiny_model, random_batch):
    """The documented contract: "log p(x | z) ... with all words supplied (no word dropout unless the model is
    inputless)" -- also when the model happens to be in training mode (e.g. evaluation inside a training loop)."""
    model = tiny_model(initializer_range=INIT, word_keep_rate=0.62, dropout=0.0)
    input_ids, attention_mask = random_batch(model.config, [9, 7, 12], seed=8)
    latent = torch.randn(3, 4)
    expected = model.eval().log_likelihood_given_latent(input_ids, attention_mask, latent)
    model.train()
    for _ in range(3):
        torch.testing.assert_close(model.log_likelihood_given_latent(input_ids, attention_mask, latent), expected)


# ----------------------------------------------------------------------------- the RNNLM baseline


def test_rnnlm_is_a_plain_lstm_language_model(tiny_model, random_batch):
    model = tiny_model(latent_size=0, initializer_range=INIT, train=True)  # training mode: still no KL
    cfg = model.config
    assert not hasattr(model, "encoder") and not hasattr(model, "posterior")
    expected_params = sum(p.numel() for m in (model.embed_tokens, model.decoder, model.lm_head) for p in m.parameters())
    assert sum(p.numel() for p in model.parameters()) == expected_params

    input_ids, attention_mask = random_batch(cfg, [6, 2, 4])
    out = model(input_ids, attention_mask)
    assert out.mu is None and out.logvar is None and out.z is None
    assert out.kl.item() == 0.0 and torch.equal(out.kl_per_sentence, torch.zeros(3))
    assert torch.equal(out.loss, out.reconstruction_loss)

    # Hand computation: decoder LSTM from a zero state, then lm_head; <pad> and <bos> are never predicted.
    with torch.no_grad():
        hidden, _ = model.decoder(model.embed_tokens(input_ids[:, :-1]))
        logits = model.lm_head(hidden).double()
        logits[..., [cfg.pad_token_id, cfg.bos_token_id]] = float("-inf")
        targets = input_ids[:, 1:]
        nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        expected = nll.masked_fill(attention_mask[:, 1:] == 0, 0.0).sum(-1)
    torch.testing.assert_close(out.reconstruction_per_sentence.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss.double(), expected.mean(), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="RNNLM"):
        model.encode(input_ids, attention_mask)
    with pytest.raises(ValueError, match="RNNLM"):
        model(input_ids, attention_mask, latent=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="RNNLM"):
        model.sample_prior(2)


def test_pad_and_bos_are_never_predicted(tiny_model, random_batch):
    model = tiny_model(initializer_range=INIT, pad_token_id=3, unk_token_id=2, bos_token_id=1, eos_token_id=0)
    input_ids, attention_mask = random_batch(model.config, [4, 2])
    probs = model(input_ids, attention_mask).logits.softmax(-1)
    assert torch.all(probs[..., 3] == 0) and torch.all(probs[..., 1] == 0)
    assert torch.all(probs[..., 0] > 0) and torch.all(probs[..., 2] > 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_embedding_sharing_and_tying(tiny_model):
    tied = tiny_model(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    untied = tiny_model()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert not hasattr(untied, "encoder_embed_tokens")
    separate = tiny_model(share_embeddings=False)
    assert separate.encoder_embed_tokens.weight.data_ptr() != separate.embed_tokens.weight.data_ptr()
    pad = separate.config.pad_token_id
    assert torch.all(separate.embed_tokens.weight[pad] == 0)


def _step_view(model, log_probs: torch.Tensor) -> torch.Tensor:
    """Forward's log-probabilities as a decoding step reports them: the never-predicted ids (finite, the dtype's
    minimum, in forward's logits) at -inf."""
    return log_probs.masked_fill(model.logit_mask.isinf(), float("-inf"))


def test_tying_across_widths_goes_through_a_projection(tiny_model, random_batch):
    model = tiny_model(tie_word_embeddings=True, embedding_size=12, decoder_hidden_size=8, initializer_range=INIT)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert tuple(model.output_projection.weight.shape) == (12, 8) and model.output_projection.bias is None
    assert not hasattr(tiny_model(embedding_size=12, decoder_hidden_size=8), "output_projection")
    assert not hasattr(tiny_model(tie_word_embeddings=True), "output_projection")  # equal widths: no projection

    input_ids, attention_mask = random_batch(model.config, [4, 2, 6])
    latent = torch.randn(3, model.config.latent_size)
    out = model(input_ids, attention_mask, latent=latent)
    # logits = E (P h) + b, where h is the decoder LSTM's output
    hidden, _ = model.decoder(
        model._decoder_inputs(input_ids[:, :-1], latent),
        tuple(s.unsqueeze(0) for s in model.initial_decoder_state(latent)[:2]),
    )
    expected = model.output_projection(hidden) @ model.embed_tokens.weight.T + model._output_bias(
        torch.finfo(out.logits.dtype).min
    )
    torch.testing.assert_close(out.logits, expected)
    # the reconstruction does not depend on whether the logits are returned
    fused = model(input_ids, attention_mask, latent=latent, return_logits=False)
    torch.testing.assert_close(fused.reconstruction_per_sentence, out.reconstruction_per_sentence)
    # and so does decoding step by step
    step_log_probs, _ = model.decoder_step(input_ids[:, 0], model.initial_decoder_state(latent))
    torch.testing.assert_close(step_log_probs, _step_view(model, out.logits[:, 0].log_softmax(-1)))

    # many rows fold P into the weight (the product stays H wide); a few rows project h instead
    many, few = torch.randn(1000, 8), torch.randn(1, 8)
    features, weight = model._output_layer(many)
    assert features is many and tuple(weight.shape) == (model.config.vocab_size, 8)
    features, weight = model._output_layer(few)
    assert tuple(features.shape) == (1, 12) and weight is model.lm_head.weight
    torch.testing.assert_close(model._logits(many)[:1], model._logits(many[:1]))

    model.train()
    model(input_ids, attention_mask, return_logits=False).loss.backward()
    assert model.output_projection.weight.grad.abs().sum() > 0
    assert model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("tied", [False, True])
def test_latent_at_the_outputs_is_appended_to_every_decoder_state(tiny_model, random_batch, tied):
    model = tiny_model(
        latent_injection="initial_state_inputs_and_outputs", tie_word_embeddings=tied, initializer_range=INIT
    )
    hidden_size, latent_size = model.config.decoder_hidden_size, model.config.latent_size
    if tied:  # the state and z together are wider than the embedding: the projection takes both
        assert tuple(model.output_projection.weight.shape) == (model.config.embedding_size, hidden_size + latent_size)
    else:
        assert model.lm_head.in_features == hidden_size + latent_size and not hasattr(model, "output_projection")
    assert model.decoder.input_size == model.config.embedding_size + latent_size  # z still at every input

    input_ids, attention_mask = random_batch(model.config, [4, 2, 6])
    latent = torch.randn(3, latent_size)
    out = model(input_ids, attention_mask, latent=latent)
    initial = tuple(s.unsqueeze(0) for s in model.initial_decoder_state(latent)[:2])
    hidden, _ = model.decoder(model._decoder_inputs(input_ids[:, :-1], latent), initial)
    features = torch.cat([hidden, latent.unsqueeze(1).expand(-1, hidden.shape[1], -1)], -1)
    head = model.output_projection(features) if tied else features
    torch.testing.assert_close(
        out.logits, head @ model.lm_head.weight.T + model._output_bias(torch.finfo(out.logits.dtype).min)
    )
    fused = model(input_ids, attention_mask, latent=latent, return_logits=False)
    torch.testing.assert_close(fused.reconstruction_per_sentence, out.reconstruction_per_sentence)
    step_log_probs, _ = model.decoder_step(input_ids[:, 0], model.initial_decoder_state(latent))
    torch.testing.assert_close(step_log_probs, _step_view(model, out.logits[:, 0].log_softmax(-1)))

    # the skip path carries gradient to z's weights in the output layer
    model.train()
    model(input_ids, attention_mask, return_logits=False).loss.backward()
    head_weight = (model.output_projection if tied else model.lm_head).weight
    assert head_weight.grad[:, hidden_size:].abs().sum() > 0


def test_encoder_reads_its_own_embeddings_when_not_shared(tiny_model, random_batch):
    model = tiny_model(share_embeddings=False, initializer_range=INIT)
    input_ids, attention_mask = random_batch(model.config, [4])
    mu, _ = model.encode(input_ids, attention_mask)
    with torch.no_grad():
        model.embed_tokens.weight.normal_()  # the decoder's embeddings do not feed the encoder
    torch.testing.assert_close(model.encode(input_ids, attention_mask)[0], mu)
    with torch.no_grad():
        model.encoder_embed_tokens.weight.normal_()
    assert not torch.allclose(model.encode(input_ids, attention_mask)[0], mu)


# ----------------------------------------------------------------------------- word dropout


@pytest.mark.parametrize(
    ("latent_size", "latent_injection"),
    [
        (4, "initial_state"),
        (4, "initial_state_and_inputs"),
        (4, "initial_state_inputs_and_outputs"),
        (0, "initial_state"),
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_keep_rate_zero_makes_logits_independent_of_input_words(
    tiny_model, random_batch, latent_size, latent_injection, train
):
    overrides = dict(latent_size=latent_size, latent_injection=latent_injection, initializer_range=INIT)
    model = tiny_model(word_keep_rate=0.0, train=train, **overrides)
    first, mask = random_batch(model.config, [6, 3], seed=1)
    second, _ = random_batch(model.config, [6, 3], seed=2)
    assert not torch.equal(first, second)
    latent = torch.randn(2, latent_size) if latent_size else None
    a = model(first, mask, latent=latent).logits
    b = model(second, mask, latent=latent).logits
    assert torch.equal(a, b)

    # Premise: with all words supplied, the logits do depend on the words.
    seeing = tiny_model(word_keep_rate=1.0, train=train, **overrides)
    seeing.load_state_dict(model.state_dict())
    assert not torch.allclose(seeing(first, mask, latent=latent).logits, seeing(second, mask, latent=latent).logits)
    # The forward argument word_keep_rate=0 overrides the config (inputless decoding in any mode).
    c = seeing(first, mask, latent=latent, word_keep_rate=0.0).logits
    d = seeing(second, mask, latent=latent, word_keep_rate=0.0).logits
    assert torch.equal(c, d)  # exact: one model, the same inputs to every layer
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)  # another model object: kernels may differ by layout


def test_keep_rate_one_in_training_equals_evaluation(tiny_model, random_batch):
    model = tiny_model(word_keep_rate=1.0, initializer_range=INIT)
    input_ids, attention_mask = random_batch(model.config, [7, 4, 5])
    latent = torch.randn(3, 4)
    evaluation = model.eval()(input_ids, attention_mask, latent=latent).logits
    training = model.train()(input_ids, attention_mask, latent=latent, generator=torch.Generator().manual_seed(0))
    # Training and inference may run different LSTM kernels: equal up to float32 rounding, not bitwise.
    torch.testing.assert_close(training.logits, evaluation, rtol=1e-5, atol=1e-6)


def test_partial_keep_rate_drops_words_only_in_training(tiny_model, random_batch):
    model = tiny_model(word_keep_rate=0.5, initializer_range=INIT)
    input_ids, attention_mask = random_batch(model.config, [12, 12, 12])
    latent = torch.randn(3, 4)
    reference = model.train(False)(input_ids, attention_mask, latent=latent, word_keep_rate=1.0).logits
    evaluation = model(input_ids, attention_mask, latent=latent).logits  # eval: no word dropout
    assert torch.equal(evaluation, reference)
    training = model.train(True)(input_ids, attention_mask, latent=latent, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(training.logits, reference)
    again = model(input_ids, attention_mask, latent=latent, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.logits, training.logits)  # reproducible with a seeded generator


@pytest.mark.parametrize(
    "regularizer",
    [dict(decoder_weight_drop=0.5), dict(embedding_dropout=0.5), dict(dropout=0.3, locked_dropout=True)],
    ids=["weight_drop", "embedding_dropout", "locked_dropout"],
)
def test_decoder_regularizers_act_only_in_training(tiny_model, random_batch, regularizer):
    plain = tiny_model(initializer_range=INIT)
    model = tiny_model(initializer_range=INIT, **regularizer)
    input_ids, attention_mask = random_batch(model.config, [7, 4, 5])
    latent = torch.randn(3, 4)
    evaluation = model.eval()(input_ids, attention_mask, latent=latent).logits
    # Two model objects with the same weights: kernels may differ by memory layout, so a few ulps of tolerance.
    torch.testing.assert_close(
        evaluation, plain.eval()(input_ids, attention_mask, latent=latent).logits, rtol=1e-5, atol=1e-6
    )
    model.train()
    torch.manual_seed(0)
    first = model(input_ids, attention_mask, latent=latent).logits
    torch.manual_seed(1)
    second = model(input_ids, attention_mask, latent=latent).logits
    assert not torch.allclose(first, evaluation) and not torch.allclose(first, second)  # a fresh mask per batch
    torch.manual_seed(0)
    assert torch.equal(model(input_ids, attention_mask, latent=latent).logits, first)  # seeded: reproducible


@pytest.mark.parametrize("locked", [False, True])
def test_dropout_masks_are_shared_across_time_only_when_locked(tiny_model, locked):
    model = tiny_model(dropout=0.5, locked_dropout=locked)
    activations = torch.ones(4, 9, 16)
    assert torch.equal(model.eval()._dropout(activations), activations)  # evaluation: no dropout
    torch.manual_seed(0)
    dropped = model.train()._dropout(activations)
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1/(1-p)
    constant_over_time = bool((dropped == dropped[:, :1]).all())
    assert constant_over_time == locked
    # each sentence gets its own mask
    assert not torch.equal(dropped[0], dropped[1])


def test_embedding_dropout_drops_whole_word_types(tiny_model, random_batch):
    model = tiny_model(initializer_range=INIT, embedding_dropout=0.5)
    ids, _ = random_batch(model.config, [30, 30, 30])
    embedded = torch.ones(*ids.shape, 3)
    assert torch.equal(model.eval()._embedding_dropout(ids, embedded), embedded)
    torch.manual_seed(0)
    scale = model.train()._embedding_dropout(ids, embedded)[..., 0]
    assert set(scale.unique().tolist()) == {0.0, 2.0}
    for token in ids.unique():  # every occurrence of a word type reads the same (dropped or kept) vector
        assert len(scale[ids == token].unique()) == 1


def test_embedding_dropout_spares_the_encoder_and_the_tied_output_layer(tiny_model, random_batch):
    """Dropping a word type zeroes its decoder inputs only: the encoder's view of the sentence (hence q(z|x))
    and the tied output layer's row for that word are untouched."""
    model = tiny_model(initializer_range=INIT, embedding_dropout=0.9, tie_word_embeddings=True, train=True)
    input_ids, attention_mask = random_batch(model.config, [7, 4, 5])
    table = model.embed_tokens.weight.detach().clone()
    torch.manual_seed(0)
    out = model(input_ids, attention_mask, sample_latent=False)
    mu, logvar = model.eval().encode(input_ids, attention_mask)
    torch.testing.assert_close(out.mu, mu)
    torch.testing.assert_close(out.logvar, logvar)
    assert torch.equal(model.embed_tokens.weight, table)  # the mask is applied to the lookups, not the table
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize(
    "special",
    [dict(), dict(pad_token_id=3, unk_token_id=2, bos_token_id=1, eos_token_id=0)],
    ids=["default", "permuted"],
)
def test_word_dropout_never_touches_padding_bos_eos(tiny_model, special):
    model = tiny_model(**special)
    cfg = model.config
    pad, unk, bos, eos = cfg.pad_token_id, cfg.unk_token_id, cfg.bos_token_id, cfg.eos_token_id
    words = [i for i in range(cfg.vocab_size) if i not in (pad, unk, bos, eos)]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(200):
        n = int(torch.randint(1, 15, (1,), generator=generator))
        sentence = [bos] + [words[int(i)] for i in torch.randint(len(words), (n,), generator=generator)] + [eos]
        rows.append(sentence + [pad] * (17 - len(sentence)))
    ids = torch.tensor(rows)
    is_special = (ids == pad) | (ids == bos) | (ids == eos)

    dropped_all = model.word_dropout(ids, 0.0)
    assert torch.equal(dropped_all[is_special], ids[is_special])
    assert torch.all(dropped_all[~is_special] == unk)

    assert torch.equal(model.word_dropout(ids, 1.0), ids)

    half = model.word_dropout(ids, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(half[is_special], ids[is_special])
    changed = half != ids
    assert torch.all(half[changed] == unk)
    rate = changed.sum().item() / (~is_special).sum().item()
    assert 0.45 < rate < 0.55, rate
    again = model.word_dropout(ids, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, half)

    low = model.word_dropout(ids, 0.9, generator=torch.Generator().manual_seed(1))
    low_rate = (low != ids).sum().item() / (~is_special).sum().item()
    assert 0.06 < low_rate < 0.14, low_rate


# ----------------------------------------------------------------------------- padding


def _pad_to(input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int, pad_value: int):
    extra = length - input_ids.shape[1]
    return (
        F.pad(input_ids, (0, extra), value=pad_value),
        F.pad(attention_mask, (0, extra), value=0),
    )


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda ids, mask: (ids[0], mask[0]), r"\(batch, length\) tensor, got shape \(7,\)"),
        (lambda ids, mask: (ids[:, :1], mask[:, :1]), "length >= 2"),
        (lambda ids, mask: (ids, mask[:, :5]), r"attention_mask must have the shape of input_ids \(2, 7\)"),
        (
            lambda ids, mask: (ids.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(10**6)), mask),
            "id 1000000 outside the model's vocabulary",
        ),
        (
            lambda ids, mask: (ids.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(-1)), mask),
            "outside the model's vocabulary",
        ),
        (lambda ids, mask: (ids[:, 1:], mask[:, 1:]), r"row 0 is \["),
        (  # row 1 (5 of 7 tokens) padded on the left
            lambda ids, mask: (torch.stack([ids[0], ids[1].roll(2)]), torch.stack([mask[0], mask[1].roll(2)])),
            "row 1 of input_ids is left-padded",
        ),
        (  # row 0 made a sentence pair, <bos> a <eos> b <eos>
            lambda ids, mask: (ids.index_put((torch.tensor([0]), torch.tensor([3])), torch.tensor(3)), mask),
            r"row 0 of input_ids holds <bos> or <eos> inside its sentence .*sentence pair",
        ),
    ],
    ids=["one_dim", "too_short", "mask_shape", "id_too_large", "negative_id", "no_bos", "left_padded", "pair"],
)
def test_bad_inputs_raise_naming_the_problem(tiny_model, random_batch, corrupt, match):
    model = tiny_model()
    input_ids, attention_mask = random_batch(model.config, [5, 3], seed=0)
    input_ids, attention_mask = corrupt(input_ids, attention_mask)
    with pytest.raises(ValueError, match=match):
        model(input_ids, attention_mask)
    if match.startswith("row 1"):  # generation and encoding accept left padding
        torch.testing.assert_close(
            model.encode(input_ids, attention_mask), model.encode(*random_batch(model.config, [5, 3], seed=0))
        )
    else:
        with pytest.raises(ValueError, match=match):
            model.encode(input_ids, attention_mask)
        with pytest.raises(ValueError, match=match):
            model.generate(input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_padding_changes_nothing(tiny_model, random_batch, variant):
    model = tiny_model(initializer_range=INIT, **VARIANTS[variant])
    cfg = model.config
    input_ids, attention_mask = random_batch(cfg, [5, 2, 8, 1], seed=3)
    batch = model(input_ids, attention_mask, sample_latent=False)
    for row in range(4):
        n = int(attention_mask[row].sum())
        single_ids, single_mask = input_ids[row : row + 1, :n], attention_mask[row : row + 1, :n]
        reference = model(single_ids, single_mask, sample_latent=False)
        for length in (n, n + 1, n + 6):
            padded_ids, padded_mask = _pad_to(single_ids, single_mask, length, cfg.pad_token_id)
            out = model(padded_ids, sample_latent=False)  # attention mask inferred from <pad>
            torch.testing.assert_close(out.reconstruction_per_sentence, reference.reconstruction_per_sentence)
            torch.testing.assert_close(out.kl_per_sentence, reference.kl_per_sentence)
            # With an explicit attention mask, whatever sits in the padded positions is ignored.
            garbage_ids, _ = _pad_to(single_ids, single_mask, length, cfg.unk_token_id)
            out = model(garbage_ids, padded_mask, sample_latent=False)
            torch.testing.assert_close(out.reconstruction_per_sentence, reference.reconstruction_per_sentence)
            torch.testing.assert_close(out.kl_per_sentence, reference.kl_per_sentence)
            assert out.num_tokens.item() == n - 1
        # A row of a padded batch scores like the sentence alone.
        torch.testing.assert_close(batch.reconstruction_per_sentence[row], reference.reconstruction_per_sentence[0])
        torch.testing.assert_close(batch.kl_per_sentence[row], reference.kl_per_sentence[0])


@pytest.mark.parametrize("variant", ["default", "right_to_left", "rnnlm"])
def test_return_logits_paths_agree(tiny_model, random_batch, variant):
    model = tiny_model(initializer_range=INIT, word_keep_rate=0.7, train=True, **VARIANTS[variant])
    input_ids, attention_mask = random_batch(model.config, [5, 2, 8, 1], seed=4)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[2, 3] = -100
    results = []
    for return_logits in (True, False):
        out = model(
            input_ids,
            attention_mask,
            labels=labels,
            kl_weight=0.4,
            free_bits=0.01,
            return_logits=return_logits,
            generator=torch.Generator().manual_seed(5),
        )
        assert (out.logits is not None) == return_logits
        results.append(out)
    with_logits, without = results
    torch.testing.assert_close(with_logits.reconstruction_per_sentence, without.reconstruction_per_sentence)
    torch.testing.assert_close(with_logits.loss, without.loss)
    assert torch.equal(with_logits.kl_per_sentence, without.kl_per_sentence)
    assert with_logits.num_tokens.item() == without.num_tokens.item() == 5 + 2 + 8 + 1 + 4 - 1
    assert with_logits.logits.shape == (4, input_ids.shape[1] - 1, model.config.vocab_size)
    # the returned logits score the sentences as the loss does
    targets = labels[:, 1:] if variant != "right_to_left" else model.to_decoder_order(labels, attention_mask)[:, 1:]
    token_nll = -with_logits.logits.float().log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    from_logits = token_nll.masked_fill(targets == -100, 0.0).sum(-1)
    torch.testing.assert_close(from_logits, with_logits.reconstruction_per_sentence)


# ----------------------------------------------------------------------------- right-to-left


def _reverse_words(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    reversed_ids = input_ids.clone()
    for row in range(input_ids.shape[0]):
        n = int(attention_mask[row].sum())
        reversed_ids[row, 1 : n - 1] = input_ids[row, 1 : n - 1].flip(0)
    return reversed_ids


@pytest.mark.parametrize("latent_size", [4, 0])
def test_right_to_left_equals_left_to_right_on_reversed_sentences(tiny_model, random_batch, latent_size):
    l2r = tiny_model(initializer_range=INIT, latent_size=latent_size)
    r2l = tiny_model(initializer_range=INIT, latent_size=latent_size, right_to_left=True, seed=1)
    r2l.load_state_dict(l2r.state_dict())
    input_ids, attention_mask = random_batch(l2r.config, [5, 2, 8, 1, 3], seed=6)
    reversed_ids = _reverse_words(input_ids, attention_mask)
    assert not torch.equal(reversed_ids, input_ids)
    latent = torch.randn(5, latent_size) if latent_size else None

    r2l_out = r2l(input_ids, attention_mask, latent=latent)
    l2r_out = l2r(reversed_ids, attention_mask, latent=latent)
    torch.testing.assert_close(r2l_out.reconstruction_per_sentence, l2r_out.reconstruction_per_sentence)
    torch.testing.assert_close(r2l_out.logits, l2r_out.logits)
    # ... and differs from the left-to-right score of the sentence as written.
    forward_order = l2r(input_ids, attention_mask, latent=latent).reconstruction_per_sentence
    assert not torch.allclose(r2l_out.reconstruction_per_sentence[[0, 2, 4]], forward_order[[0, 2, 4]])
    torch.testing.assert_close(
        r2l.log_likelihood_given_latent(input_ids, attention_mask, latent),
        l2r.log_likelihood_given_latent(reversed_ids, attention_mask, latent),
    )


# ----------------------------------------------------------------------------- invalid inputs


def test_inputs_must_be_bos_words_eos(tiny_model):
    model = tiny_model()
    bad_inputs = {
        "no bos": [[5, 6, 7, 3]],
        "no eos": [[2, 5, 6, 7]],
        "eos then words": [[2, 5, 3, 6, 7]],
        "second row without eos": [[2, 5, 3, 0], [2, 5, 6, 7]],
        "padding before eos": [[2, 5, 0, 6, 3]],
        "only bos": [[2, 0, 0]],
    }
    for rows in bad_inputs.values():
        with pytest.raises(ValueError, match="<bos>"):
            model(torch.tensor(rows))
        with pytest.raises(ValueError, match="<bos>"):
            model.encode(torch.tensor(rows))
    # An attention mask that does not end on <eos>.
    with pytest.raises(ValueError, match="<bos>"):
        model(torch.tensor([[2, 5, 6, 3]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="length"):
        model(torch.tensor([[2]]))
    with pytest.raises(ValueError, match="shape"):
        model(torch.tensor([2, 5, 3]))
    model(torch.tensor([[2, 3]]))  # the empty sentence is valid


def test_ids_outside_vocabulary_raise(tiny_model):
    model = tiny_model()
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=f"{vocab}"):
        model(torch.tensor([[2, vocab, 3]]))
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[2, 5, vocab + 100, 3, 0]]))
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[2, -1, 3]]))


def test_latent_shape_and_keep_rate_are_checked(tiny_model):
    model = tiny_model()
    ids = torch.tensor([[2, 5, 3], [2, 6, 3]])
    with pytest.raises(ValueError, match="latent"):
        model(ids, latent=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="latent"):
        model(ids, latent=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="word_keep_rate"):
        model(ids, word_keep_rate=1.5)
