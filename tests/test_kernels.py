"""The model's CPU fast paths (`hf_sentence_vae.kernels`) compute what their plain PyTorch counterparts compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import needs_data_dependent_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weight_drop_masks_the_recurrent_weights_once_per_sequence():
    from hf_sentence_vae.kernels import run_lstm

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, batch_first=True)
    inputs, state = torch.randn(3, 7, 5), (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
    undropped = lstm(inputs, state)[0].detach()
    torch.manual_seed(1)
    outputs, (h, c) = run_lstm(lstm, inputs, state, weight_drop=0.4)
    torch.manual_seed(1)
    mask = F.dropout(torch.ones_like(lstm.weight_hh_l0), 0.4, training=True)  # the same draw
    assert 0 < int((mask == 0).sum()) < mask.numel()
    reference = torch.nn.LSTM(5, 6, batch_first=True)
    reference.load_state_dict({**lstm.state_dict(), "weight_hh_l0": lstm.weight_hh_l0.detach() * mask})
    expected, (h_ref, c_ref) = reference(inputs, state)
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close((h, c), (h_ref, c_ref))
    # the module keeps its own weights: a plain call afterwards (evaluation) runs undropped
    assert isinstance(lstm.weight_hh_l0, torch.nn.Parameter)
    torch.testing.assert_close(lstm(inputs, state)[0], undropped, rtol=0, atol=0)
    assert not torch.allclose(outputs, undropped)
    # gradients reach the parameter through the mask
    outputs.sum().backward()
    grad = lstm.weight_hh_l0.grad
    assert torch.all(grad[mask == 0] == 0) and bool(grad[mask != 0].abs().sum() > 0)


def _logit_problem(rows: int, features: int, vocab: int, seed: int = 0):
    """Hidden states, an output layer with `<pad>` (0) and `<bos>` (2) masked to -inf through the bias, targets."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, features, generator=generator)
    weight = torch.randn(vocab, features, generator=generator)
    bias = torch.randn(vocab, generator=generator)
    bias[[0, 2]] = float("-inf")
    targets = torch.randint(3, vocab, (rows,), generator=generator)
    return hidden, weight, bias, targets


@pytest.mark.parametrize("budget", [None, 64 * 37], ids=["one_chunk", "many_chunks"])
def test_output_layer_nll_matches_cross_entropy_and_its_gradients(monkeypatch, budget):
    """The fused loss node, in one vocabulary chunk or in many (a small chunk budget), against `F.linear` and
    `F.cross_entropy`: values and the gradients of hidden states, weight and bias (zero at the masked ids)."""
    from hf_sentence_vae import kernels

    if budget is not None:
        monkeypatch.setattr(kernels, "LOSS_BUDGET", budget)
        assert kernels.vocabulary_chunk(37, 1000, kernels.LOSS_BUDGET) == 64
    hidden, weight, bias, targets = _logit_problem(37, 12, 1000)
    upstream = torch.randn(37, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    nll = kernels.output_layer_nll(*leaves, targets)
    (nll * upstream).sum().backward()
    reference = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    expected = F.cross_entropy(F.linear(*reference), targets, reduction="none")
    (expected * upstream).sum().backward()
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(leaves, reference):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
    assert torch.all(leaves[2].grad[[0, 2]] == 0)


@pytest.mark.parametrize("rows", [1, 37, 1300])
def test_output_layer_nll_without_gradients_matches_cross_entropy(monkeypatch, rows):
    """Under `no_grad` (evaluation, importance sampling) the loss runs in row blocks (several here) with nothing kept
    for a backward, and gives what `F.cross_entropy` gives; with a gradient the training node still runs."""
    from hf_sentence_vae import kernels

    calls = []
    monkeypatch.setattr(kernels, "INFERENCE_ROWS", 500)
    reference = lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b), t, reduction="none")  # noqa: E731
    monkeypatch.setattr(kernels.OutputLayerNLL, "apply", lambda *a: calls.append(1) or reference(*a))
    hidden, weight, bias, targets = _logit_problem(rows, 12, 700)
    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    with torch.no_grad():
        nll = kernels.output_layer_nll(hidden, weight, bias, targets)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    assert not calls
    kernels.output_layer_nll(hidden.requires_grad_(True), weight, bias, targets)
    assert calls == [1]


