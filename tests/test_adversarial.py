"""The adversarial evaluation of imputations (`hf_sentence_vae.adversarial`, the paper's Table 4) and its script."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from helpers import (
    load_script,
    main_json,
)

from hf_sentence_vae.adversarial import adversarial_error, adversarial_evaluation, build_splits, sentence_nll

INIT = 0.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy_pairs(n=200, seed=0):
    rng = random.Random(seed)
    words = "the a cat dog sat ran on in park mat house green red big small".split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 8))) for _ in range(n)]


LSTM_FAST = dict(embedding_size=16, hidden_size=16, max_epochs=8, patience=2, learning_rate=1e-2, device="cpu")


def test_adversarial_error_extremes():
    assert adversarial_error(1.0) == 50.0 and adversarial_error(0.5) == 0.0
    with pytest.raises(ValueError):
        adversarial_error(1.5)
    base = _toy_pairs()
    true = [s + " alpha" for s in base]
    fake = [s + " beta" for s in base]
    separable = adversarial_evaluation(true, fake, lstm_kwargs=LSTM_FAST)
    for name in ("unigram", "lstm"):
        assert separable[name]["adversarial_error"] == pytest.approx(50.0, abs=2.5), separable[name]
    # Identical sets: every sentence is both a positive and a negative example of the same split.
    identical = adversarial_evaluation(true, true, lstm_kwargs=dict(LSTM_FAST, max_epochs=2, patience=1))
    for name in ("unigram", "lstm"):
        assert identical[name]["adversarial_error"] == pytest.approx(0.0, abs=1e-9)
        assert identical[name]["num_test"] == 40 and identical[name]["num_train"] == 320


def test_build_splits_keeps_pairs_together_and_balanced():
    true = [f"t{i}" for i in range(50)]
    fake = [f"f{i}" for i in range(50)]
    splits = build_splits(true, fake, seed=3)
    seen = set()
    for name, size in (("train", 40), ("dev", 5), ("test", 5)):
        texts, labels = splits.split(name)
        assert len(texts) == 2 * size and labels.sum() == size
        ids = {t[1:] for t in texts}
        assert len(ids) == size and not (ids & seen)
        seen |= ids
        for text, label in zip(texts, labels):
            assert text.startswith("t" if label == 1 else "f")
    with pytest.raises(ValueError, match="pair up"):
        build_splits(true, fake[:-1])


def test_sentence_nll_is_the_exact_rnnlm_nll_in_input_order(tiny_model, tiny_tokenizer, tiny_sentences):
    scorer = tiny_model(latent_size=0)
    nll = sentence_nll(scorer, tiny_tokenizer, tiny_sentences, batch_size=2)
    for text, value in zip(tiny_sentences, nll):
        batch = tiny_tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            expected = -scorer.log_likelihood_given_latent(batch["input_ids"], batch["attention_mask"], None)
        assert value == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="RNNLM"):
        sentence_nll(tiny_model(), tiny_tokenizer, tiny_sentences)


def test_adversarial_eval_script(repo_root, saved_models, tmp_path, capsys):
    script = load_script(repo_root / "train_scripts" / "adversarial_eval.py")
    output = tmp_path / "adv.json"
    markdown = tmp_path / "adv.md"
    results = main_json(
        script,
        [
            "--vae_model",
            str(saved_models["vae"]),
            "--rnnlm_model",
            str(saved_models["rnnlm"]),
            "--scorer_model",
            str(saved_models["scorer"]),
            "--test_file",
            str(saved_models["test_file"]),
            "--max_sentences",
            "30",
            "--vae_beams",
            "2",
            "--vae_steps",
            "2",
            "--rnnlm_beams",
            "3",
            "--lstm_embedding_size",
            "8",
            "--lstm_hidden_size",
            "8",
            "--lstm_max_epochs",
            "2",
            "--device",
            "cpu",
            "--imputations_dir",
            str(tmp_path / "imp"),
            "--output_file",
            str(output),
            "--markdown_file",
            str(markdown),
        ],
        capsys,
    )
    assert json.loads(output.read_text())["num_sentences"] == 30
    for name in ("vae", "rnnlm"):
        entry = results["models"][name]
        assert -50.0 <= entry["unigram"]["adversarial_error"] <= 50.0
        assert -50.0 <= entry["lstm"]["adversarial_error"] <= 50.0
        assert np.isfinite(entry["scorer_nll"]) and entry["scorer_nll"] > 0
        assert (tmp_path / "imp" / f"{name}_imputations.jsonl").is_file()
    assert results["models"]["vae"]["label"] == "VAE (2x2 bm.)"
    text = markdown.read_text()
    assert "| Model | Adv. Err. unigram (%)" in text and "Books Corpus" in text
    # Reusing saved imputations gives the same discriminator results.
    again = main_json(
        script,
        [
            "--vae_imputations",
            str(tmp_path / "imp" / "vae_imputations.jsonl"),
            "--lstm_embedding_size",
            "8",
            "--lstm_hidden_size",
            "8",
            "--lstm_max_epochs",
            "2",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert again["models"]["vae"]["unigram"] == results["models"]["vae"]["unigram"]
