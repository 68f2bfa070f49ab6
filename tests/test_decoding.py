"""Decoding: greedy, sampling and beam search (exactness, batching, constraints) and the latent-space helpers."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from hf_sentence_vae.decoding import beam_search, reverse_tokens, sample_search

INIT = 0.5  # larger weights than the default initialisation: peaked, tie-free distributions
SMALL_VOCAB = 7  # 3 words + <pad> <unk> <bos> <eos>

VARIANTS = {
    "default": dict(),
    "inputless": dict(word_keep_rate=0.0),
    "latent_in_inputs": dict(latent_injection="initial_state_and_inputs", num_highway_layers=1),
    "latent_in_outputs": dict(latent_injection="initial_state_inputs_and_outputs"),
    "right_to_left": dict(right_to_left=True),
    "rnnlm": dict(latent_size=0),
}
# Also an output layer tied to an embedding of another width (through a projection), for the fast searches.
FAST_VARIANTS = {**VARIANTS, "tied_projection": dict(tie_word_embeddings=True, decoder_hidden_size=12)}


@pytest.fixture
def tiny_model(tiny_model):
    """The shared factory, with `return_dict_in_generate` set in each model's `generation_config`: these tests read
    the scores and codes of `SentenceVAEGenerationOutput` (plain `generate` returns the ids alone)."""

    def make(*args, **kwargs):
        model = tiny_model(*args, **kwargs)
        model.generation_config.return_dict_in_generate = True
        return model

    return make


def _strip(row: list[int], pad: int) -> tuple[int, ...]:
    while row and row[-1] == pad:
        row = row[:-1]
    return tuple(row)


def _sequences(out, pad: int = 0) -> list[tuple[int, ...]]:
    return [_strip(row, pad) for row in out.sequences.tolist()]


def _flip(seq: tuple[int, ...], eos: int = 3) -> tuple[int, ...]:
    """Reverse the words of a generated sequence (a trailing <eos> stays last): reading <-> decoder order."""
    if seq and seq[-1] == eos:
        return tuple(reversed(seq[:-1])) + (eos,)
    return tuple(reversed(seq))


def _score(model, latent: torch.Tensor | None, sequences: list[tuple[int, ...]]) -> torch.Tensor:
    """log p(sequence | z) by the model's forward pass, for generated sequences in reading order: those that end
    with <eos> are whole sentences; the others were cut at the length limit (their <eos> is not scored)."""
    cfg = model.config
    total = max(len(s) for s in sequences) + 2
    input_ids = torch.full((len(sequences), total), cfg.pad_token_id)
    attention_mask = torch.zeros((len(sequences), total), dtype=torch.long)
    labels = torch.full((len(sequences), total), -100)
    for row, seq in enumerate(sequences):
        ends = len(seq) > 0 and seq[-1] == cfg.eos_token_id
        ids = [cfg.bos_token_id, *(seq[:-1] if ends else seq), cfg.eos_token_id]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(ids)
        if not ends:
            labels[row, len(ids) - 1] = -100
    with torch.no_grad():
        out = model(input_ids, attention_mask, labels=labels, latent=latent, return_logits=False)
    return -out.reconstruction_per_sentence


def _model_and_latent(tiny_model, variant: str, batch: int, seed: int = 0, **overrides):
    model = tiny_model(initializer_range=INIT, seed=seed, **{**FAST_VARIANTS[variant], **overrides})
    latent = None
    if model.config.latent_size:
        latent = torch.randn(batch, model.config.latent_size, generator=torch.Generator().manual_seed(seed + 100))
    return model, latent


def _generate(model, latent, batch: int, **kwargs):
    if latent is None:
        return model.generate(num_samples=batch, **kwargs)
    return model.generate(latent=latent, **kwargs)


def _repeat(latent, n):
    return None if latent is None else latent.repeat_interleave(n, dim=0)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_generation_scores_are_the_models_log_likelihood(tiny_model, variant):
    model, latent = _model_and_latent(tiny_model, variant, batch=6)
    for kwargs in (
        dict(max_new_tokens=12),
        dict(max_new_tokens=4),  # many sequences are cut at the limit
        dict(num_beams=4, num_return_sequences=3, max_new_tokens=8, length_penalty=0.0),
        dict(do_sample=True, max_new_tokens=10, generator=torch.Generator().manual_seed(0)),
    ):
        out = _generate(model, latent, 6, **kwargs)
        n = kwargs.get("num_return_sequences", 1)
        sequences = _sequences(out)
        assert all(len(s) <= kwargs["max_new_tokens"] for s in sequences)
        assert all(3 not in s[:-1] and 0 not in s and 2 not in s for s in sequences)  # nothing after <eos>
        expected = _score(model, _repeat(latent, n), sequences)
        torch.testing.assert_close(out.log_probs, expected, rtol=1e-4, atol=1e-4)


def test_beam_search_with_one_beam_is_greedy(tiny_model):
    for variant in ("default", "rnnlm", "right_to_left"):
        model, latent = _model_and_latent(tiny_model, variant, batch=8)
        greedy = _generate(model, latent, 8, max_new_tokens=15)
        # beam_search driven directly (generate sends num_beams=1 to the greedy loop).
        state = model.initial_decoder_state(latent, 8)
        cfg = model.config
        result = beam_search(
            model.decoder_step,
            state,
            8,
            1,
            bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
            max_new_tokens=15,
        )
        beam = model._generation_output(result, latent)
        assert _sequences(beam) == _sequences(greedy)
        torch.testing.assert_close(beam.log_probs, greedy.log_probs)
        torch.testing.assert_close(
            beam.sequences_scores, greedy.log_probs / torch.tensor([len(s) for s in _sequences(greedy)])
        )


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_wide_beam_search_is_exact_search(tiny_model, variant):
    """Every sequence of at most 3 tokens over 3 words (+ <unk>, <eos>) scored by the forward pass; a beam wider
    than the number of partial hypotheses finds the best one, with its score, and ranks all of them."""
    model, latent = _model_and_latent(tiny_model, variant, batch=3, vocab_size=SMALL_VOCAB)
    cfg = model.config
    predictable = [t for t in range(SMALL_VOCAB) if t not in (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id)]
    assert len(predictable) == 4  # <unk> and the 3 words
    eos = cfg.eos_token_id
    candidates = [(eos,)]
    candidates += [(*words, eos) for n in (1, 2) for words in itertools.product(predictable, repeat=n)]
    candidates += list(itertools.product(predictable, repeat=3))  # cut at max_new_tokens without <eos>
    assert len(candidates) == 85

    out = _generate(model, latent, 3, num_beams=128, max_new_tokens=3, length_penalty=0.0, num_return_sequences=85)
    best = _generate(model, latent, 3, num_beams=128, max_new_tokens=3, length_penalty=0.0)
    sequences = _sequences(out)
    penalized = _generate(
        model, latent, 3, num_beams=128, max_new_tokens=3, length_penalty=1.5, num_return_sequences=85
    )
    penalized_sequences = _sequences(penalized)
    for row in range(3):
        z = None if latent is None else latent[row : row + 1].expand(len(candidates), -1)
        exhaustive = _score(model, z, candidates)
        assert torch.isfinite(exhaustive).all()
        order = exhaustive.argsort(descending=True)
        # The best sequence and its score.
        assert _sequences(best)[row] == candidates[int(order[0])]
        torch.testing.assert_close(best.sequences_scores[row], exhaustive[order[0]], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(best.log_probs[row], exhaustive[order[0]], rtol=1e-4, atol=1e-4)
        # All 85 hypotheses come back, ranked, with their exact scores.
        returned = sequences[row * 85 : (row + 1) * 85]
        assert sorted(returned) == sorted(candidates)
        scores = out.sequences_scores[row * 85 : (row + 1) * 85]
        assert torch.all(scores[:-1] >= scores[1:])
        by_candidate = dict(zip(candidates, exhaustive.tolist()))
        torch.testing.assert_close(scores, torch.tensor([by_candidate[s] for s in returned]), rtol=1e-4, atol=1e-4)

        # With a length penalty, the same hypotheses are ranked by log p / length ** penalty.
        normalized = exhaustive / torch.tensor([float(len(c)) for c in candidates]) ** 1.5
        returned = penalized_sequences[row * 85 : (row + 1) * 85]
        assert returned[0] == candidates[int(normalized.argmax())]
        assert sorted(returned) == sorted(candidates)
        scores = penalized.sequences_scores[row * 85 : (row + 1) * 85]
        assert torch.all(scores[:-1] >= scores[1:])
        by_candidate = dict(zip(candidates, normalized.tolist()))
        torch.testing.assert_close(scores, torch.tensor([by_candidate[s] for s in returned]), rtol=1e-4, atol=1e-4)


def test_beam_search_beats_greedy_on_a_garden_path():
    """A model-agnostic check with a fixed Markov chain: greedy takes the likelier first word (p=0.55) into a flat
    continuation; beam search finds `b <eos>` (0.45 * 0.98)."""
    pad, unk, bos, eos, a, b, c, d = range(8)
    table = torch.full((8, 8), 1e-9)
    table[bos, a], table[bos, b] = 0.55, 0.45
    table[a, [c, d, eos, unk]] = 0.25
    table[b, eos], table[b, c] = 0.98, 0.02
    table[[c, d, unk, pad, eos]] = 0.0
    table[[c, d, unk, pad, eos], eos] = 1.0
    log_table = (table / table.sum(-1, keepdim=True)).log()

    def step(tokens, state):
        return log_table[tokens], state

    state = (torch.zeros(1, 1),)
    special = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    greedy = sample_search(step, state, 1, max_new_tokens=3, **special)
    beam = beam_search(step, state, 1, 2, max_new_tokens=3, length_penalty=0.0, **special)
    assert greedy.sequences[0, 0].tolist()[:1] == [a]
    assert beam.sequences[0, 0].tolist() == [b, eos, pad]
    assert beam.lengths[0, 0].item() == 2
    assert beam.log_probs[0, 0].item() == pytest.approx(float(log_table[bos, b] + log_table[b, eos]), abs=1e-5)
    assert beam.log_probs[0, 0] > greedy.log_probs[0, 0]


def test_beam_search_runs_its_first_step_once_per_sentence():
    """Every hypothesis of a sentence starts from the same state and `<bos>`, so the first step runs on one row per
    sentence (its results and state repeated for the sentence's beams), on the full-distribution path and on the
    top-k path; later steps run on the open hypotheses, each carrying its own sentence's state."""
    pad, unk, bos, eos = range(4)
    log_table = torch.log_softmax(torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 3, dim=-1)
    rows: list[int] = []

    def step(tokens, state):
        rows.append(tokens.shape[0])
        return log_table[tokens] + state[0], state  # the state: a per-sentence offset added to every step's scores

    def top_k_step(tokens, state, k, banned):
        values, ids = step(tokens, state)[0].topk(k, dim=-1)
        return values, ids, state

    offsets = torch.tensor([[0.0], [-1.0], [-2.0]])
    special = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, max_new_tokens=4, num_return_sequences=3)
    results = []
    for fast in (None, top_k_step):
        rows.clear()
        results.append(beam_search(step, (offsets,), 3, 3, top_k_step_fn=fast, **special))
        assert rows[0] == 3 and rows[1] > 3, rows
    full, fast = results
    assert torch.equal(fast.sequences, full.sequences)
    torch.testing.assert_close(fast.scores, full.scores)
    for sentence in range(3):
        for hypothesis in range(3):
            tokens = full.sequences[sentence, hypothesis].tolist()[: int(full.lengths[sentence, hypothesis])]
            previous = [bos, *tokens[:-1]]
            expected = sum(float(log_table[p, t]) + float(offsets[sentence]) for p, t in zip(previous, tokens))
            assert float(full.log_probs[sentence, hypothesis]) == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("variant", ["default", "right_to_left", "rnnlm"])