def test_output_layer_nll_under_bf16_autocast_stays_close_to_fp32():
    from hf_sentence_vae.kernels import output_layer_nll

    hidden, weight, bias, targets = _logit_problem(50, 16, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = output_layer_nll(hidden, weight, bias, targets)
    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    assert nll.dtype == torch.float32 and nll.shape == (50,)
    torch.testing.assert_close(nll, expected, rtol=0.05, atol=0.5)


@needs_data_dependent_export
@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_output_layer_nll_exports_with_a_data_dependent_row_count(strict):
    """Traced by `torch.export` (strict: by TorchDynamo, where a symbolic size passes `isinstance(size, int)`) with the
    rows chosen by the data (as the model's forward chooses the real tokens of a batch), the node runs over the whole
    vocabulary at once and gives the same losses as when chunked."""
    from hf_sentence_vae.kernels import output_layer_nll

    class Loss(torch.nn.Module):
        def forward(self, hidden, weight, bias, targets, mask):
            rows = mask.nonzero().squeeze(-1)
            return output_layer_nll(hidden[rows], weight, bias, targets[rows])

    hidden, weight, bias, targets = _logit_problem(30, 8, 200)
    mask = torch.rand(30, generator=torch.Generator().manual_seed(5)) < 0.6
    inputs = (hidden, weight, bias, targets, mask)
    exported = torch.export.export(Loss(), args=inputs, strict=strict)
    expected = F.cross_entropy(F.linear(hidden[mask], weight, bias), targets[mask], reduction="none")
    torch.testing.assert_close(exported.module()(*inputs), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Loss()(*inputs), expected, rtol=1e-5, atol=1e-5)


def _reference_choice(hidden, weight, bias, banned, k):
    """The straightforward way: the full log-softmax, banned ids at -inf, then max / topk."""
    log_probs = torch.log_softmax(F.linear(hidden, weight, bias), dim=-1)
    scores = log_probs if banned is None else log_probs.index_fill(-1, banned, float("-inf"))
    return scores.max(-1), scores.topk(k, dim=-1)


def test_native_bfloat16_cpu_reads_torchs_cpu_feature_checks(monkeypatch):
    """AVX-512 BF16 or AMX: True; neither: False; a torch without the (private) checks: True, the behaviour before."""
    from hf_sentence_vae.kernels import native_bfloat16_cpu

    assert isinstance(native_bfloat16_cpu(), bool)
    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bfloat16_cpu() is expected
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bfloat16_cpu() is True


def test_exp_in_place_matches_torch_exp_on_every_path():
    """`_exp_` exponentiates in place (NumPy's exp on float32 CPU tensors, strided views included; torch's elsewhere):
    within four float32 ulps of `torch.exp`, 0 at -inf, 1 at 0, NaN kept; tensors in autograd take torch's own."""
    from hf_sentence_vae.kernels import _exp_

    values = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 8 - 10
    values[0, :4] = torch.tensor([float("-inf"), 0.0, float("nan"), -120.0])
    expected = torch.exp(values)
    for tensor in (values.clone(), values.clone()[:, 100:200], values.t().contiguous().t()):
        reference = torch.exp(tensor)
        out = _exp_(tensor)
        assert out.data_ptr() == tensor.data_ptr()
        torch.testing.assert_close(out, reference, rtol=5e-7, atol=0, equal_nan=True)
    out = _exp_(values.clone())
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0 and out[0, 2].isnan() and out[0, 3] == expected[0, 3]
    torch.testing.assert_close(_exp_(values.double()), expected.double(), equal_nan=True)
    leaf = values[1:].clone().requires_grad_()
    with torch.no_grad():
        grad_free = leaf.clone()
    (_exp_(leaf.clone()).sum()).backward()  # torch's exp_: differentiable
    torch.testing.assert_close(leaf.grad, torch.exp(grad_free))


@pytest.mark.parametrize("rows", [1, 5, 300])
@pytest.mark.parametrize("banned", [None, [1], [1, 3, 900]], ids=["none", "unk", "three"])
def test_greedy_and_top_k_tokens_match_the_full_log_softmax(monkeypatch, rows, banned):
    """`greedy_tokens` and `top_k_tokens` choose what max / topk of the full log-softmax choose (ids exactly, scores
    to float tolerance), banned ids excluded from the choice but not from the normaliser; with small chunk budgets the
    vocabulary is split into many chunks (a last, shorter one included)."""
    from hf_sentence_vae import kernels

    monkeypatch.setattr(kernels, "GREEDY_BUDGET", 64 * 64)
    monkeypatch.setattr(kernels, "GREEDY_MIN_CHUNK", 64)
    monkeypatch.setattr(kernels, "TOP_K_BUDGET", 64 * 64)
    hidden, weight, bias, _ = _logit_problem(rows, 10, 1000, seed=rows)
    banned = None if banned is None else torch.tensor(banned)
    (best, choice), (top_values, top_ids) = _reference_choice(hidden, weight, bias, banned, 4)
    tokens, log_probs = kernels.greedy_tokens(hidden, weight, bias, banned, with_log_probs=True)
    assert torch.equal(tokens, choice)
    torch.testing.assert_close(log_probs, best, rtol=1e-5, atol=1e-5)
    tokens_only, none = kernels.greedy_tokens(hidden, weight, bias, banned)
    assert torch.equal(tokens_only, choice) and none is None
    values, ids = kernels.top_k_tokens(hidden, weight, bias, 4, banned)
    assert torch.equal(ids, top_ids)
    torch.testing.assert_close(values, top_values, rtol=1e-5, atol=1e-5)


def test_greedy_tokens_picks_the_first_of_tied_maxima(monkeypatch):
    """Exact ties (here: duplicated rows of the weight, in different chunks) go to the lowest id, as argmax does."""
    from hf_sentence_vae import kernels

    monkeypatch.setattr(kernels, "GREEDY_BUDGET", 64 * 8)
    monkeypatch.setattr(kernels, "GREEDY_MIN_CHUNK", 64)
    hidden, weight, bias, _ = _logit_problem(8, 6, 400)
    bias = torch.zeros(400)
    weight[[10, 130, 390]] = 10 * hidden[0]  # the best id of row 0, three times over
    tokens, _ = kernels.greedy_tokens(hidden, weight, bias)
    assert int(tokens[0]) == 10
    assert torch.equal(tokens, F.linear(hidden, weight, bias).argmax(-1))


@pytest.mark.parametrize("budget", [None, 64 * 64], ids=["one_chunk", "many_chunks"])
def test_bf16_output_layer_reduces_the_bf16_products_and_chooses_nearly_the_fp32_tokens(monkeypatch, budget):
    """A bfloat16 weight: the choice is that of the bfloat16 products (rounded to bfloat16, the float32 bias added),
    in one vocabulary chunk or many; mostly the float32 layer's choice."""
    from hf_sentence_vae import kernels

    if budget is not None:
        monkeypatch.setattr(kernels, "GREEDY_BUDGET", budget)
        monkeypatch.setattr(kernels, "GREEDY_MIN_CHUNK", 64)
        monkeypatch.setattr(kernels, "TOP_K_BUDGET", budget)
    hidden, weight, bias, _ = _logit_problem(200, 32, 500)
    low = weight.bfloat16()
    logits = torch.mm(hidden.bfloat16(), low.t()).float() + bias  # what the bf16 layer computes
    tokens, log_probs = kernels.greedy_tokens(hidden, low, bias, with_log_probs=True)
    assert tokens.dtype == torch.long and log_probs.dtype == torch.float32
    # The chosen id holds the row's best bf16 logit (ids themselves may differ only between exact bf16 ties).
    torch.testing.assert_close(logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), logits.amax(-1))
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1).amax(-1), rtol=1e-4, atol=1e-4)
    (_, choice), _ = _reference_choice(hidden, weight, bias, None, 1)
    assert float((tokens == choice).float().mean()) > 0.9
    values, ids = kernels.top_k_tokens(hidden, low, bias, 3)
    assert ids.shape == (200, 3) and values.dtype == torch.float32
    torch.testing.assert_close(values, torch.log_softmax(logits, -1).topk(3, -1).values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.log_softmax(logits, -1).gather(-1, ids), values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("features", [8, 64, 300])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_screening_bound_holds_for_every_logit(features, scale):
    """Every bfloat16-screened logit (products of bfloat16-rounded factors, rounded to bfloat16, the float32 bias
    added) is within `screening_bound` (with its own row's weight norm) of the float32 GEMM's logit and of the exact
    (float64) one, at small and large magnitudes, and the bound is not vacuous (below 4 % of ||h|| ||w||)."""
    from hf_sentence_vae import kernels

    generator = torch.Generator().manual_seed(features)
    hidden = torch.randn(64, features, generator=generator) * scale
    weight = torch.randn(900, features, generator=generator) * torch.rand(900, 1, generator=generator) * 3
    bias = torch.randn(900, generator=generator) * 5
    bias[[0, 2]] = float("-inf")
    screened = torch.mm(hidden.bfloat16(), weight.bfloat16().t()).float() + bias
    fp32 = torch.addmm(bias, hidden, weight.t())
    exact = (hidden.double() @ weight.double().t() + bias.double()).float()
    norms = weight.norm(dim=-1)
    bound = kernels.screening_bound(hidden.unsqueeze(1), norms, kernels.finite_bias_bound(bias))
    live = bias.isfinite().expand_as(fp32)
    for reference in (fp32, exact):
        assert bool(((screened - reference).abs() <= bound)[live].all())
    assert bool((bound < 0.04 * hidden.norm(dim=-1, keepdim=True) * norms + 1e-3).all())
    assert kernels.finite_bias_bound(bias) == float(bias[bias.isfinite()].abs().max())
    assert kernels.finite_bias_bound(torch.full((3,), float("-inf"))) == 0.0


@pytest.mark.parametrize("rows", [1, 20, 300])
@pytest.mark.parametrize("banned", [None, [1], [1, 3, 900]], ids=["none", "unk", "three"])
@pytest.mark.parametrize("budget", [None, 64 * 64], ids=["one_chunk", "many_chunks"])
def test_screened_greedy_tokens_choose_the_float32_tokens(monkeypatch, rows, banned, budget):
    """`screened_greedy_tokens` (bfloat16 screen, float32 decision) chooses exactly what the float32 layer chooses,
    on logits crowded within the bfloat16 rounding (where the bfloat16 layer alone chooses other ids), with banned
    ids, in one vocabulary chunk or many; fewer than `SCREEN_MIN_ROWS` rows take the float32 path."""
    from hf_sentence_vae import kernels

    if budget is not None:
        monkeypatch.setattr(kernels, "SCREEN_BUDGET", budget)
    hidden, weight, bias, _ = _logit_problem(rows, 24, 1000, seed=rows)
    # Crowded top scores: 200 ids, from the first chunk to the last, whose logits lead the others and differ from each
    # other by about the bfloat16 rounding (nearly equal rows of the weight).
    crowd = torch.linspace(3, 999, 200).long()
    bias, weight = bias.clone(), weight.clone()
    bias[crowd] = 30.0
    weight[crowd] = weight[5] + 1e-3 * torch.randn(200, 24, generator=torch.Generator().manual_seed(1))
    banned = None if banned is None else torch.tensor(banned)
    (_, choice), _ = _reference_choice(hidden, weight, bias, banned, 1)
    calls, plain = [], kernels.greedy_tokens
    monkeypatch.setattr(kernels, "greedy_tokens", lambda *a: calls.append(1) or plain(*a))
    tokens = kernels.screened_greedy_tokens(hidden, weight, weight.bfloat16(), bias, banned)
    assert tokens.dtype == torch.long and torch.equal(tokens, choice)
    assert calls == ([1] if rows < kernels.SCREEN_MIN_ROWS else [])
    if rows == 300:
        low, _ = plain(hidden, weight.bfloat16(), bias, banned)
        assert float((low != choice).float().mean()) > 0.05  # the screen alone would not do
    norms, bound = weight.norm(dim=-1), kernels.finite_bias_bound(bias)
    assert torch.equal(
        kernels.screened_greedy_tokens(hidden, weight, weight.bfloat16(), bias, banned, norms, bound), tokens
    )


def test_screened_greedy_tokens_ties_banned_rows_and_nan(monkeypatch):
    """Exact float32 ties (duplicated rows of the weight, in different chunks) go to the lowest id, as argmax does;
    every id banned gives what the float32 search gives; a row of NaN features has no candidate, and a screen that is
    not the weight in bfloat16 is refused: `ValueError`s."""
    from hf_sentence_vae import kernels

    monkeypatch.setattr(kernels, "SCREEN_BUDGET", 64 * 20)
    hidden, weight, bias, _ = _logit_problem(20, 6, 400)
    bias = torch.zeros(400)
    weight[[10, 130, 390]] = 10 * hidden[0]  # the best id of row 0, three times over
    tokens = kernels.screened_greedy_tokens(hidden, weight, weight.bfloat16(), bias)
    assert int(tokens[0]) == 10
    assert torch.equal(tokens, F.linear(hidden, weight, bias).argmax(-1))
    everything = torch.arange(400)
    all_banned = kernels.screened_greedy_tokens(hidden, weight, weight.bfloat16(), bias, everything)
    assert torch.equal(all_banned, kernels.greedy_tokens(hidden, weight, bias, everything)[0])
    hidden[3] = float("nan")
    with pytest.raises(ValueError, match="no candidate"):
        kernels.screened_greedy_tokens(hidden, weight, weight.bfloat16(), bias)
    for wrong in (weight, weight[:-1].bfloat16()):
        with pytest.raises(ValueError, match="low_weight must be the weight in bfloat16"):
            kernels.screened_greedy_tokens(hidden, weight, wrong, bias)


@pytest.mark.parametrize("k", [1, 3, 100])
def test_whole_chunks_banned_or_never_reached(monkeypatch, k):
    """Edge cases of the chunked searches against the full log-softmax: a vocabulary chunk that is banned entirely (its
    exponentials are dropped, not NaN), later chunks that no row's `k` best reach (the first chunk's ids dominate,
    as with a vocabulary in frequency order), and `k` wider than a chunk."""
    from hf_sentence_vae import kernels

    monkeypatch.setattr(kernels, "GREEDY_BUDGET", 64 * 40)
    monkeypatch.setattr(kernels, "GREEDY_MIN_CHUNK", 64)
    monkeypatch.setattr(kernels, "TOP_K_BUDGET", 64 * 40)
    hidden, weight, bias, _ = _logit_problem(40, 8, 700, seed=3)
    banned = torch.cat([torch.tensor([1]), torch.arange(128, 192)])  # the third chunk of 64 ids, whole
    for dominant in (False, True):
        if dominant:
            bias = bias.clone()
            bias[3:64] += 30.0  # the first chunk's ids beat every other id in every row
        (best, choice), (top_values, top_ids) = _reference_choice(hidden, weight, bias, banned, k)
        tokens, log_probs = kernels.greedy_tokens(hidden, weight, bias, banned, with_log_probs=True)
        assert torch.equal(tokens, choice) and bool(torch.isfinite(log_probs).all())
        torch.testing.assert_close(log_probs, best, rtol=1e-5, atol=1e-5)
        values, ids = kernels.top_k_tokens(hidden, weight, bias, k, banned)
        assert not bool(torch.isin(ids, banned).any())
        torch.testing.assert_close(values, top_values, rtol=1e-5, atol=1e-5)
        # ids as topk gives them, except that the order of exactly tied values is not fixed
        tied = top_values[:, 1:] == top_values[:, :-1]
        if not bool(tied.any()):
            assert torch.equal(ids, top_ids)


def test_top_k_and_chunk_arguments_are_checked():
    from hf_sentence_vae.kernels import top_k_tokens, vocabulary_chunk

    hidden, weight, bias, _ = _logit_problem(4, 6, 20)
    with pytest.raises(ValueError, match="k must be in"):
        top_k_tokens(hidden, weight, bias, 21)
    with pytest.raises(ValueError, match="rows=0"):
        vocabulary_chunk(0, 20, 1024)
    assert vocabulary_chunk(1, 10_000, 1 << 17) == 10_000
    assert vocabulary_chunk(512, 10_000, 1 << 17) == 256
    assert vocabulary_chunk(1000, 10_000, 1 << 17, minimum=512) == 512  # the greedy search's narrowest chunk
    assert vocabulary_chunk(64, 10_000, 1 << 17, minimum=512) == 2048
    assert vocabulary_chunk(4, 300, 1 << 17, minimum=512) == 300


@pytest.mark.parametrize("latent_size", [0, 3])
@pytest.mark.parametrize("rows", [1, 7, 70])
def test_word_gate_lstm_steps_as_the_lstm_does(rows, latent_size):
    """`WordGateLSTM` (input-side gate pre-activations looked up per word) gives `lstm_step`'s states to float32
    rounding, over steps that read new and repeated words (the store grows past its first size), with and without
    a per-row code appended to the embeddings; it stores each distinct word once."""
    from hf_sentence_vae.kernels import WordGateLSTM, lstm_step

    torch.manual_seed(0)
    vocab, width, size = 600, 5, 6
    lstm = torch.nn.LSTM(width + latent_size, size, batch_first=True)
    embedding = torch.randn(vocab, width)
    latent = torch.randn(rows, latent_size) if latent_size else None
    gates = WordGateLSTM(lstm, embedding, latent_size)
    h, c = torch.randn(rows, size), torch.randn(rows, size)
    h_ref, c_ref = h, c
    seen = set()
    for step in range(12):
        tokens = torch.randint(0, 40 if step < 6 else vocab, (rows,))
        seen.update(tokens.tolist())
        inputs = embedding[tokens] if latent is None else torch.cat([embedding[tokens], latent], -1)
        with torch.no_grad():
            h_ref, c_ref = lstm_step(lstm, inputs, h_ref, c_ref)
        h, c = gates(tokens, h, c, latent)
        torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=1e-5, atol=1e-6)
    assert gates.words_read == len(seen)
    assert not h.requires_grad


