"""Rate control (`hf_sentence_vae.rate_control`): the KL-weight schedules, free bits, the target-rate controller of
the KL weight, batch-normalised posterior means (BN-VAE), the bag-of-words loss and the decoder re-initialisation of the encoder warm start.
The trainer's use of them is tested in test_training.py."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sentence_vae.configuration_sentence_vae import SentenceVAEConfig
from hf_sentence_vae.latent import gaussian_kl
from hf_sentence_vae.rate_control import KLSchedule, KLTargetController, cyclical_weight, linear_weight, sigmoid_weight


# --------------------------------------------------------------------------- the KL-target controller
def test_controller_raises_the_weight_above_the_target_and_lowers_it_below():
    controller = KLTargetController(target=10.0, kp=0.01, ki=1e-3)
    weights = [controller.update(30.0) for _ in range(50)]
    assert all(b > a for a, b in zip(weights, weights[1:]))  # KL above target: the weight keeps rising
    high = weights[-1]
    lowered = [controller.update(2.0) for _ in range(50)]
    assert all(b < a for a, b in zip(lowered, lowered[1:])) and lowered[-1] < high
    for _ in range(10_000):
        controller.update(0.0)
    assert controller.weight == 0.0  # held at min_weight, no penalty while the code carries too little
    assert controller.integral == pytest.approx(-controller.kp)  # no wind-up below the range it acts on


def test_controller_formula_one_step():
    controller = KLTargetController(target=5.0, kp=0.2, ki=0.01, integral=0.1)
    weight = controller.update(8.0)
    error = 5.0 - 8.0
    expected = 0.2 / (1.0 + math.exp(error)) + (0.1 - 0.01 * error)
    assert weight == pytest.approx(expected)
    assert controller.integral == pytest.approx(0.1 - 0.01 * error)


def test_controller_weight_stays_in_range_and_ignores_non_finite_kl():
    controller = KLTargetController(target=1.0, kp=0.5, ki=0.5, max_weight=1.0)
    for _ in range(100):
        assert 0.0 <= controller.update(1e6) <= 1.0
    assert controller.weight == 1.0 and controller.integral == 1.0  # integral capped at the range
    before = controller.state_dict()
    controller.update(float("nan"))
    assert controller.state_dict() == before


def test_controller_holds_the_target_on_a_toy_system():
    """KL(w) = 40 exp(-4 w): the closed loop settles where KL(w) = target."""
    controller = KLTargetController(target=10.0, kp=0.01, ki=2e-3)
    kl = 40.0
    for _ in range(5000):
        kl = 40.0 * math.exp(-4.0 * controller.update(kl))
    assert kl == pytest.approx(10.0, rel=0.02)


def test_controller_state_dict_round_trip_continues_identically():
    a = KLTargetController(target=3.0, kp=0.05, ki=1e-2)
    for kl in (10.0, 8.0, 4.0):
        a.update(kl)
    b = KLTargetController(target=3.0, kp=0.05, ki=1e-2)
    b.load_state_dict(a.state_dict())
    assert [a.update(x) for x in (2.0, 5.0, 1.0)] == [b.update(x) for x in (2.0, 5.0, 1.0)]


@pytest.mark.parametrize("name", ["target", "kp", "ki"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_controller_rejects_bad_settings(name, value):
    kwargs = dict(target=1.0)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        KLTargetController(**kwargs)


# --------------------------------------------------------------------------- BN-VAE and the bag-of-words loss
@pytest.mark.parametrize("field", ["posterior_mean_bn_scale", "bag_of_words_weight"])
@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf"), "1"])
def test_latent_regularizer_settings_must_be_finite_non_negative_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        SentenceVAEConfig(vocab_size=20, **{field: value})


@pytest.mark.parametrize("field", ["posterior_mean_bn_scale", "bag_of_words_weight"])
def test_latent_regularizers_are_refused_for_the_rnnlm(field):
    with pytest.raises(ValueError, match=field):
        SentenceVAEConfig(vocab_size=20, latent_size=0, **{field: 0.5})


def test_batch_normalised_means_have_the_fixed_scale_and_a_kl_floor(tiny_model, random_batch):
    """In training mode each dimension's means over the batch have mean = the learned shift and (biased) standard
    deviation = gamma, so the batch-mean KL of every dimension is at least gamma^2 / 2."""
    gamma = 0.6
    model = tiny_model(seed=0, train=True, latent_size=5, posterior_mean_bn_scale=gamma)
    with torch.no_grad():
        model.posterior_mean_shift.copy_(torch.tensor([0.0, 0.5, -1.0, 0.2, 0.0]))
        # Means that differ across sentences by much more than BatchNorm's eps (at initialisation they differ by ~1e-4).
        model.posterior.weight.mul_(300.0)
    input_ids, attention_mask = random_batch(model.config, [3, 5, 7, 4, 6, 2, 8, 5], seed=1)
    mu, logvar = model.encode(input_ids, attention_mask)
    torch.testing.assert_close(mu.mean(0), model.posterior_mean_shift.detach(), atol=1e-5, rtol=0)
    # BatchNorm's eps (1e-5 next to variances of ~1e-3 here) keeps the scale a little under gamma.
    torch.testing.assert_close(mu.std(0, unbiased=False), torch.full((5,), gamma), atol=0, rtol=0.03)
    per_dim = gaussian_kl(mu, logvar).mean(0)
    assert bool((per_dim >= 0.97 * gamma**2 / 2).all()), per_dim


def test_batch_normalised_means_use_running_statistics_in_eval_mode_and_survive_save_load(
    tiny_model, random_batch, tmp_path
):
    from hf_sentence_vae import SentenceVAEModel

    model = tiny_model(seed=0, train=True, posterior_mean_bn_scale=0.5)
    input_ids, attention_mask = random_batch(model.config, [3, 5, 7, 4], seed=2)
    for _ in range(3):
        model(input_ids, attention_mask)  # updates the running statistics
    model.eval()
    assert int(model.posterior_mean_norm.num_batches_tracked) == 3
    one, _ = model.encode(input_ids[:1], attention_mask[:1])
    four, _ = model.encode(input_ids, attention_mask)
    torch.testing.assert_close(one[0], four[0])  # eval: a sentence's mean does not depend on its batch
    model.save_pretrained(tmp_path)
    reloaded = SentenceVAEModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.encode(input_ids, attention_mask)[0], four, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- bag-of-words loss
def test_without_the_bag_of_words_loss_the_model_has_no_layer_and_no_term(tiny_model, random_batch):
    model = tiny_model(seed=0, train=True)
    assert not hasattr(model, "bag_of_words_head")
    assert not any(name.startswith("bag_of_words") for name in model.state_dict())
    input_ids, attention_mask = random_batch(model.config, [3, 5, 2], seed=1)
    out = model(input_ids, attention_mask, kl_weight=0.3)
    assert out.bag_of_words_loss is None
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.3 * out.kl)


@pytest.mark.parametrize("right_to_left", [False, True])
def test_bag_of_words_loss_scores_every_target_word_from_z(tiny_model, random_batch, right_to_left):
    """The term equals -sum over each sentence's words and <eos> of log softmax(W z + b) (order ignored, so a
    right-to-left model gets the same), and `loss` adds it with the config's weight."""
    weight = 0.7
    model = tiny_model(seed=0, train=True, bag_of_words_weight=weight, right_to_left=right_to_left)
    input_ids, attention_mask = random_batch(model.config, [3, 5, 2, 6], seed=1)
    noise = torch.randn(4, model.config.latent_size, generator=torch.Generator().manual_seed(2))
    out = model(input_ids, attention_mask, kl_weight=0.3, latent_noise=noise)
    logits = model.bag_of_words_head(out.z).detach()
    logits[:, [model.config.pad_token_id, model.config.bos_token_id]] = float("-inf")
    log_probs = torch.log_softmax(logits, -1)
    expected = []
    for row in range(4):
        targets = input_ids[row, 1 : int(attention_mask[row].sum())]  # words and <eos>
        expected.append(-log_probs[row, targets].sum())
    torch.testing.assert_close(out.bag_of_words_loss.detach(), torch.stack(expected).mean())
    total = out.reconstruction_loss + 0.3 * out.kl + weight * out.bag_of_words_loss
    torch.testing.assert_close(out.loss, total)


