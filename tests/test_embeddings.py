"""Sentence embeddings (the paper's appendix): TREC and MSRP readers, PTB normalisation, evaluations."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import load_script, main_json

from hf_sentence_vae.embeddings import (
    MSRPData,
    TRECData,
    embed,
    evaluate_msrp,
    evaluate_trec,
    normalize_texts,
    oov_rate,
    pair_features,
    ptb_normalize,
    read_msrp,
    read_trec,
    resolve_normalization,
)


@pytest.fixture(scope="module")
def trec_dir(data_dir):
    path = data_dir / "trec"
    if not (path / "train_5500.label").is_file() or not (path / "TREC_10.label").is_file():
        pytest.skip(f"TREC files missing under {path}")
    return path


@pytest.fixture(scope="module")
def msrp_dir(data_dir):
    path = data_dir / "msrp"
    if not (path / "msr_paraphrase_train.txt").is_file() or not (path / "msr_paraphrase_test.txt").is_file():
        pytest.skip(f"MSRP files missing under {path}")
    return path


def test_read_trec_real_files(trec_dir):
    train = read_trec(trec_dir / "train_5500.label")
    test = read_trec(trec_dir / "TREC_10.label")
    assert (len(train), len(test)) == (5452, 500)
    assert sorted(set(train.labels)) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert set(test.labels) <= set(train.labels)
    assert train.texts[0] == "How did serfdom develop in and then leave Russia ?"
    assert train.fine_labels[0] == "DESC:manner" and train.labels[0] == "DESC"


def test_read_msrp_real_files(msrp_dir):
    train = read_msrp(msrp_dir / "msr_paraphrase_train.txt")
    test = read_msrp(msrp_dir / "msr_paraphrase_test.txt")
    assert (len(train), len(test)) == (4076, 1725)
    assert (int(train.labels.sum()), int(test.labels.sum())) == (2753, 1147)
    assert train.first[0].startswith("Amrozi accused his brother") and '"the witness"' in train.first[0]
    assert not any(s.endswith("\r") or "\t" in s for s in train.first + train.second)


def test_readers_on_synthetic_files(tmp_path):
    trec = tmp_path / "t.label"
    trec.write_bytes(b"NUM:date When was it ?\r\n\r\nLOC:city Where is Paris ?\n")
    data = read_trec(trec)
    assert data.texts == ["When was it ?", "Where is Paris ?"] and data.labels == ["NUM", "LOC"]
    trec.write_text("no label here\n")
    with pytest.raises(ValueError, match="COARSE:fine"):
        read_trec(trec)
    msrp = tmp_path / "m.txt"
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
    msrp.write_text(header + '1\t1\t2\tHe said "hi".\tHe said hi.\r\n0\t3\t4\tA b.\tC d.\r\n', encoding="utf-8")
    data = read_msrp(msrp)
    assert data.first == ['He said "hi".', "A b."] and data.labels.tolist() == [1, 0]
    msrp.write_text(header + "1\t1\t2\tonly four\r\n", encoding="utf-8")
    with pytest.raises(ValueError, match="5 tab-separated"):
        read_msrp(msrp)
    msrp.write_text("bad header\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        read_msrp(msrp)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yucaipa owned Dominick's before selling the chain in 1998 for $2.5 billion.",
         "yucaipa owned dominick 's before selling the chain in N for $ N billion"),
        ("The U.S. economy grew 5.5% , Mr. Smith said.", "the u.s. economy grew N N mr. smith said"),
        ("I can't believe it's $2,000!", "i ca n't believe it 's $ N"),
        ("What is a 30-year bond ?", "what is a 30-year bond"),
        ("How can I find a list of celebrities ' real names ?", "how can i find a list of celebrities real names"),
        ("``Stop,'' he said -- quietly.", "stop he said quietly"),
    ],
)  # fmt: skip
def test_ptb_normalize(raw, expected):
    assert ptb_normalize(raw, {"u.s.", "mr."}) == expected


def test_normalization_modes(tiny_tokenizer):
    assert resolve_normalization(tiny_tokenizer, "auto") == "ptb"
    assert normalize_texts(["The Cat, sat."], tiny_tokenizer) == ["the cat sat"]
    assert normalize_texts(["The Cat"], tiny_tokenizer, "lower") == ["the cat"]
    assert normalize_texts(["The Cat"], tiny_tokenizer, "none") == ["The Cat"]
    with pytest.raises(ValueError, match="normalize"):
        resolve_normalization(tiny_tokenizer, "bogus")
    assert oov_rate(tiny_tokenizer, ["the cat zebra", "a dog"]) == pytest.approx(0.2)


def test_pair_features():
    u = np.array([[1.0, -2.0]])
    v = np.array([[3.0, 1.0]])
    assert pair_features(u, v).tolist() == [[2.0, 3.0, 3.0, -2.0]]


def test_embed_rejects_rnnlm(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="VAE"):
        embed(tiny_model(latent_size=0), tiny_tokenizer, ["the cat"])


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_evaluations_on_synthetic_data(tiny_model, tiny_tokenizer):
    """Runs without data files: short synthetic TREC-like and MSRP-like sets."""
    model = tiny_model(initializer_range=0.5)
    words = ["the cat sat", "a dog ran", "the park was green", "the mat was red", "a cat saw a dog"]
    texts = [words[i % 5] for i in range(60)]
    labels = ["A" if i % 5 < 2 else "B" for i in range(60)]
    trec = evaluate_trec(
        model, tiny_tokenizer, TRECData(texts, labels, labels), TRECData(texts, labels, labels), cv_folds=3
    )
    assert trec["accuracy"] == pytest.approx(100.0)  # identical sentences share a label: means separate them
    assert trec["num_classes"] == 2 and trec["feature_dim"] == model.config.latent_size
    pairs = MSRPData(texts[:30], texts[:30][::-1], np.array([i % 2 for i in range(30)]))
    msrp = evaluate_msrp(model, tiny_tokenizer, pairs, pairs, cv_folds=3, standardize=True)
    assert 0.0 <= msrp["accuracy"] <= 100.0 and 0.0 <= msrp["f1"] <= 100.0
    assert msrp["feature_dim"] == 2 * model.config.latent_size


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_evaluations_on_real_subsets(tiny_model, tiny_tokenizer, trec_dir, msrp_dir):
    model = tiny_model(initializer_range=0.5)
    train = read_trec(trec_dir / "train_5500.label").subset(150)
    test = read_trec(trec_dir / "TREC_10.label").subset(40)
    trec = evaluate_trec(model, tiny_tokenizer, train, test, cv_folds=3)
    assert 0.0 <= trec["accuracy"] <= 100.0 and trec["num_train"] == 150 and trec["normalize"] == "ptb"
    assert trec["oov_rate_test"] > 0.5  # a six-sentence vocabulary knows few TREC words
    msrp_train = read_msrp(msrp_dir / "msr_paraphrase_train.txt").subset(120)
    msrp_test = read_msrp(msrp_dir / "msr_paraphrase_test.txt").subset(40)
    msrp = evaluate_msrp(model, tiny_tokenizer, msrp_train, msrp_test, cv_folds=3)
    assert 0.0 <= msrp["accuracy"] <= 100.0 and msrp["num_test"] == 40


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_sentence_embeddings_script(repo_root, tmp_path, tiny_model, tiny_tokenizer, trec_dir, data_dir, capsys):
    script = load_script(repo_root / "train_scripts" / "sentence_embeddings.py")
    folder = tmp_path / "vae"
    tiny_model(initializer_range=0.5).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    output = tmp_path / "emb.json"
    argv = ["--model_name_or_path", str(folder), "--data_dir", str(data_dir), "--device", "cpu"]
    argv += ["--max_train", "100", "--max_test", "30", "--cv_folds", "3", "--output_file", str(output)]
    results = main_json(script, argv + ["--fine_tune_epochs", "1"], capsys)
    assert set(results) >= {"trec", "msrp", "corpus_note"}
    assert results["trec"]["num_test"] == 30 and output.is_file()
    fine_tuned = results["trec"]["fine_tuned"]
    assert 0.0 <= fine_tuned["accuracy"] <= 100.0 and fine_tuned["num_test"] == 30 and fine_tuned["epochs"] == 1


def test_fine_tuning_the_encoder_on_trec(tiny_model, trec_dir, tmp_path):
    """`fine_tune_trec`: a VAE's encoder and a classifier on its posterior mean, trained end to end, learn the TREC
    questions they see (here from a vocabulary of those questions)."""
    from hf_sentence_vae import build_tokenizer
    from hf_sentence_vae.embeddings import fine_tune_trec

    train = read_trec(trec_dir / "train_5500.label").subset(120)
    tokenizer = build_tokenizer(train.texts, mode="raw")
    folder = tmp_path / "vae"
    tiny_model(vocab_size=len(tokenizer), embedding_size=32, encoder_hidden_size=32, latent_size=8).save_pretrained(
        folder
    )
    kwargs = dict(learning_rate=0.01, batch_size=32, seed=0, output_dir=tmp_path / "run")
    once = fine_tune_trec(folder, tokenizer, train, train, epochs=1, **kwargs)
    trained = fine_tune_trec(folder, tokenizer, train, train, epochs=40, **kwargs)
    majority = 100.0 * max(train.labels.count(label) for label in set(train.labels)) / len(train)
    assert trained["accuracy"] > max(majority + 20.0, once["accuracy"]), (trained, once, majority)
    assert trained["final_training_loss"] < once["final_training_loss"]
    assert trained["classes"] == sorted(set(train.labels)) and trained["normalize"] == "none"
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fine_tune_trec(folder, tokenizer, train, train, epochs=0)