def test_word_gate_lstm_checks_its_lstm_and_code():
    from hf_sentence_vae.kernels import WordGateLSTM

    embedding = torch.randn(10, 4)
    with pytest.raises(ValueError, match="reads 6 features, not embedding 4 \\+ latent 0"):
        WordGateLSTM(torch.nn.LSTM(6, 3), embedding)
    with pytest.raises(ValueError, match="single-layer"):
        WordGateLSTM(torch.nn.LSTM(4, 3, num_layers=2), embedding)
    gates = WordGateLSTM(torch.nn.LSTM(6, 3), embedding, latent_size=2)
    state = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="pass latent exactly"):
        gates(torch.tensor([1, 2]), *state)


def _onednn_packs() -> bool:
    from hf_sentence_vae.kernels import PackedWeight

    return PackedWeight.supports(torch.zeros(1, 1))


needs_onednn = pytest.mark.skipif(not _onednn_packs(), reason="torch without its oneDNN (mkldnn) ops")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17, 30, 64])
def test_packed_weight_gives_the_linear_layer(rows):
    """`PackedWeight` (oneDNN on a packed copy; rows above 16 padded to a multiple of 4 and cut back) gives
    `F.linear` to float32 rounding, from one weight or from pieces joined along the inputs; it packs on its first
    call only."""
    from hf_sentence_vae.kernels import PackedWeight

    hidden, weight, bias, _ = _logit_problem(rows, 12, 300, seed=rows)
    bias[[0, 2]] = 0.0
    packed = PackedWeight(weight, bias)
    assert packed._packed is None
    out = packed(hidden)
    torch.testing.assert_close(out, F.linear(hidden, weight, bias), rtol=1e-5, atol=1e-4)
    assert out.shape == (rows, 300) and packed._packed is not None
    first = packed._packed
    packed(hidden)
    assert packed._packed is first
    pieces = PackedWeight((weight[:, :5], weight[:, 5:]), bias)
    torch.testing.assert_close(pieces(hidden), out, rtol=1e-5, atol=1e-4)