def test_bag_of_words_loss_of_a_uniform_layer_is_length_times_log_vocabulary(tiny_model, random_batch):
    """A zero layer predicts every word but <pad> and <bos> with probability 1 / (V - 2)."""
    model = tiny_model(seed=0, bag_of_words_weight=1.0)
    with torch.no_grad():
        model.bag_of_words_head.weight.zero_()
        model.bag_of_words_head.bias.zero_()
    lengths = [3, 5, 2]
    input_ids, attention_mask = random_batch(model.config, lengths, seed=1)
    out = model(input_ids, attention_mask)
    tokens = sum(n + 1 for n in lengths) / len(lengths)
    expected = tokens * math.log(model.config.vocab_size - 2)
    assert float(out.bag_of_words_loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_bag_of_words_loss_trains_the_encoder_and_its_layer_not_the_decoder(tiny_model, random_batch):
    model = tiny_model(seed=0, train=True, bag_of_words_weight=1.0)
    input_ids, attention_mask = random_batch(model.config, [3, 5, 2], seed=1)
    model(input_ids, attention_mask).bag_of_words_loss.backward()
    assert model.bag_of_words_head.weight.grad.abs().sum() > 0
    assert model.encoder.weight_ih_l0.grad.abs().sum() > 0
    assert model.posterior.weight.grad.abs().sum() > 0
    assert model.decoder.weight_ih_l0.grad is None and model.lm_head.weight.grad is None
    # The layer is the code's, not the decoder's: the encoder warm start does not redraw it.
    assert all(model.bag_of_words_head is not m for m in model.decoder_modules())
    assert all(p is not model.bag_of_words_head.weight for p in model.inference_parameters())


def test_bag_of_words_layer_follows_a_vocabulary_resize(tiny_model):
    model = tiny_model(seed=0, bag_of_words_weight=1.0)
    old = model.bag_of_words_head.weight.detach().clone()
    model.resize_token_embeddings(model.config.vocab_size + 3)
    assert model.bag_of_words_head.weight.shape == (model.config.vocab_size, model.config.latent_size)
    assert model.bag_of_words_head.bias.shape == (model.config.vocab_size,)
    torch.testing.assert_close(model.bag_of_words_head.weight[: old.shape[0]].detach(), old)


# --------------------------------------------------------------------------- decoder re-initialisation
@pytest.mark.parametrize("tied", [False, True])
def test_reinitialize_decoder_redraws_the_decoder_and_keeps_the_encoder(tiny_model, tied):
    model = tiny_model(seed=0, tie_word_embeddings=tied)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # "trained" weights, away from any initialisation
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.reinitialize_decoder(seed=7)
    decoder = {
        f"{name}.{p_name}"
        for name in ("decoder", "latent_to_state")
        for p_name, _ in getattr(model, name).named_parameters()
    }
    decoder.add("lm_head.bias")
    if not tied:
        decoder.add("lm_head.weight")
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])  # exact: copies of the same tensors, no arithmetic in between
        assert changed == (name in decoder), name
    assert float(model.lm_head.bias.detach().abs().max()) == 0.0
    again = tiny_model(seed=0, tie_word_embeddings=tied)
    with torch.no_grad():
        for p in again.parameters():
            p.add_(0.5)
    again.reinitialize_decoder(seed=7)
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name  # the same seed draws the same weights (same process, same ops)