def test_batched_generation_equals_one_by_one(tiny_model, variant):
    model, latent = _model_and_latent(tiny_model, variant, batch=5)
    settings = [
        dict(max_new_tokens=10),
        dict(max_new_tokens=10, num_beams=3),
        dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.7),
        dict(max_new_tokens=10, min_new_tokens=3, num_beams=2),
    ]
    for kwargs in settings:
        batched = _generate(model, latent, 5, **kwargs)
        n = kwargs.get("num_return_sequences", 1)
        for row in range(5):
            single = _generate(model, None if latent is None else latent[row : row + 1], 1, **kwargs)
            rows = slice(row * n, (row + 1) * n)
            assert _sequences(single) == _sequences(batched)[rows], kwargs
            torch.testing.assert_close(single.sequences_scores, batched.sequences_scores[rows])
            torch.testing.assert_close(single.log_probs, batched.log_probs[rows])


# ----------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible(tiny_model):
    model = tiny_model(initializer_range=INIT)
    runs = [
        model.generate(num_samples=16, do_sample=True, max_new_tokens=10, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0].latent, runs[1].latent) and torch.equal(runs[0].sequences, runs[1].sequences)
    assert torch.equal(runs[0].log_probs, runs[1].log_probs)
    assert not torch.equal(runs[0].latent, runs[2].latent)
    latent = runs[0].latent
    first = model.generate(latent=latent, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    second = model.generate(latent=latent, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.sequences, second.sequences)


@pytest.mark.parametrize("variant", ["default", "rnnlm"])
def test_top_k_one_sampling_is_greedy(tiny_model, variant):
    model, latent = _model_and_latent(tiny_model, variant, batch=8)
    greedy = _generate(model, latent, 8, max_new_tokens=12)
    for temperature in (1.0, 3.0):
        sampled = _generate(
            model,
            latent,
            8,
            max_new_tokens=12,
            do_sample=True,
            top_k=1,
            temperature=temperature,
            generator=torch.Generator().manual_seed(0),
        )
        assert torch.equal(sampled.sequences, greedy.sequences)
        torch.testing.assert_close(sampled.log_probs, greedy.log_probs)


def test_sampling_follows_the_model_distribution(tiny_model):
    """First-token frequencies over 6,000 samples match the model's probabilities (and the tempered ones)."""
    model, latent = _model_and_latent(tiny_model, "default", batch=1, vocab_size=SMALL_VOCAB)
    with torch.no_grad():
        logits = model(torch.tensor([[2, 3]]), latent=latent).logits[0, 0]
    for temperature in (1.0, 0.5):
        out = model.generate(
            latent=latent,
            do_sample=True,
            temperature=temperature,
            max_new_tokens=1,
            num_return_sequences=6000,
            generator=torch.Generator().manual_seed(1),
        )
        assert out.sequences.shape == (6000, 1)
        frequencies = torch.bincount(out.sequences[:, 0], minlength=SMALL_VOCAB).float() / 6000
        expected = torch.softmax(logits / temperature, -1)
        torch.testing.assert_close(frequencies, expected, atol=0.025, rtol=0)
        # Reported log-probabilities are the model's own, not the tempered ones.
        torch.testing.assert_close(out.log_probs, torch.log_softmax(logits, -1)[out.sequences[:, 0]])


# ----------------------------------------------------------------------------- constraints


def _eos_loving(tiny_model, **overrides):
    model = tiny_model(initializer_range=INIT, **overrides)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 20.0  # <eos> first, almost surely
    return model


def test_min_new_tokens_is_respected(tiny_model):
    model = _eos_loving(tiny_model)
    latent = torch.randn(4, 4)
    assert _sequences(model.generate(latent=latent)) == [(3,)] * 4  # premise: <eos> at once
    for kwargs in (dict(), dict(num_beams=3), dict(do_sample=True, generator=torch.Generator().manual_seed(0))):
        for minimum in (1, 3, 6):
            out = model.generate(latent=latent, min_new_tokens=minimum, max_new_tokens=10, **kwargs)
            for seq in _sequences(out):
                assert len(seq) == minimum + 1 and seq[-1] == 3 and 3 not in seq[:-1], (kwargs, minimum, seq)
    with pytest.raises(ValueError, match="min_new_tokens"):
        model.generate(latent=latent, min_new_tokens=5, max_new_tokens=4)


def test_max_new_tokens_and_default_length(tiny_model):
    model = tiny_model(initializer_range=INIT, max_sentence_length=6)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = -30.0  # never ends by itself
    latent = torch.randn(3, 4)
    out = model.generate(latent=latent)
    assert out.sequences.shape == (3, 6) and not (out.sequences == 3).any()
    out = model.generate(latent=latent, max_new_tokens=2, num_beams=2)
    assert out.sequences.shape == (3, 2) and not (out.sequences == 3).any()
    assert torch.equal(out.latent, latent)


def test_num_return_sequences_are_distinct_and_sorted(tiny_model):
    model, latent = _model_and_latent(tiny_model, "default", batch=3)
    for length_penalty in (0.0, 1.0, 2.0):
        out = model.generate(
            latent=latent, num_beams=6, num_return_sequences=4, max_new_tokens=8, length_penalty=length_penalty
        )
        assert out.sequences.shape[0] == 12 and out.sequences_scores.shape == (12,) and out.log_probs.shape == (12,)
        sequences = _sequences(out)
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.float32)
        torch.testing.assert_close(out.sequences_scores, out.log_probs / lengths.pow(length_penalty))
        for row in range(3):
            scores = out.sequences_scores[row * 4 : (row + 1) * 4]
            assert torch.all(scores[:-1] >= scores[1:]), scores
            assert len(set(sequences[row * 4 : (row + 1) * 4])) == 4
        top = model.generate(latent=latent, num_beams=6, max_new_tokens=8, length_penalty=length_penalty)
        assert _sequences(top) == sequences[::4]
    sampled = model.generate(
        latent=latent, do_sample=True, num_return_sequences=5, generator=torch.Generator().manual_seed(0)
    )
    assert sampled.sequences.shape[0] == 15