def test_packed_weight_refuses_what_it_cannot_pack():
    from hf_sentence_vae.kernels import PackedWeight, packed_lstm_gates

    assert not PackedWeight.supports(torch.zeros(3, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="needs a float32 CPU weight.*torch.bfloat16"):
        PackedWeight(torch.zeros(3, 2, dtype=torch.bfloat16), torch.zeros(3))
    assert packed_lstm_gates(torch.nn.LSTM(4, 3, num_layers=2)) is None
    assert packed_lstm_gates(torch.nn.LSTM(4, 3, bias=False)) is None


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 40, 80, 130])
@pytest.mark.parametrize("banned", [None, [1, 3, 900]], ids=["none", "three"])
def test_greedy_and_top_k_tokens_from_a_packed_layer_match_the_full_log_softmax(rows, banned):
    """With a `PackedWeight`, steps of 2 to 128 rows take their logits from it, others the chunked products: the ids
    of the full log-softmax either way (scores to float tolerance); a 1-row step never packs the weight."""
    from hf_sentence_vae import kernels

    hidden, weight, bias, _ = _logit_problem(rows, 10, 1000, seed=rows)
    banned = None if banned is None else torch.tensor(banned)
    packed = kernels.PackedWeight(weight, bias)
    (best, choice), (top_values, top_ids) = _reference_choice(hidden, weight, bias, banned, 4)
    tokens, log_probs = kernels.greedy_tokens(hidden, weight, bias, banned, True, packed)
    assert torch.equal(tokens, choice)
    torch.testing.assert_close(log_probs, best, rtol=1e-5, atol=1e-5)
    values, ids = kernels.top_k_tokens(hidden, weight, bias, 4, banned, packed)
    assert torch.equal(ids, top_ids)
    torch.testing.assert_close(values, top_values, rtol=1e-5, atol=1e-5)
    used = kernels.PACKED_MIN_ROWS <= rows <= kernels.PACKED_MAX_ROWS
    assert (packed._packed is not None) is used


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 9, 64, 65, 129])
def test_lstm_step_with_packed_gates_steps_as_the_cell_does(rows):
    """`lstm_step` with `packed_lstm_gates`: the cell op's states to float32 rounding, over several steps; outside 2 to
    128 rows (the cell op, or nn.LSTM) the gates are not packed."""
    from hf_sentence_vae.kernels import PACKED_MAX_ROWS, PACKED_MIN_ROWS, lstm_step, packed_lstm_gates

    torch.manual_seed(rows)
    lstm = torch.nn.LSTM(7, 5, batch_first=True)
    gates = packed_lstm_gates(lstm)
    h = h_ref = torch.randn(rows, 5)
    c = c_ref = torch.randn(rows, 5)
    with torch.no_grad():
        for _ in range(4):
            inputs = torch.randn(rows, 7)
            h, c = lstm_step(lstm, inputs, h, c, gates)
            h_ref, c_ref = torch.lstm_cell(
                inputs, (h_ref, c_ref), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
            )
            torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=1e-5, atol=1e-6)
    assert (gates._packed is not None) is (PACKED_MIN_ROWS <= rows <= PACKED_MAX_ROWS)