def test_lstms_are_drawn_by_the_model_whatever_the_transformers_release(tiny_model, monkeypatch):
    """`transformers` initialises LSTMs itself only from 5.9 on: under a base `_init_weights` that leaves them alone
    (as 5.4-5.8 do), the model still draws its LSTMs (Xavier-uniform weights, zero biases) at construction, and
    `reinitialize_decoder` still redraws the decoder's."""
    import math

    from transformers import PreTrainedModel

    base = PreTrainedModel._init_weights

    def without_lstms(self, module):
        if not isinstance(module, torch.nn.LSTM):
            base(self, module)

    monkeypatch.setattr(PreTrainedModel, "_init_weights", without_lstms)
    model = tiny_model(seed=0)
    for lstm in (model.encoder, model.decoder):
        for name, param in lstm.named_parameters():
            if "bias" in name:
                assert float(param.detach().abs().max()) == 0.0, name
            else:
                bound = math.sqrt(6.0 / sum(param.shape))  # Xavier-uniform: fan_in + fan_out of a 2-d weight
                assert float(param.detach().abs().max()) <= bound, name
                assert float(param.detach().std()) > 0.5 * bound / math.sqrt(3.0), name  # drawn, not torch's default
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.5)
    before = [p.detach().clone() for p in model.decoder.parameters()]
    model.reinitialize_decoder(seed=7)
    for (name, p), old in zip(model.decoder.named_parameters(), before):
        assert not torch.equal(p, old), name
        assert float(p.detach().abs().max()) <= (0.0 if "bias" in name else math.sqrt(6.0 / sum(p.shape))), name


