"""Imputation (constrained beam search, approximate ICM) and the adversarial evaluation (Section 5)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import load_script, main_json

from hf_sentence_vae.imputation import (
    constrained_beam_search,
    icm_score,
    impute,
    impute_texts,
    load_sentences,
    missing_count,
    suffix_unknown_mask,
)

INIT = 0.5  # a larger initialisation than the default, so that tiny random models have peaked distributions
VARIANTS = {
    "vae_l2r": dict(),
    "vae_r2l": dict(right_to_left=True),
    "rnnlm_l2r": dict(latent_size=0),
    "rnnlm_r2l": dict(latent_size=0, right_to_left=True),
}


def _load_script(repo_root, name):
    return load_script(repo_root / "train_scripts" / f"{name}.py")


def _random_unknowns(attention_mask, seed, rate=0.5):
    generator = torch.Generator().manual_seed(seed)
    lengths = attention_mask.sum(-1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1]).unsqueeze(0)
    is_word = (positions >= 1) & (positions < lengths - 1)
    unknown = (torch.rand(attention_mask.shape, generator=generator) < rate) & is_word
    unknown[:, 1] |= is_word[:, 1]  # at least one unknown word per sentence
    return unknown


def _latent(model, input_ids, attention_mask):
    if model.config.is_rnnlm:
        return None
    return model.encode(input_ids, attention_mask)[0]


# --------------------------------------------------------------------------------------------- masks
def test_suffix_unknown_mask_marks_the_final_fifth():
    lengths = list(range(1, 13))
    total = max(lengths) + 2
    attention_mask = torch.zeros((len(lengths), total), dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, : n + 2] = 1
    mask = suffix_unknown_mask(attention_mask, 0.2)
    for row, n in enumerate(lengths):
        m = missing_count(n, 0.2)
        assert m == max(1, int(n * 0.2 + 0.5))
        expected = [False] * total
        for pos in range(n - m + 1, n + 1):
            expected[pos] = True
        assert mask[row].tolist() == expected, (n, m)
    assert missing_count(10, 0.2) == 2 and missing_count(7, 0.2) == 1 and missing_count(1, 0.2) == 1


# --------------------------------------------------------------------------------------------- constrained search
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_constrained_search_keeps_known_words_and_fills_unknown_ones(tiny_model, random_batch, variant):
    model = tiny_model(initializer_range=INIT, **VARIANTS[variant])
    cfg = model.config
    input_ids, attention_mask = random_batch(cfg, [1, 3, 6, 9, 4], seed=1)
    for seed in range(3):
        unknown = _random_unknowns(attention_mask, seed)
        latent = _latent(model, input_ids, attention_mask)
        for allow_unk in (True, False):
            ids, log_probs = constrained_beam_search(
                model, input_ids, attention_mask, unknown, latent, num_beams=3, allow_unk=allow_unk
            )
            assert ids.shape == input_ids.shape
            assert torch.equal(ids[~unknown], input_ids[~unknown])  # known words, <bos>, <eos>, padding
            filled = ids[unknown]
            banned = [cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id] + ([] if allow_unk else [cfg.unk_token_id])
            assert not torch.isin(filled, torch.tensor(banned)).any()
            # The returned score is the whole sentence's log p(x | z).
            expected = model.log_likelihood_given_latent(ids, attention_mask, latent)
            torch.testing.assert_close(log_probs, expected.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["vae_r2l", "rnnlm_l2r"])
def test_constrained_search_is_exact_with_a_wide_beam(tiny_model, random_batch, variant):
    """Two unknown words: a beam as wide as the vocabulary finds the best of all V^2 fillings."""
    model = tiny_model(initializer_range=INIT, **VARIANTS[variant])
    cfg = model.config
    input_ids, attention_mask = random_batch(cfg, [5], seed=3)
    unknown = torch.zeros_like(attention_mask, dtype=torch.bool)
    unknown[0, [2, 4]] = True
    latent = _latent(model, input_ids, attention_mask)
    ids, best = constrained_beam_search(model, input_ids, attention_mask, unknown, latent, num_beams=cfg.vocab_size)
    words = [i for i in range(cfg.vocab_size) if i not in (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id)]
    candidates = input_ids.repeat(len(words) ** 2, 1)
    for row, (a, b) in enumerate(itertools.product(words, words)):
        candidates[row, 2], candidates[row, 4] = a, b
    mask = attention_mask.repeat(len(candidates), 1)
    z = None if latent is None else latent.expand(len(candidates), -1)
    with torch.no_grad():
        scores = model.log_likelihood_given_latent(candidates, mask, z)
    assert float(best) == pytest.approx(float(scores.max()), abs=1e-4)
    assert torch.equal(ids[0], candidates[int(scores.argmax())])


def test_right_to_left_rnnlm_picks_the_last_word_among_its_top_unconditional_choices(tiny_model, random_batch):
    """Decoding right to left, the final word is generated first, from P(x_n | nothing): with beam k and only
    the final word unknown, the imputed word is one of the k most probable first tokens (the paper's point)."""
    model = tiny_model(initializer_range=1.0, latent_size=0, right_to_left=True)
    cfg = model.config
    input_ids, attention_mask = random_batch(cfg, [4, 7, 2, 5], seed=5)
    unknown = suffix_unknown_mask(attention_mask, 0.01)  # exactly the final word
    first, _ = model.decoder_step(torch.full((1,), cfg.bos_token_id), model.initial_decoder_state(None, 1))
    first[0, cfg.eos_token_id] = float("-inf")
    top = set(first[0].topk(2).indices.tolist())
    out = impute(model, input_ids, attention_mask, unknown, num_beams=2)
    assert set(out.input_ids[unknown].tolist()) <= top


# --------------------------------------------------------------------------------------------- ICM
@pytest.mark.parametrize("right_to_left", [False, True])
def test_icm_never_lowers_the_score(tiny_model, random_batch, right_to_left):
    """The approximate ICM's score log p(x | mean of q(z|x)) of the returned assignment never decreases from
    one step to the next (the best assignment so far is kept), over several random models."""
    steps_that_changed = 0
    for seed in range(4):
        model = tiny_model(
            seed=seed,
            initializer_range=1.0,
            right_to_left=right_to_left,
            latent_injection="initial_state_and_inputs",
        )
        input_ids, attention_mask = random_batch(model.config, [2, 5, 8, 3, 10, 6], seed=seed)
        unknown = _random_unknowns(attention_mask, seed, rate=0.6)
        out = impute(model, input_ids, attention_mask, unknown, num_beams=3, num_steps=4)
        assert out.step_scores.shape == (6, 4)
        assert (out.step_scores[:, 1:] >= out.step_scores[:, :-1]).all()
        torch.testing.assert_close(out.step_scores[:, -1], out.scores)
        torch.testing.assert_close(out.scores, out.raw_step_scores.max(-1).values)
        torch.testing.assert_close(out.scores, icm_score(model, out.input_ids, attention_mask), atol=1e-4, rtol=1e-4)
        assert torch.equal(out.input_ids[~unknown], input_ids[~unknown])
        torch.testing.assert_close(out.latent, model.encode(out.input_ids, attention_mask)[0])
        steps_that_changed += int((out.raw_step_scores[:, 1:] != out.raw_step_scores[:, :-1]).sum())
    assert steps_that_changed > 0  # the alternation did move (the test is not vacuous)


def test_impute_rnnlm_is_one_beam_search(tiny_model, random_batch):
    model = tiny_model(initializer_range=INIT, latent_size=0, right_to_left=True)
    input_ids, attention_mask = random_batch(model.config, [3, 6], seed=2)
    unknown = suffix_unknown_mask(attention_mask)
    out = impute(model, input_ids, attention_mask, unknown, num_beams=4)
    ids, log_probs = constrained_beam_search(model, input_ids, attention_mask, unknown, None, num_beams=4)
    assert torch.equal(out.input_ids, ids) and out.step_scores.shape == (2, 1) and out.latent is None
    torch.testing.assert_close(out.scores, log_probs)


def test_impute_rejects_bad_masks(tiny_model, random_batch):
    model = tiny_model()
    input_ids, attention_mask = random_batch(model.config, [3], seed=0)
    bad = torch.zeros_like(attention_mask, dtype=torch.bool)
    bad[0, 0] = True  # <bos>
    with pytest.raises(ValueError, match="word positions"):
        impute(model, input_ids, attention_mask, bad)
    with pytest.raises(ValueError, match="shape"):
        impute(model, input_ids, attention_mask, bad[:, :2])


def test_impute_texts_round_trip(tiny_model, tiny_tokenizer, tiny_sentences):
    model = tiny_model(initializer_range=INIT, right_to_left=True)
    texts = tiny_sentences + ["the zebra sat"]  # an out-of-vocabulary word: compared as <unk>
    records = impute_texts(model, tiny_tokenizer, texts, batch_size=3, num_beams=2, num_steps=2)
    assert [r["original"] for r in records[:-1]] == tiny_sentences
    assert records[-1]["original"] == "the <unk> sat"
    for record in records:
        words = record["original"].split()
        assert record["num_missing"] == missing_count(len(words))
        assert record["prefix"] == " ".join(words[: len(words) - record["num_missing"]])
        assert record["true_suffix"] == " ".join(words[len(words) - record["num_missing"] :])
        assert record["imputed"] == " ".join(filter(None, [record["prefix"], record["imputed_suffix"]]))
        assert len(record["imputed_suffix"].split()) == record["num_missing"]


def test_load_sentences(tmp_path, tiny_tokenizer):
    path = tmp_path / "s.txt"
    path.write_text(" a b c \n\nd\n e f \n", encoding="utf-8")
    assert load_sentences(path) == ["a b c", "d", "e f"]
    assert load_sentences([path, path], min_words=2, max_sentences=3) == ["a b c", "e f", "a b c"]


# --------------------------------------------------------------------------------------------- adversarial evaluation


# --------------------------------------------------------------------------------------------- scripts


def test_impute_script(repo_root, saved_models, tmp_path, capsys):
    script = _load_script(repo_root, "impute")
    output = tmp_path / "out" / "imputations.jsonl"
    summary = main_json(
        script,
        [
            "--model_name_or_path",
            str(saved_models["vae"]),
            "--test_file",
            str(saved_models["test_file"]),
            "--max_sentences",
            "12",
            "--num_beams",
            "2",
            "--num_steps",
            "2",
            "--device",
            "cpu",
            "--output_file",
            str(output),
        ],
        capsys,
    )
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 12 == summary["num_sentences"]
    assert summary["model_type"] == "vae" and summary["right_to_left"] and summary["num_steps"] == 2
