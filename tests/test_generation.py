"""`generate` as a `transformers` user expects it: reconstruction from `input_ids`, codes from `latent=`, prior
samples with neither; ids by default, a `ModelOutput` with `return_dict_in_generate`; `generation_config` and
keyword settings; `transformers` logits processors; scores that `compute_transition_scores` reads; ambiguous input
refused; `generation_config.json` saved and read back; the decoding defaults of trained models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModel,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MaxLengthCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    TextStreamer,
    TopHLogitsWarper,
)
from transformers.generation import BaseStreamer

from hf_sentence_vae import SentenceVAEGenerationOutput, SentenceVAEModel
from hf_sentence_vae.latent import reparameterize
from hf_sentence_vae.modeling_sentence_vae import right_padded
from hf_sentence_vae.training import READABLE_NUM_BEAMS, readable_generation_config

INIT = 0.5  # peaked, tie-free distributions: decodes are real sentences with repeated words


def _strip(row: list[int], pad: int = 0) -> tuple[int, ...]:
    while row and row[-1] == pad:
        row = row[:-1]
    return tuple(row)


def _rows(ids: torch.Tensor) -> list[tuple[int, ...]]:
    return [_strip(row) for row in ids.tolist()]


def _log_likelihood(model, latent: torch.Tensor | None, sequences: list[tuple[int, ...]]) -> torch.Tensor:
    """log p(sequence | z) by the forward pass, for generated sequences in reading order (those cut at the
    length limit without <eos> are scored without it)."""
    cfg = model.config
    total = max(len(s) for s in sequences) + 2
    input_ids = torch.full((len(sequences), total), cfg.pad_token_id)
    labels = torch.full((len(sequences), total), -100)
    for row, seq in enumerate(sequences):
        ends = len(seq) > 0 and seq[-1] == cfg.eos_token_id
        ids = [cfg.bos_token_id, *(seq[:-1] if ends else seq), cfg.eos_token_id]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
        if not ends:
            labels[row, len(ids) - 1] = -100
    with torch.no_grad():
        out = model(input_ids, input_ids.ne(cfg.pad_token_id), labels=labels, latent=latent, return_logits=False)
    return -out.reconstruction_per_sentence


@pytest.fixture
def vae(tiny_model):
    return tiny_model(initializer_range=INIT, max_sentence_length=12)


@pytest.fixture
def batch(tiny_tokenizer, tiny_sentences):
    return tiny_tokenizer(tiny_sentences[:3], padding=True, return_tensors="pt")


# --------------------------------------------------------------------------- the three sources of codes
def test_input_ids_are_reconstructed_positionally_or_by_keyword(vae, batch, tiny_tokenizer):
    mu, logvar = vae.encode(batch["input_ids"], batch["attention_mask"])
    from_codes = vae.generate(latent=mu)
    assert from_codes.dtype == torch.long and from_codes.shape[0] == 3
    assert torch.equal(vae.generate(**batch), from_codes)
    assert torch.equal(vae.generate(batch["input_ids"], attention_mask=batch["attention_mask"]), from_codes)
    assert torch.equal(vae.generate(batch["input_ids"], batch["attention_mask"]), from_codes)
    assert torch.equal(vae.generate(inputs=batch["input_ids"], attention_mask=batch["attention_mask"]), from_codes)
    texts = tiny_tokenizer.batch_decode(vae.generate(**batch), skip_special_tokens=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # a posterior sample on request, drawn with the generator
    sampled = vae.generate(**batch, sample_latent=True, generator=torch.Generator().manual_seed(4))
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(4))
    assert torch.equal(sampled, vae.generate(latent=z))
    out = vae.generate(**batch, return_dict_in_generate=True)
    torch.testing.assert_close(out.latent, mu)


def test_token_ids_are_never_taken_for_codes(tiny_model, tiny_tokenizer):
    """An 8-token sentence and a latent size of 8: positional ids are sentences to reconstruct, never a code
    z = [2, 4, 44, ...]."""
    model = tiny_model(latent_size=8, initializer_range=INIT, max_sentence_length=12)
    ids = tiny_tokenizer(["the cat sat on the mat ."], return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 9) or ids.shape[1] >= 8
    mu, _ = model.encode(ids)
    assert torch.equal(model.generate(ids), model.generate(latent=mu))
    assert not torch.equal(model.generate(ids), model.generate(latent=ids[:, :8].float()))


def test_no_inputs_samples_the_prior(vae, tiny_model):
    one = vae.generate(generator=torch.Generator().manual_seed(0))
    assert one.shape[0] == 1  # as transformers: a batch of one
    sampled = vae.generate(num_samples=4, generator=torch.Generator().manual_seed(1), return_dict_in_generate=True)
    z = vae.sample_prior(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled.latent, z) and torch.equal(sampled.sequences, vae.generate(latent=z))
    rnnlm = tiny_model(latent_size=0, initializer_range=INIT)
    out = rnnlm.generate(num_samples=3, max_new_tokens=5, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 3 and out.latent is None


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, b, z: m.generate(z), "input_ids must be an integer tensor.*latent="),  # codes given positionally
        (lambda m, b, z: m.generate(b["input_ids"].float()), "input_ids must be an integer tensor"),
        (lambda m, b, z: m.generate(**b, latent=z), "not both"),
        (lambda m, b, z: m.generate(b["input_ids"], inputs=b["input_ids"]), "not both"),
        (lambda m, b, z: m.generate(latent=b["input_ids"][:, :4]), "floating-point"),
        (lambda m, b, z: m.generate(latent=z, num_samples=5), "num_samples=5 differs"),
        (lambda m, b, z: m.generate(**b, num_samples=2), "num_samples=2 differs"),
        (lambda m, b, z: m.generate(attention_mask=b["attention_mask"]), "without input_ids"),
        (lambda m, b, z: m.generate(latent=z, sample_latent=True), "sample_latent"),
        (lambda m, b, z: m.generate(latent=z, num_samples=True), "num_samples must be an integer"),
        (lambda m, b, z: m.generate(latent=z, beams=3), r"does not use: \['beams'\]"),
        (lambda m, b, z: m.generate(latent=z, streamer=object()), "streamer"),
        (lambda m, b, z: m.generate(latent=z, num_beam_groups=2, num_beams=4), "num_beam_groups"),
        (lambda m, b, z: m.generate(latent=z, stop_strings=["."]), "stop_strings"),
        (lambda m, b, z: m.generate(latent=z, eos_token_id=5), "eos_token_id=5 differs"),
        (lambda m, b, z: m.generate(latent=z, generation_config={"num_beams": 2}), "GenerationConfig"),
        (lambda m, b, z: m.generate(latent=z, do_sample=True, num_beams=3), "do_sample=True with num_beams=3"),
        (lambda m, b, z: m.generate(latent=z, bad_words_ids=[[999]]), "bad_words_ids"),
        (lambda m, b, z: m.generate(b["input_ids"][:, 1:]), "<bos> words <eos>"),  # not a tokenizer encoding
    ],
)
def test_ambiguous_or_unsupported_input_is_an_error(vae, batch, call, match):
    z = torch.zeros(3, vae.config.latent_size)
    with pytest.raises(ValueError, match=match):
        call(vae, batch, z)


def test_an_rnnlm_refuses_sentences_to_reconstruct(tiny_model, batch):
    rnnlm = tiny_model(latent_size=0)
    with pytest.raises(ValueError, match="RNNLM.*cannot be reconstructed"):
        rnnlm.generate(**batch)


def test_left_padded_sentences_are_reconstructed_as_right_padded_ones(vae, batch, tiny_tokenizer, tiny_sentences):
    # A tokenizer set to pad on the left (the habit of decoder-only generation) gives the same codes and decodes.
    left = tiny_tokenizer(tiny_sentences[:3], padding=True, padding_side="left", return_tensors="pt")
    assert not bool(left["attention_mask"][:, 0].all()), "the batch must have a left-padded row"
    for mask in (left["attention_mask"], None):  # given, or inferred from <pad>
        mu, logvar = vae.encode(left["input_ids"], mask)
        reference = vae.encode(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close((mu, logvar), reference)
        assert torch.equal(vae.generate(left["input_ids"], attention_mask=mask), vae.generate(**batch))
    # Scoring keeps right padding (its logits align with the input's positions) and says so.
    with pytest.raises(ValueError, match=r"row \d of input_ids is left-padded.*padding_side = 'right'"):
        vae(**left)


def test_right_padded_moves_left_padding_to_the_end():
    ids = torch.tensor([[0, 0, 2, 7, 3], [2, 8, 9, 6, 3], [0, 2, 5, 3, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    moved, moved_mask = right_padded(ids, mask, pad_token_id=0)
    assert moved.tolist() == [[2, 7, 3, 0, 0], [2, 8, 9, 6, 3], [2, 5, 3, 0, 0]]
    assert moved_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    right = ids[1:2]
    assert right_padded(right, torch.ones_like(right), 0)[0] is right  # nothing to move: the same tensor


# --------------------------------------------------------------------------- return types and scores
def test_ids_by_default_an_output_on_request(vae):
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    ids = vae.generate(latent=z)
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long
    out = vae.generate(latent=z, return_dict_in_generate=True)
    assert isinstance(out, SentenceVAEGenerationOutput) and torch.equal(out.sequences, ids)
    assert out.sequences_scores.shape == (3,) and out.scores is None
    assert torch.equal(out[0], ids)  # a ModelOutput: sequences first
    # output_scores alone changes nothing (as in transformers: the flags need return_dict_in_generate)
    assert torch.equal(vae.generate(latent=z, output_scores=True), ids)


@pytest.mark.parametrize("right_to_left", [False, True])
def test_scores_give_the_sequences_log_likelihood(tiny_model, right_to_left):
    """`compute_transition_scores` over the per-step scores sums to each sequence's log-probability, for greedy,
    sampling and beam search (with `beam_indices`)."""
    model = tiny_model(initializer_range=INIT, max_sentence_length=10, right_to_left=right_to_left)
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    vocab = model.config.vocab_size
    for kwargs in (
        dict(),
        dict(max_new_tokens=3),
        dict(do_sample=True, num_return_sequences=2, generator=torch.Generator().manual_seed(2)),
        dict(num_beams=3, num_return_sequences=2, length_penalty=0.0),
    ):
        out = model.generate(latent=z, return_dict_in_generate=True, output_scores=True, **kwargs)
        steps = out.sequences.shape[1]
        rows = out.sequences.shape[0]
        assert isinstance(out.scores, tuple) and len(out.scores) == steps
        width = rows if "num_beams" not in kwargs else 4 * kwargs["num_beams"]
        assert all(s.shape == (width, vocab) for s in out.scores)
        # the scores are in the decoder's order: compare on sequences in that order
        sequences = out.sequences
        if right_to_left:
            decoder_order = [
                (tuple(reversed(s[:-1])) + (3,)) if s and s[-1] == 3 else tuple(reversed(s)) for s in _rows(sequences)
            ]
            sequences = torch.zeros_like(out.sequences)
            for i, s in enumerate(decoder_order):
                sequences[i, : len(s)] = torch.tensor(s)
        transition = model.compute_transition_scores(sequences, out.scores, out.beam_indices)
        torch.testing.assert_close(transition.sum(-1), out.log_probs, rtol=1e-5, atol=1e-5)
        n = kwargs.get("num_return_sequences", 1)
        expected = _log_likelihood(model, z.repeat_interleave(n, 0), _rows(out.sequences))
        torch.testing.assert_close(out.log_probs, expected, rtol=1e-4, atol=1e-4)
        assert (out.beam_indices is not None) == ("num_beams" in kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(do_sample=True, num_return_sequences=2, temperature=0.7),
        dict(num_beams=3, num_return_sequences=2, length_penalty=0.0),
    ],
    ids=["greedy", "sampling", "beam"],
)
def test_logits_are_the_models_own_log_probabilities(tiny_model, kwargs):
    """`output_logits`: every step's unprocessed log-probabilities, in the layout of `scores`, whatever the logits
    processors and constraints did; asking for them leaves the sequences as they were."""
    model = tiny_model(initializer_range=INIT, max_sentence_length=10)
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    settings = dict(repetition_penalty=3.0, min_new_tokens=2, suppress_tokens=[5], **kwargs)

    def run(**flags):
        generator = torch.Generator().manual_seed(2)
        return model.generate(latent=z, return_dict_in_generate=True, generator=generator, **settings, **flags)

    plain, out = run(), run(output_logits=True)
    assert torch.equal(out.sequences, plain.sequences) and plain.logits is None
    assert out.scores is None and len(out.logits) == out.sequences.shape[1]
    assert (out.beam_indices is not None) == ("num_beams" in kwargs)
    # the model's log-probabilities: normalised rows, and the chosen tokens' entries sum to log_probs
    for step in out.logits:
        open_rows = step[:, model.config.pad_token_id] != 0
        torch.testing.assert_close(step[open_rows].logsumexp(-1), torch.zeros(int(open_rows.sum())))
    transition = model.compute_transition_scores(out.sequences, out.logits, out.beam_indices)
    torch.testing.assert_close(transition.sum(-1), out.log_probs, rtol=1e-5, atol=1e-5)
    # ... while the scores are those the search chose from: the processors changed them
    both = run(output_logits=True, output_scores=True)
    for logits, step in zip(both.logits, out.logits):
        torch.testing.assert_close(logits, step)
    assert any(not torch.allclose(scores, logits) for scores, logits in zip(both.scores, both.logits))


# --------------------------------------------------------------------------- settings
def test_generation_config_and_keywords(vae):
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    greedy, beams = vae.generate(latent=z), vae.generate(latent=z, num_beams=3)
    assert not torch.equal(greedy, beams)  # premise: the two searches differ here, so the checks tell them apart
    assert torch.equal(vae.generate(latent=z, generation_config=GenerationConfig(num_beams=3)), beams)
    # the model's own generation_config is the default; keywords and generation_config= override it
    vae.generation_config.num_beams = 3
    assert torch.equal(vae.generate(latent=z), beams)
    assert torch.equal(vae.generate(latent=z, num_beams=1), greedy)
    assert torch.equal(vae.generate(latent=z, generation_config=GenerationConfig(num_beams=1)), greedy)
    # sampling asked for replaces a default beam width instead of clashing with it
    sampled = vae.generate(latent=z, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled.shape[0] == 8
    vae.generation_config.num_beams = None
    # lengths: max_length counts generated tokens (no prompt in the sequences); the default is the config's
    with torch.no_grad():
        vae.lm_head.bias[vae.config.eos_token_id] = -30.0  # never ends by itself
    assert vae.generate(latent=z).shape == (8, vae.config.max_sentence_length)
    assert vae.generate(latent=z, max_length=5).shape == (8, 5)
    assert vae.generate(latent=z, max_new_tokens=4, max_length=7).shape == (8, 4)  # max_new_tokens wins
    with torch.no_grad():
        vae.lm_head.bias[vae.config.eos_token_id] = 30.0  # ends at once
    assert vae.generate(latent=z, min_length=3).shape == (8, 4)


def test_repetition_penalty_and_no_repeat_ngram_size_through_logits_processors(vae):
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    plain = _rows(vae.generate(latent=z))
    assert any(len(set(s[:-1])) < len(s[:-1]) for s in plain), "premise: greedy decodes repeat words"
    for kwargs in (dict(repetition_penalty=1e6), dict(no_repeat_ngram_size=1)):
        for decoding in (dict(), dict(num_beams=3), dict(do_sample=True, generator=torch.Generator().manual_seed(0))):
            out = vae.generate(latent=z, return_dict_in_generate=True, **kwargs, **decoding)
            rows = _rows(out.sequences)
            assert all(len(set(s)) == len(s) for s in rows), (kwargs, decoding, rows)
            # the reported log-probabilities stay the model's own
            torch.testing.assert_close(out.log_probs, _log_likelihood(vae, z, rows), rtol=1e-4, atol=1e-4)
    two = _rows(vae.generate(latent=z, no_repeat_ngram_size=2))
    for s in two:
        pairs = list(zip(s, s[1:]))
        assert len(set(pairs)) == len(pairs)


def _model_and_its_common_words(tiny_model, right_to_left: bool):
    """A model, codes, and the commonest word and word pair (in reading order) of their greedy decodes."""
    model = tiny_model(initializer_range=INIT, max_sentence_length=12, right_to_left=right_to_left)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(6))
    plain = _rows(model.generate(latent=z))
    words = [t for s in plain for t in s[:-1]]
    pairs = [p for s in plain for p in zip(s[:-1], s[1:-1])]
    assert pairs, "premise: decodes of two words or more"
    return model, z, max(set(words), key=words.count), list(max(set(pairs), key=pairs.count))


@pytest.mark.parametrize("right_to_left", [False, True])
def test_bad_words_ids_are_never_generated(tiny_model, right_to_left):
    model, z, single, pair = _model_and_its_common_words(tiny_model, right_to_left)
    for decoding in (dict(), dict(num_beams=3)):
        rows = _rows(model.generate(latent=z, bad_words_ids=[[single]], **decoding))
        assert all(single not in s for s in rows)
        rows = _rows(model.generate(latent=z, bad_words_ids=[pair], **decoding))
        assert all(tuple(pair) not in set(zip(s, s[1:])) for s in rows), (pair, rows)


@pytest.mark.parametrize("right_to_left", [False, True])
def test_sequence_bias_steers_words_and_word_pairs(tiny_model, right_to_left):
    model, z, single, pair = _model_and_its_common_words(tiny_model, right_to_left)
    for decoding in (dict(), dict(num_beams=3)):
        # a prohibitive bias bans as bad_words_ids does, a word pair in reading order
        for banned in ([single], pair):
            biased = model.generate(latent=z, sequence_bias=[[banned, -1e4]], **decoding)
            assert torch.equal(biased, model.generate(latent=z, bad_words_ids=[banned], **decoding))
        # a large positive bias makes a word the first choice everywhere
        rows = _rows(model.generate(latent=z, sequence_bias={(single,): 1e4}, max_new_tokens=3, **decoding))
        assert all(s == (single,) * 3 for s in rows), rows
    with pytest.raises(ValueError, match="sequence_bias must be ids in"):
        model.generate(latent=z, sequence_bias=[[[10**6], 1.0]])


@pytest.mark.parametrize(
    "decoding", [dict(), dict(num_beams=3), dict(do_sample=True)], ids=["greedy", "beam", "sample"]
)
def test_forced_eos_and_exponential_decay_length_penalty_end_sentences(vae, decoding):
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        vae.lm_head.bias[vae.config.eos_token_id] = -4.0  # long sentences

    def run(**kwargs):
        return _rows(vae.generate(latent=z, generator=torch.Generator().manual_seed(0), **decoding, **kwargs))

    eos = vae.config.eos_token_id
    plain = run(max_new_tokens=4)
    assert any(s[-1] != eos for s in plain), "premise: sentences cut at the length limit"
    forced = run(max_new_tokens=4, forced_eos_token_id=eos)
    assert all(s[-1] == eos and len(s) <= 4 for s in forced)
    if "num_beams" not in decoding:  # (beam search may keep other hypotheses for their ends)
        assert [s[:-1] for s in forced if len(s) == 4] == [s[:3] for s in plain if len(s) == 4]
    # a decay factor > 1 raises the end of sentence's score from the given step on: shorter sentences
    long = run()
    decayed = run(exponential_decay_length_penalty=(1, 4.0))
    assert sum(map(len, decayed)) < sum(map(len, long)) and all(len(s) <= 3 for s in decayed), decayed
    if "num_beams" not in decoding:  # nothing changes before the start index
        assert [s[:1] for s in decayed] == [s[:1] for s in long]
    for bad, match in (
        (dict(forced_eos_token_id=eos + 1), "ends sentences with eos_token_id"),
        (dict(forced_eos_token_id=eos, max_new_tokens=3, min_new_tokens=3), "min_new_tokens=3 forbids"),
        (dict(exponential_decay_length_penalty=(1, 0.0)), "decay factor > 0"),
        (dict(exponential_decay_length_penalty=(-1, 2.0)), "start index >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            run(**bad)


EVERY_SEARCH = pytest.mark.parametrize(
    "decoding",
    [dict(), dict(num_beams=3, num_return_sequences=2), dict(do_sample=True)],
    ids=["greedy", "beam", "sample"],
)


def _long_sentences(vae, decoding: dict, seed: int):
    """`run(**settings)`: `vae`, made to write long sentences, decodes six codes with `decoding` (sampling from a
    fixed seed) and returns the `return_dict_in_generate` output."""
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        vae.lm_head.bias[vae.config.eos_token_id] = -4.0

    def run(**settings):
        generator = torch.Generator().manual_seed(0)
        return vae.generate(latent=z, return_dict_in_generate=True, generator=generator, **decoding, **settings)

    return run


@EVERY_SEARCH
def test_max_time_ends_the_search_as_the_length_limit_would(vae, decoding, monkeypatch):
    # a clock that moves one second each time the search reads it: max_time=2.5 runs three steps
    clock = iter(range(10**6))
    monkeypatch.setattr("hf_sentence_vae.decoding.monotonic", lambda: next(clock))
    run = _long_sentences(vae, decoding, seed=12)
    timed, limited = run(max_time=2.5), run(max_new_tokens=3)
    assert timed.sequences.shape[1] == 3 and any(row[-1] != vae.config.eos_token_id for row in _rows(timed.sequences))
    assert torch.equal(timed.sequences, limited.sequences)
    torch.testing.assert_close(timed.sequences_scores, limited.sequences_scores)
    assert run(max_time=10**5).sequences.shape[1] > 3  # time to spare: the sentences' own ends
    for bad in (0, -1.0, "1", True):
        with pytest.raises(ValueError, match=f"max_time must be > 0 seconds, got {bad!r}"):
            run(max_time=bad)


@EVERY_SEARCH
def test_stopping_criteria_end_the_sequences_they_mark(vae, decoding):
    run = _long_sentences(vae, decoding, seed=13)
    # transformers' own criterion: as the length limit
    limited = run(stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(max_length=3)]))
    assert torch.equal(limited.sequences, run(max_new_tokens=3).sequences)
    # a criterion of our own: a sentence ends at its first `word`, which is then its last token
    plain = _rows(run().sequences)
    words = [t for s in plain for t in s[:-1]]
    word = max(set(words), key=words.count)
    seen = []

    def at_word(ids, scores):
        seen.append((ids.shape, scores))
        return ids[:, -1] == word

    rows = _rows(run(stopping_criteria=at_word).sequences)
    assert all(word not in s[:-1] for s in rows) and any(s[-1] == word for s in rows)
    if "num_beams" not in decoding:  # rows do not interact: each is the plain sentence cut at its first `word`
        assert rows == [s[: s.index(word) + 1] if word in s else s for s in plain]
    assert all(scores is None and len(shape) == 2 for shape, scores in seen)
    with pytest.raises(ValueError, match="one bool per sequence"):
        run(stopping_criteria=lambda ids, scores: torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="stopping_criteria must be"):
        run(stopping_criteria=3)


def test_begin_suppress_tokens_forbid_the_first_word(tiny_model):
    model = tiny_model(initializer_range=INIT)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    for decoding in (dict(), dict(num_beams=3)):
        plain = _rows(model.generate(latent=z, **decoding))
        first = {s[0] for s in plain}
        rows = _rows(model.generate(latent=z, begin_suppress_tokens=sorted(first), **decoding))
        assert all(s[0] not in first for s in rows)
        assert any(t in first for s in rows for t in s[1:]), "the words stay allowed after the first position"
    with pytest.raises(ValueError, match="right_to_left"):
        tiny_model(right_to_left=True).generate(latent=z, begin_suppress_tokens=[5])


@pytest.mark.parametrize("decoding", [dict(), dict(num_beams=3), dict(do_sample=True, temperature=2.0)])
def test_renormalize_logits_and_remove_invalid_values(vae, decoding):
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(10))
    pad = vae.config.pad_token_id

    def scores(**kwargs):
        out = vae.generate(
            latent=z,
            return_dict_in_generate=True,
            output_scores=True,
            repetition_penalty=5.0,
            generator=torch.Generator().manual_seed(0),
            **decoding,
            **kwargs,
        )
        return [step[step[:, pad] != 0] for step in out.scores]  # the rows still open

    def normalised(steps):
        return all(torch.allclose(step.logsumexp(-1), torch.zeros(len(step)), atol=1e-5) for step in steps)

    assert not normalised(scores()), "premise: the processed scores are not normalised"
    assert normalised(scores(renormalize_logits=True))
    assert not all(bool(step.isfinite().all()) for step in scores()), "premise: the scores hold -inf"
    assert all(bool(step.isfinite().all()) for step in scores(remove_invalid_values=True))


@pytest.mark.parametrize(
    "setting, warper",
    [
        (dict(epsilon_cutoff=0.05), lambda: EpsilonLogitsWarper(0.05)),
        (dict(eta_cutoff=0.5), lambda: EtaLogitsWarper(0.5)),
        (dict(top_h=0.3), lambda: TopHLogitsWarper(top_h=0.3)),
    ],
    ids=["epsilon_cutoff", "eta_cutoff", "top_h"],
)
def test_sampling_warpers_of_transformers(tiny_model, setting, warper):
    vae = tiny_model(initializer_range=INIT)
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(11))

    def sample(**kwargs):
        return vae.generate(latent=z, do_sample=True, generator=torch.Generator().manual_seed(1), **kwargs)

    warped = sample(**setting)
    assert not torch.equal(warped, sample()), "premise: the warper changes the samples"
    name = next(iter(setting))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"{name}"):
            sample(**{name: bad})
    # the same distribution as the warper applied by hand (at temperature 1, a processor before the warpers)
    assert torch.equal(warped, sample(logits_processor=LogitsProcessorList([warper()])))


def test_a_custom_logits_processor_is_applied(vae):
    class Ban(LogitsProcessor):
        def __init__(self, token: int):
            self.token = token

        def __call__(self, input_ids, scores):
            return scores.index_fill(-1, torch.tensor([self.token]), float("-inf"))

    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    words = [t for s in _rows(vae.generate(latent=z)) for t in s[:-1]]
    banned = max(set(words), key=words.count)
    out = vae.generate(latent=z, logits_processor=LogitsProcessorList([Ban(banned)]))
    assert all(banned not in s for s in _rows(out))


# --------------------------------------------------------------------------- saved, loaded, and trained defaults
def test_generation_config_json_is_saved_and_read_back(tmp_path, vae, tiny_tokenizer):
    assert vae.can_generate() and isinstance(vae.generation_config, GenerationConfig)
    vae.save_pretrained(tmp_path / "plain")
    assert (tmp_path / "plain" / "generation_config.json").is_file()  # in every case
    vae.generation_config.num_beams = 3
    vae.generation_config.suppress_tokens = [tiny_tokenizer.unk_token_id]
    vae.save_pretrained(tmp_path / "beams")
    loaded = AutoModel.from_pretrained(tmp_path / "beams")
    assert loaded.generation_config.num_beams == 3
    assert loaded.generation_config.suppress_tokens == [tiny_tokenizer.unk_token_id]
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(8))
    expected = vae.generate(latent=z, num_beams=3, suppress_tokens=[tiny_tokenizer.unk_token_id])
    assert torch.equal(loaded.generate(latent=z), expected)


def test_trained_models_decode_with_readable_defaults(tiny_config):
    vae = readable_generation_config(tiny_config(), unk_in_corpus=True)
    assert vae.num_beams == READABLE_NUM_BEAMS == 5 and vae.suppress_tokens == [tiny_config().unk_token_id]
    assert not vae.do_sample
    assert readable_generation_config(tiny_config(), unk_in_corpus=False).suppress_tokens is None
    rnnlm = readable_generation_config(tiny_config(latent_size=0), unk_in_corpus=True)
    assert rnnlm.do_sample and rnnlm.num_beams is None  # one sentence per beam search without z: sample instead


# --------------------------------------------------------------------------- impossible settings and codes
def test_generation_rejects_top_p_zero_and_non_finite_latents(model_folder):
    from transformers import AutoTokenizer, pipeline

    import hf_sentence_vae.pipelines  # noqa: F401

    model = SentenceVAEModel.from_pretrained(model_folder)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        model.generate(num_samples=2, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0, got nan"):
        model.generate(num_samples=2, do_sample=True, temperature=float("nan"))
    latent = torch.zeros(2, 4)
    latent[1, 2] = float("nan")
    with pytest.raises(ValueError, match="latent holds NaN or infinite values"):
        model.generate(latent=latent)
    with pytest.raises(ValueError, match=r"max_new_tokens <= 10000"):
        model.generate(num_samples=1, max_new_tokens=10**12)
    pipe = pipeline("sentence-vae", model=model, tokenizer=AutoTokenizer.from_pretrained(model_folder), device="cpu")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        pipe(2, do_sample=True, top_p=0.0)


def test_output_layer_dtype_is_a_checked_setting_saved_with_the_generation_config(tmp_path, vae):
    """`output_layer_dtype` ("float32", the default, "bfloat16" or "mixed") comes as a keyword or from the generation config
    (and survives saving it); other values are refused, naming the value."""
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    default = vae.generate(latent=z)
    assert torch.equal(vae.generate(latent=z, output_layer_dtype="float32"), default)
    assert torch.equal(vae.generate(latent=z, output_layer_dtype=torch.float32), default)
    assert vae.generate(latent=z, output_layer_dtype="bfloat16", num_beams=2).shape[0] == 6
    assert torch.equal(vae.generate(latent=z, output_layer_dtype="mixed"), default)
    for bad in ("float16", "bf16", torch.float64):
        with pytest.raises(ValueError, match=rf"output_layer_dtype must be one of .*got {bad!r}"):
            vae.generate(latent=z, output_layer_dtype=bad)
    # (transformers drops fields of its own from a generation config derived from the model config when it loads
    # one: the setting is saved in a GenerationConfig of its own)
    vae.generation_config = GenerationConfig(output_layer_dtype="mixed")
    vae.save_pretrained(tmp_path / "model")
    loaded = SentenceVAEModel.from_pretrained(tmp_path / "model")
    assert loaded.generation_config.output_layer_dtype == "mixed"
    assert loaded.generate(latent=z).shape[0] == 6
    with pytest.raises(ValueError, match="output_layer_dtype must be one of"):
        vae.generate(latent=z, generation_config=GenerationConfig(output_layer_dtype="int8"))


# --------------------------------------------------------------------------- streamers
class _RecordingStreamer(BaseStreamer):
    """What `generate` hands a streamer: every `put`, and how often `end` was called."""

    def __init__(self):
        self.puts: list[list[int]] = []
        self.ends = 0

    def put(self, value):
        assert self.ends == 0, "put after end"
        assert value.device.type == "cpu"
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ends += 1


@pytest.mark.parametrize(
    "settings",
    [{}, {"repetition_penalty": 1.5}, {"do_sample": True, "top_k": 5}],
    ids=["greedy_fast_path", "greedy_with_processor", "sampling"],
)
def test_a_streamer_gets_the_bos_then_each_token_of_the_one_sentence(vae, settings):
    """As in `transformers`: the start (here `<bos>`, in place of a prompt) first, then one token per step, the
    `<eos>` included, then `end` once; together they are the returned sequence."""
    z = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    streamer = _RecordingStreamer()
    ids = vae.generate(latent=z, streamer=streamer, generator=torch.Generator().manual_seed(2), **settings)
    expected = vae.generate(latent=z, generator=torch.Generator().manual_seed(2), **settings)
    assert torch.equal(ids, expected)  # token ids: streaming changes nothing
    assert streamer.ends == 1
    assert streamer.puts[0] == [vae.config.bos_token_id]
    assert all(len(put) == 1 for put in streamer.puts[1:])
    assert [put[0] for put in streamer.puts[1:]] == list(_rows(ids)[0])


def test_text_streamers_show_the_decoded_sentence(vae, tiny_tokenizer, capsys):
    """`TextStreamer` prints, and `TextIteratorStreamer` yields, the text `batch_decode` gives."""
    z = torch.randn(1, 4, generator=torch.Generator().manual_seed(3))
    text = tiny_tokenizer.batch_decode(vae.generate(latent=z), skip_special_tokens=True)[0]
    assert text.strip()
    vae.generate(latent=z, streamer=TextStreamer(tiny_tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert capsys.readouterr().out.strip() == text.strip()
    iterator = TextIteratorStreamer(tiny_tokenizer, skip_prompt=True, skip_special_tokens=True)
    vae.generate(latent=z, streamer=iterator)
    assert "".join(iterator).strip() == text.strip()


def test_a_streamer_refuses_what_it_cannot_follow(vae, tiny_model, batch):
    """Several sentences, beam search and right-to-left decoding raise, naming the problem, before anything is
    streamed."""
    z = torch.randn(1, 4)
    cases = [
        (
            vae,
            dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
            "follows one sentence.*got 3",
        ),
        (vae, dict(latent=z, num_return_sequences=2, do_sample=True), "follows one sentence.*got 2"),
        (vae, dict(latent=z, num_beams=3), r"cannot follow beam search \(num_beams=3\)"),
        (tiny_model(right_to_left=True), dict(latent=z), "cannot follow a right_to_left model"),
    ]
    for model, kwargs, match in cases:
        streamer = _RecordingStreamer()
        with pytest.raises(ValueError, match=match):
            model.generate(streamer=streamer, **kwargs)
        assert streamer.puts == [] and streamer.ends == 0