@pytest.mark.parametrize("right_to_left", [False, True])
def test_forced_tokens_are_pinned(tiny_model, right_to_left):
    model = tiny_model(initializer_range=INIT, right_to_left=right_to_left)
    latent = torch.randn(3, 4)
    # Row 0: a 3-word sentence with 7 in second position (min_new_tokens keeps <eos> off the free slots);
    # row 1: starts with 5 5 5 5; row 2: free.
    forced = torch.tensor([[-1, 7, -1, 3], [5, 5, 5, 5], [-1, -1, -1, -1]])
    for kwargs in (dict(), dict(num_beams=3), dict(do_sample=True, generator=torch.Generator().manual_seed(0))):
        kwargs["min_new_tokens"] = 3
        out = model.generate(latent=latent, forced_tokens=forced, max_new_tokens=8, **kwargs)
        sequences = _sequences(out)
        decoder_order = [_flip(s) if right_to_left else s for s in sequences]
        assert len(decoder_order[0]) == 4 and decoder_order[0][1] == 7 and decoder_order[0][3] == 3, kwargs
        assert decoder_order[1][:4] == (5, 5, 5, 5), kwargs
        free = model.generate(latent=latent[2:], max_new_tokens=8, **kwargs)
        if not kwargs.get("do_sample"):
            assert _sequences(free)[0] == sequences[2]  # an all-free row is unconstrained
    with pytest.raises(ValueError, match="forced_tokens"):
        model.generate(latent=latent, forced_tokens=forced[:2])