def test_log_sum_exp_in_place_matches_torch_with_excluded_ids_and_empty_rows():
    """`_log_sum_exp_` (NumPy's exp, in place) gives `torch.logsumexp` of the row and its excluded values together,
    to float32 rounding; a row of -inf only gives -inf, not NaN."""
    from hf_sentence_vae.kernels import _exclude_, _log_sum_exp_

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 5
    logits[3] = float("-inf")
    expected = torch.logsumexp(logits, dim=-1, keepdim=True)
    banned = torch.tensor([0, 7, 299])
    work = logits.clone()
    excluded = _exclude_(work, banned)
    assert torch.equal(excluded, logits[:, banned]) and work[:, banned].isneginf().all()
    lse = _log_sum_exp_(work, excluded)
    torch.testing.assert_close(lse[:3], expected[:3], rtol=1e-6, atol=1e-5)
    assert lse[3].isneginf().all()
    assert _exclude_(logits.clone(), None) is None
    torch.testing.assert_close(_log_sum_exp_(logits[:3].clone()), expected[:3], rtol=1e-6, atol=1e-5)


def test_packed_weight_falls_back_to_the_plain_product_where_onednn_cannot_pack(monkeypatch):
    """A oneDNN build that cannot run the packed product: one `RuntimeWarning` on the first call, then `F.linear`."""
    from hf_sentence_vae.kernels import PackedWeight

    def refuse(weight):
        raise RuntimeError("no packed kernel for this build")

    monkeypatch.setattr(PackedWeight, "_pack", staticmethod(refuse))
    hidden, weight, bias, _ = _logit_problem(5, 12, 300)
    packed = PackedWeight(weight, bias) if PackedWeight.supports(weight) else None
    if packed is None:
        pytest.skip("torch without its oneDNN (mkldnn) ops")
    with pytest.warns(RuntimeWarning, match=r"could not run a packed \(300, 12\) float32 product"):
        out = packed(hidden)
    torch.testing.assert_close(out, F.linear(hidden, weight, bias))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(packed(hidden[:2]), F.linear(hidden[:2], weight, bias))


@pytest.mark.parametrize(("rows", "width", "k"), [(5, 10002, 10), (3, 4096, 5), (2, 700, 10), (4, 300, 4)])
def test_two_stage_top_k_gives_topk(rows, width, k):
    """`_top_k` (block maxima, then the best blocks' values and the columns after the last whole block) gives
    `topk`'s values and ids on wide rows, with -inf entries and the best ids in the tail; narrow rows take `topk`."""
    from hf_sentence_vae.kernels import _top_k

    values = torch.randn(rows, width, generator=torch.Generator().manual_seed(width))
    values[:, ::7] = float("-inf")
    values[0, -1] = 50.0  # in the columns after the last whole block
    values[1, :3] = torch.tensor([40.0, 39.0, 38.0])  # several in one block
    best, ids = _top_k(values, k)
    expected_best, expected_ids = values.topk(k, dim=-1)
    assert torch.equal(best, expected_best) and torch.equal(ids, expected_ids)