# --------------------------------------------------------------------------- KL-weight schedules and free bits
def test_sigmoid_schedule_values():
    schedule = KLSchedule("sigmoid", kl_sigmoid_slope=0.0025, kl_sigmoid_midpoint=2500)
    assert schedule(2500) == pytest.approx(0.5)
    assert schedule(0) == pytest.approx(1 / (1 + math.exp(6.25)))
    assert schedule(0) < 0.002
    assert schedule(10_000) > 0.9999
    assert schedule(2500 + 400) == pytest.approx(1 / (1 + math.exp(-1.0)))
    # symmetric around the midpoint, monotone, and no overflow far away
    assert schedule(2000) + schedule(3000) == pytest.approx(1.0)
    values = [schedule(t) for t in range(0, 6000, 50)]
    assert values == sorted(values)
    assert sigmoid_weight(-(10**7), 1.0, 0.0) == 0.0
    assert sigmoid_weight(10**7, 1.0, 0.0) == 1.0


def test_linear_schedule_values():
    schedule = KLSchedule("linear", kl_warmup_steps=100)
    assert [schedule(t) for t in (0, 25, 50, 100, 101, 10_000)] == pytest.approx([0, 0.25, 0.5, 1, 1, 1])
    started = KLSchedule("linear", kl_warmup_steps=100, kl_start=0.2)
    assert [started(t) for t in (0, 50, 100, 200)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert linear_weight(5, 10) == pytest.approx(0.5)


def test_cyclical_schedule_resets_each_cycle_and_holds_one_in_the_second_half():
    schedule = KLSchedule("cyclical", kl_cycles=4, kl_cycle_ratio=0.5, total_steps=100)  # cycles of 25 steps
    for cycle in range(4):
        begin = 25 * cycle
        assert schedule(begin) == 0.0, f"cycle {cycle} does not restart at 0"
        assert schedule(begin + 5) == pytest.approx(5 / 12.5)
        assert schedule(begin + 10) == pytest.approx(10 / 12.5)
        # rising half strictly increasing, second half exactly 1
        rising = [schedule(begin + i) for i in range(14)]
        assert rising == sorted(rising) and rising[-1] == 1.0
        assert all(schedule(begin + i) == 1.0 for i in range(13, 25))
    assert cyclical_weight(99, 100, 4, 0.5) == 1.0
    # ratio 1: a sawtooth over the whole cycle
    saw = KLSchedule("cyclical", kl_cycles=2, kl_cycle_ratio=1.0, total_steps=20)
    assert [saw(t) for t in (0, 5, 9, 10, 15)] == pytest.approx([0, 0.5, 0.9, 0, 0.5])


def test_constant_schedule():
    assert KLSchedule("constant", kl_constant=0.3)(0) == 0.3
    assert KLSchedule("constant", kl_constant=0.3)(10**6) == 0.3
    assert KLSchedule("constant")(5) == 1.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(kl_schedule="exponential"), "kl_schedule"),
        (dict(kl_schedule="sigmoid", kl_sigmoid_slope=0.0), "kl_sigmoid_slope"),
        (dict(kl_schedule="sigmoid", kl_sigmoid_slope=-1.0), "kl_sigmoid_slope"),
        (dict(kl_schedule="linear", kl_warmup_steps=0), "kl_warmup_steps"),
        (dict(kl_schedule="cyclical", kl_cycles=0, total_steps=10), "kl_cycles"),
        (dict(kl_schedule="cyclical", kl_cycle_ratio=0.0, total_steps=10), "kl_cycle_ratio"),
        (dict(kl_schedule="cyclical", kl_cycle_ratio=1.5, total_steps=10), "kl_cycle_ratio"),
        (dict(kl_schedule="cyclical", total_steps=None), "total_steps"),
        (dict(kl_schedule="cyclical", kl_cycles=4, total_steps=3), "total_steps"),
        (dict(kl_schedule="linear", kl_start=1.5), "kl_start"),
        (dict(kl_schedule="linear", kl_start=-0.1), "kl_start"),
        (dict(kl_schedule="constant", kl_constant=-1.0), "kl_constant"),
    ],
)
def test_invalid_schedule_parameters_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        KLSchedule(**kwargs)