def test_right_to_left_generation_returns_reading_order(tiny_model):
    l2r = tiny_model(initializer_range=INIT)
    r2l = tiny_model(initializer_range=INIT, right_to_left=True, seed=1)
    r2l.load_state_dict(l2r.state_dict())
    latent = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for kwargs in (dict(max_new_tokens=12), dict(max_new_tokens=3), dict(max_new_tokens=12, num_beams=3)):
        decoder_order = _sequences(l2r.generate(latent=latent, **kwargs))
        reading_order = r2l.generate(latent=latent, **kwargs)
        expected = [_flip(s) for s in decoder_order]
        assert _sequences(reading_order) == expected
        assert any(len(s) > 2 for s in decoder_order)  # the reversal is visible
        # The reading-order output scores, under the right-to-left model's forward, as generated.
        torch.testing.assert_close(
            _score(r2l, latent, _sequences(reading_order)), reading_order.log_probs, rtol=1e-4, atol=1e-4
        )


def test_reverse_tokens():
    sequences = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0]])
    lengths = torch.tensor([3, 1])
    assert reverse_tokens(sequences, lengths, offset=1).tolist() == [[2, 7, 6, 5, 3, 0], [2, 8, 3, 0, 0, 0]]
    generated = torch.tensor([[5, 6, 7, 3], [8, 9, 0, 0]])
    assert reverse_tokens(generated, torch.tensor([3, 2])).tolist() == [[7, 6, 5, 3], [9, 8, 0, 0]]


# ----------------------------------------------------------------------------- argument checks


def test_generate_rejects_bad_arguments(tiny_model):
    model = tiny_model()
    latent = torch.zeros(2, 4)
    bad = [
        (dict(latent=latent, num_beams=0), "num_beams"),
        (dict(latent=latent, num_return_sequences=0), "num_return_sequences"),
        (dict(latent=latent, do_sample=True, num_beams=2), "num_beams"),
        (dict(latent=latent, num_return_sequences=2), "greedy"),
        (dict(latent=latent, num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(latent=latent, do_sample=True, temperature=0.0), "temperature"),
        (dict(latent=latent, max_new_tokens=0), "max_new_tokens"),
        (dict(latent=torch.zeros(2, 3)), "latent"),
        (dict(latent=torch.zeros(4)), "latent"),
        (dict(num_samples=0), "num_samples"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            model.generate(**kwargs)
    rnnlm = tiny_model(latent_size=0)
    with pytest.raises(ValueError, match="RNNLM"):
        rnnlm.generate(latent=torch.zeros(2, 1))
    out = rnnlm.generate(num_samples=3, max_new_tokens=5)
    assert out.latent is None and out.sequences.shape[0] == 3


# ----------------------------------------------------------------------------- latent helpers


def test_interpolate_endpoints_and_midpoint(tiny_model):
    model = tiny_model()
    start, end = torch.randn(4), torch.randn(4)
    path = model.interpolate(start, end, steps=5)
    assert path.shape == (5, 4)
    assert torch.equal(path[0], start) and torch.equal(path[-1], end)
    torch.testing.assert_close(path[2], (start + end) / 2)
    torch.testing.assert_close(path[1:] - path[:-1], ((end - start) / 4).expand(4, -1))
    batch_start, batch_end = torch.randn(3, 4), torch.randn(3, 4)
    paths = model.interpolate(batch_start, batch_end, steps=7)
    assert paths.shape == (3, 7, 4)
    assert torch.equal(paths[:, 0], batch_start) and torch.equal(paths[:, -1], batch_end)
    out = model.generate(latent=path, max_new_tokens=5)  # a path decodes as a batch of codes
    assert out.sequences.shape[0] == 5
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(start, end, steps=1)
    with pytest.raises(ValueError, match="shape"):
        model.interpolate(start, torch.randn(3), steps=3)


def test_sample_prior(tiny_model):
    model = tiny_model(latent_size=6)
    samples = model.sample_prior(5)
    assert samples.shape == (5, 6) and samples.dtype == model.dtype and samples.device == model.device
    first = model.sample_prior(3, generator=torch.Generator().manual_seed(0))
    again = model.sample_prior(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    many = model.sample_prior(20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(many.mean(0), torch.zeros(6), atol=0.05, rtol=0)
    torch.testing.assert_close(many.std(0), torch.ones(6), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_prior(0)
    out = model.generate(num_samples=4, generator=torch.Generator().manual_seed(2), max_new_tokens=5)
    assert torch.equal(out.latent, model.sample_prior(4, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_suppressed_tokens_are_never_generated_and_scores_stay_the_models(tiny_model, variant):
    """`suppress_tokens` removes ids from every search; the greedy choices are the unsuppressed argmax, and the
    reported log-probabilities are the model's own (not renormalised)."""
    model, latent = _model_and_latent(tiny_model, variant, batch=6)
    free = _generate(model, latent, 6, max_new_tokens=10)
    common = [t for t, _ in Counter(t for s in _sequences(free) for t in s[:-1]).most_common(3)]
    assert common, "the unconstrained samples should contain words to suppress"
    banned = [*common, model.config.unk_token_id]
    for kwargs in (
        dict(max_new_tokens=10),
        dict(num_beams=3, num_return_sequences=2, max_new_tokens=8),
        dict(do_sample=True, max_new_tokens=10, generator=torch.Generator().manual_seed(0)),
    ):
        out = _generate(model, latent, 6, suppress_tokens=banned, **kwargs)
        sequences = _sequences(out)
        assert not any(t in banned for s in sequences for t in s)
        expected = _score(model, _repeat(latent, kwargs.get("num_return_sequences", 1)), sequences)
        torch.testing.assert_close(out.log_probs, expected, rtol=1e-4, atol=1e-4)
    assert _sequences(_generate(model, latent, 6, max_new_tokens=10, suppress_tokens=[])) == _sequences(free)


def test_suppress_tokens_rejects_bad_ids(tiny_model):
    model = tiny_model()
    cfg = model.config
    with pytest.raises(ValueError, match=rf"suppress_tokens.*\[{cfg.vocab_size}\]"):
        model.generate(num_samples=2, suppress_tokens=[cfg.vocab_size])
    with pytest.raises(ValueError, match="end-of-sentence"):
        model.generate(num_samples=2, suppress_tokens=[cfg.eos_token_id])
    forced = torch.full((2, 3), -1)
    forced[0, 1] = cfg.unk_token_id
    with pytest.raises(ValueError, match="forced_tokens pins"):
        model.generate(num_samples=2, forced_tokens=forced, suppress_tokens=[cfg.unk_token_id])


# ----------------------------------------------------------------------------- the fast searches
class _NoOp:
    """A logits processor that changes nothing, but makes the searches take the full-distribution path."""

    def __call__(self, input_ids, scores):
        return scores


@pytest.mark.parametrize("variant", list(FAST_VARIANTS), ids=list(FAST_VARIANTS))
def test_fast_searches_match_the_full_distribution_path(tiny_model, monkeypatch, variant):
    """Greedy and beam search choosing tokens straight from the output layer (`kernels.greedy_tokens` /
    `top_k_tokens`, here over many vocabulary chunks) return what the searches return on the full log-softmax (the
    path any logits processor takes): the same sequences, scores and log-probabilities, for several seeded models of
    every architecture, with `suppress_tokens`, `min_new_tokens` and several return sequences."""
    from transformers.generation import LogitsProcessorList

    from hf_sentence_vae import kernels
    from hf_sentence_vae import modeling_sentence_vae as modeling

    monkeypatch.setattr(kernels, "GREEDY_BUDGET", 64 * 8)
    monkeypatch.setattr(kernels, "GREEDY_MIN_CHUNK", 64)
    monkeypatch.setattr(kernels, "TOP_K_BUDGET", 64 * 8)
    calls = Counter()
    for name in ("greedy_tokens", "top_k_tokens"):
        original = getattr(modeling, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(modeling, name, counted)
    settings = (
        dict(num_beams=1),
        dict(num_beams=1, suppress_tokens=[1, 40, 41], min_new_tokens=4),
        dict(num_beams=4),
        dict(num_beams=4, num_return_sequences=3, suppress_tokens=[1, 7], min_new_tokens=2, length_penalty=0.5),
    )
    for seed in range(3):
        model, latent = _model_and_latent(tiny_model, variant, batch=7, seed=seed, vocab_size=300)
        for kwargs in settings:
            before = sum(calls.values())
            fast = _generate(model, latent, 7, max_new_tokens=12, **kwargs)
            assert sum(calls.values()) > before, "the fast search was not used"
            before = sum(calls.values())
            full = _generate(
                model, latent, 7, max_new_tokens=12, logits_processor=LogitsProcessorList([_NoOp()]), **kwargs
            )
            assert sum(calls.values()) == before, "a logits processor must take the full-distribution path"
            assert torch.equal(fast.sequences, full.sequences), (variant, seed, kwargs)
            torch.testing.assert_close(fast.sequences_scores, full.sequences_scores, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fast.log_probs, full.log_probs, rtol=1e-5, atol=1e-5)
    assert calls["greedy_tokens"] and calls["top_k_tokens"]


def test_every_path_of_a_search_takes_the_packed_products(tiny_model, monkeypatch):
    """Steps of 2 to 128 rows take the LSTM's and the output layer's products from the search's packed weights
    (`kernels.PackedWeight`) on the fast path and on the full-distribution path alike (logits processors,
    `output_scores`, sampling), so both compute the same states and scores; a batch-1 greedy search packs nothing;
    a bfloat16 model, and a search under autocast, keep their own arithmetic."""
    from transformers.generation import LogitsProcessorList

    from hf_sentence_vae import kernels

    if not kernels.PackedWeight.supports(torch.zeros(1, 1)):
        pytest.skip("torch without its oneDNN (mkldnn) ops")
    calls = Counter()
    original = kernels.PackedWeight.__call__

    def counted(self, x):
        calls[len(self.pieces)] += 1  # 1: the output layer, 2: the LSTM's [W_ih, W_hh]
        return original(self, x)

    monkeypatch.setattr(kernels.PackedWeight, "__call__", counted)
    model = tiny_model(initializer_range=INIT)
    latent = torch.randn(3, model.config.latent_size, generator=torch.Generator().manual_seed(5))
    paths = {
        "greedy": {},
        "greedy, output_scores": dict(return_dict_in_generate=True, output_scores=True),
        "beam, logits processor": dict(num_beams=3, logits_processor=LogitsProcessorList([_NoOp()])),
        "sampling": dict(do_sample=True, generator=torch.Generator().manual_seed(0)),
    }
    for name, kwargs in paths.items():
        calls.clear()
        model.generate(latent=latent, max_new_tokens=6, **kwargs)
        assert calls[1] > 0 and calls[2] > 0, name
    fast = model.generate(latent=latent, max_new_tokens=6, return_dict_in_generate=True)
    full = model.generate(latent=latent, max_new_tokens=6, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(fast.sequences, full.sequences)
    torch.testing.assert_close(fast.log_probs, full.log_probs, rtol=1e-5, atol=1e-5)
    calls.clear()
    model.generate(latent=latent[:1], max_new_tokens=6)
    assert not calls
    low = tiny_model(initializer_range=INIT).to(torch.bfloat16)
    out = low.generate(latent=latent.bfloat16(), max_new_tokens=6, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape[0] == 3 and not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(latent=latent, max_new_tokens=6, do_sample=True, return_dict_in_generate=True)
        assert out.sequences.shape[0] == 3
    assert not calls


def test_greedy_ids_alone_skip_the_scores_and_match(tiny_model):
    """`generate` returning ids only (the default) skips the log-probabilities on the fast path; the ids are those of
    the full output."""
    model, latent = _model_and_latent(tiny_model, "default", batch=5, vocab_size=300)
    model.generation_config.return_dict_in_generate = False
    ids = model.generate(latent=latent, max_new_tokens=10)
    out = model.generate(latent=latent, max_new_tokens=10, return_dict_in_generate=True)
    assert torch.equal(ids, out.sequences)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_bf16_output_layer_decodes_nearly_the_same(tiny_model, num_beams):
    """`output_layer_dtype="bfloat16"` decodes (ids and finite scores), mostly the float32 sequences."""
    model, latent = _model_and_latent(tiny_model, "default", batch=16, vocab_size=300)
    fp32 = model.generate(latent=latent, max_new_tokens=10, num_beams=num_beams)
    bf16 = model.generate(latent=latent, max_new_tokens=10, num_beams=num_beams, output_layer_dtype="bfloat16")
    assert bool(torch.isfinite(bf16.sequences_scores).all())
    width = min(fp32.sequences.shape[1], bf16.sequences.shape[1])
    same = (fp32.sequences[:, :width] == bf16.sequences[:, :width]).all(-1).float().mean()
    assert float(same) >= 0.5


def _tie_free_rows(scored, margin: float = 1e-4) -> torch.Tensor:
    """`(B,)` rows of a greedy search (run with `output_scores`) whose two best log-probabilities were at least `margin`
    apart at every step: a choice no float32 rounding of the states can flip (orders of magnitude above it)."""
    top2 = torch.stack(scored.scores).topk(2, dim=-1).values  # (steps, rows, 2)
    return ((top2[..., 0] - top2[..., 1]).nan_to_num(float("inf")) > margin).all(0)


def _count_calls(monkeypatch, owner, name: str) -> list:
    """Patch `owner.name` to record each call (then run as before); returns the record."""
    calls = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("variant", list(FAST_VARIANTS), ids=list(FAST_VARIANTS))
def test_mixed_output_layer_decodes_the_float32_sequences(tiny_model, monkeypatch, variant):
    """`output_layer_dtype="mixed"`: greedy search screens with bfloat16 products (`kernels.screened_greedy_tokens`)
    and steps the LSTM through `kernels.WordGateLSTM` (both run here), and gives the float32 sequences: the screen
    makes the float32 layer's choice, and the looked-up LSTM states differ from `nn.LSTM`'s by float32 rounding only,
    which cannot flip a choice whose two best log-probabilities are this test's margin apart (the rows compared). Beam
    search and greedy search with sequence scores step the LSTM the same way and take float32 products: the float32
    sentences and scores to rounding; with `output_scores` the search is the float32 one (identical)."""
    import hf_sentence_vae.modeling_sentence_vae as modeling
    from hf_sentence_vae.kernels import WordGateLSTM

    monkeypatch.setattr(modeling, "native_bfloat16_cpu", lambda: True)  # the screen runs on any CPU (emulated or not)
    screened = _count_calls(monkeypatch, modeling, "screened_greedy_tokens")
    looked_up = _count_calls(monkeypatch, WordGateLSTM, "__call__")
    model, latent = _model_and_latent(tiny_model, variant, batch=40, vocab_size=300)
    scored = _generate(model, latent, 40, max_new_tokens=12, output_scores=True)
    clear = _tie_free_rows(scored)
    assert int(clear.sum()) >= 30
    fp32 = _generate(model, latent, 40, max_new_tokens=12, return_dict_in_generate=False)
    assert torch.equal(fp32, scored.sequences) and not screened and not looked_up
    mixed = _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed", return_dict_in_generate=False)
    assert screened and looked_up and torch.equal(mixed[clear], fp32[clear])
    screened.clear(), looked_up.clear()
    # under 16 rows (SCREEN_MIN_ROWS, WORD_GATES_MIN_ROWS) "mixed" is the float32 path: neither the screen nor the
    # lookup runs, and the sentences are the float32 ones
    few = None if latent is None else latent[:8]
    small = _generate(model, few, 8, max_new_tokens=12, output_layer_dtype="mixed", return_dict_in_generate=False)
    assert not looked_up and not screened
    assert torch.equal(small, _generate(model, few, 8, max_new_tokens=12, return_dict_in_generate=False))
    # greedy search with scores and beam search: float32 products from the looked-up states, so the float32
    # sentences and scores to rounding (beam search: every row here; a row may differ only through a near-tie)
    for extra in ({}, dict(num_beams=3)):
        want = _generate(model, latent, 40, max_new_tokens=12, **extra)
        got = _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed", **extra)
        assert looked_up and not screened
        looked_up.clear()
        same = (got.sequences == want.sequences).all(-1) if extra else clear
        assert int(same.sum()) >= (38 if extra else int(clear.sum()))
        assert torch.equal(got.sequences[same], want.sequences[same])
        torch.testing.assert_close(got.sequences_scores[same], want.sequences_scores[same], rtol=1e-5, atol=1e-5)
    # with output_scores the search takes the full float32 log-softmax of `nn.LSTM`'s states, as without "mixed"
    want = _generate(model, latent, 40, max_new_tokens=12, output_scores=True)
    got = _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed", output_scores=True)
    assert torch.equal(got.sequences, want.sequences) and not looked_up and not screened
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_output_layer_skips_its_screen_without_bfloat16_instructions(tiny_model, monkeypatch):
    """On a CPU without bfloat16 instructions (`kernels.native_bfloat16_cpu` False), where emulated bfloat16 products
    run at half the float32 speed, "mixed" greedy search makes the float32 choice without the screen (the LSTM
    lookup stays, and so do the float32 sentences); the bfloat16 output layer still runs as asked, with a warning."""
    import hf_sentence_vae.modeling_sentence_vae as modeling
    from hf_sentence_vae.kernels import WordGateLSTM

    screened = _count_calls(monkeypatch, modeling, "screened_greedy_tokens")
    looked_up = _count_calls(monkeypatch, WordGateLSTM, "__call__")
    model, latent = _model_and_latent(tiny_model, "default", batch=40, vocab_size=300)
    scored = _generate(model, latent, 40, max_new_tokens=12, output_scores=True)
    clear = _tie_free_rows(scored)
    assert int(clear.sum()) >= 30
    monkeypatch.setattr(modeling, "native_bfloat16_cpu", lambda: True)
    _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed", return_dict_in_generate=False)
    assert screened and looked_up
    screened.clear(), looked_up.clear()
    monkeypatch.setattr(modeling, "native_bfloat16_cpu", lambda: False)
    mixed = _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed", return_dict_in_generate=False)
    assert looked_up and not screened
    assert torch.equal(mixed[clear], scored.sequences[clear])
    messages = []
    monkeypatch.setattr(modeling.logger, "warning_once", lambda message, *a, **k: messages.append(message))
    _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="bfloat16")
    assert len(messages) == 1 and "without bfloat16 instructions" in messages[0]
    _generate(model, latent, 40, max_new_tokens=12, output_layer_dtype="mixed")
    assert len(messages) == 1  # "mixed" adapts instead


def test_bfloat16_output_layer_looks_the_lstm_inputs_up_and_float32_does_not(tiny_model, monkeypatch):
    """With a bfloat16 output layer both searches step the LSTM through `kernels.WordGateLSTM` (on CPU, 16 rows or more); with the
    float32 layer, or in training mode with dropout, they run `nn.LSTM`'s step."""
    from hf_sentence_vae.kernels import WordGateLSTM

    looked_up = _count_calls(monkeypatch, WordGateLSTM, "__call__")
    model, latent = _model_and_latent(tiny_model, "default", batch=20, dropout=0.3)
    for beams in (1, 3):
        _generate(model, latent, 20, max_new_tokens=6, num_beams=beams)
        assert not looked_up
        _generate(model, latent, 20, max_new_tokens=6, num_beams=beams, output_layer_dtype="bfloat16")
        assert looked_up
        looked_up.clear()
    model.train()
    _generate(model, latent, 20, max_new_tokens=6, output_layer_dtype="bfloat16")
    assert not looked_up