def test_free_bits_floor_in_the_loss_and_its_gradient(tiny_model, random_batch):
    """loss - reconstruction == sum_d max(lambda, batch-mean KL_d) with kl_weight 1; clamped dimensions send no
    KL gradient to the posterior (only the reconstruction does)."""
    model = tiny_model(seed=1, train=True, latent_size=6)
    input_ids, attention_mask = random_batch(model.config, [3, 5, 7, 4])
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    plain = model(input_ids, attention_mask, latent_noise=noise, return_logits=False)
    per_dim = gaussian_kl(plain.mu.double(), plain.logvar.double()).mean(0).detach()
    for lam in (0.0, float(per_dim.median()), float(per_dim.max()) * 3):
        out = model(input_ids, attention_mask, kl_weight=1.0, free_bits=lam, latent_noise=noise, return_logits=False)
        expected = torch.clamp(per_dim, min=lam).sum()
        term = float((out.loss - out.reconstruction_loss).detach())
        assert term == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
        assert float(out.kl.detach()) == pytest.approx(
            float(plain.kl.detach()), rel=1e-6
        )  # the reported KL stays the true KL

    # Above every dimension's KL, the KL term is constant: the gradient is the reconstruction's alone.
    lam = float(per_dim.max()) * 3
    model.zero_grad()
    model(input_ids, attention_mask, free_bits=lam, latent_noise=noise, return_logits=False).loss.backward()
    with_floor = model.posterior.weight.grad.clone()
    model.zero_grad()
    model(input_ids, attention_mask, latent_noise=noise, return_logits=False).reconstruction_loss.backward()
    reconstruction_only = model.posterior.weight.grad.clone()
    torch.testing.assert_close(with_floor, reconstruction_only)
    model.zero_grad()
    model(input_ids, attention_mask, latent_noise=noise, return_logits=False).loss.backward()
    assert not torch.allclose(model.posterior.weight.grad, reconstruction_only)
