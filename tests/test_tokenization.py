"""The word-level tokenizer: PTB vocabulary, exact round trips, raw-text mode, limits, save/load, and special-token
strings in the text."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from hf_sentence_vae import SentenceVAETokenizerFast, build_tokenizer

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


@pytest.fixture(scope="module")
def ptb_word_counts(ptb_train_lines) -> Counter:
    return Counter(word for line in ptb_train_lines for word in line.split())


@pytest.fixture(scope="module")
def ptb_sample(ptb_dir, ptb_train_lines) -> list[str]:
    """Every 20th training line, half of the validation lines, and every training line with a literal <unk>
    among the first 3,000."""
    with open(ptb_dir / "ptb.valid.txt", encoding="utf-8") as handle:
        valid = handle.readlines()
    with_unk = [line for line in ptb_train_lines[:3000] if "<unk>" in line.split()]
    sample = ptb_train_lines[::20] + valid[::2] + with_unk
    assert len(with_unk) > 100
    return sample


def _counted_corpus() -> list[str]:
    """Word w<k> occurs exactly k times (k = 1..10), shuffled into lines of five words."""
    words = [f"w{k}" for k in range(1, 11) for _ in range(k)]
    random.Random(0).shuffle(words)
    return [" ".join(words[i : i + 5]) for i in range(0, len(words), 5)]


# ----------------------------------------------------------------------------- the PTB vocabulary


def test_ptb_vocabulary(ptb_tokenizer, ptb_word_counts):
    assert isinstance(ptb_tokenizer, SentenceVAETokenizerFast)
    assert len(ptb_tokenizer) == 10002
    vocab = ptb_tokenizer.get_vocab()
    assert len(vocab) == 10002
    assert [ptb_tokenizer.convert_ids_to_tokens(i) for i in range(4)] == SPECIALS
    assert [vocab[token] for token in SPECIALS] == [0, 1, 2, 3]
    assert (ptb_tokenizer.pad_token_id, ptb_tokenizer.unk_token_id) == (0, 1)
    assert (ptb_tokenizer.bos_token_id, ptb_tokenizer.eos_token_id) == (2, 3)
    # Every training word (besides the literal <unk>) has its own entry, and nothing else does.
    words = set(ptb_word_counts) - {"<unk>"}
    assert len(words) == 9998
    assert set(vocab) - set(SPECIALS) == words
    assert sorted(vocab.values()) == list(range(10002))
    # Words are numbered by decreasing frequency.
    ranked = sorted(words, key=lambda w: vocab[w])
    counts = [ptb_word_counts[w] for w in ranked]
    assert counts == sorted(counts, reverse=True)
    assert ptb_tokenizer.text_mode == "pretokenized"


def test_ptb_lines_round_trip_exactly(ptb_tokenizer, ptb_sample):
    encoded = ptb_tokenizer(ptb_sample)["input_ids"]
    decoded = ptb_tokenizer.batch_decode(encoded)
    skipped = ptb_tokenizer.batch_decode(encoded, skip_special_tokens=True)
    unk = ptb_tokenizer.unk_token_id
    for line, ids, text, text_without_specials in zip(ptb_sample, encoded, decoded, skipped):
        words = line.split()
        assert ids[0] == 2 and ids[-1] == 3  # <bos> ... <eos>
        assert len(ids) == len(words) + 2
        # Only the literal <unk> maps to <unk>: every PTB word is in the vocabulary.
        assert [i for i, token in enumerate(ids[1:-1]) if token == unk] == [
            i for i, w in enumerate(words) if w == "<unk>"
        ]
        assert text.startswith("<bos> ") and text.endswith(" <eos>")
        assert text[len("<bos> ") : -len(" <eos>")] == line.strip()
        # <unk> is a special token: skip_special_tokens drops it along with <bos> and <eos>.
        assert text_without_specials == " ".join(w for w in words if w != "<unk>")


def test_unknown_words_map_to_unk(ptb_tokenizer, tiny_tokenizer):
    ids = ptb_tokenizer("the qwertyuiop cat")["input_ids"]
    assert ids[2] == 1 and ptb_tokenizer.unk_token_id == 1
    assert ids[1] != 1 and ids[3] != 1
    assert ptb_tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "the", "<unk>", "cat", "<eos>"]
    # The pretokenized mode is case-sensitive and does not split punctuation.
    assert ptb_tokenizer("The cat,")["input_ids"][1:-1] == [1, 1]
    assert tiny_tokenizer("zebra cat zebra")["input_ids"][1:-1] == [1, tiny_tokenizer.convert_tokens_to_ids("cat"), 1]


# ----------------------------------------------------------------------------- raw mode


def test_raw_mode_splits_punctuation_and_lower_cases():
    tokenizer = build_tokenizer(["hello , world !", "don ' t stop"], mode="raw")
    assert tokenizer.text_mode == "raw"
    ids = tokenizer("Hello, world!")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "hello", ",", "world", "!", "<eos>"]
    assert 1 not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello , world !"
    # NFKC normalisation (full-width letters) and punctuation inside words.
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("ＨＥＬＬＯ  WORLD... Don't")["input_ids"])
    assert tokens == ["<bos>", "hello", "world", "<unk>", "<unk>", "<unk>", "don", "'", "t", "<eos>"]
    # The vocabulary itself is built from normalised, split text.
    raw_built = build_tokenizer(["Hello, World!", "HELLO world?"], mode="raw")
    assert set(raw_built.get_vocab()) == set(SPECIALS) | {"hello", ",", "world", "!", "?"}


def test_build_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        build_tokenizer(["a b"], mode="characters")
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["a b"], vocab_size=4)
    with pytest.raises(ValueError, match="min_frequency"):
        build_tokenizer(["a b"], min_frequency=-1)
    with pytest.raises(ValueError):
        build_tokenizer([])
    with pytest.raises(ValueError, match="str"):
        build_tokenizer(["a b", 3])


# ----------------------------------------------------------------------------- limits


def test_vocab_size_keeps_the_most_frequent_words():
    corpus = _counted_corpus()
    full = build_tokenizer(corpus)
    assert len(full) == 14
    for size in (5, 7, 10, 14):
        tokenizer = build_tokenizer(corpus, vocab_size=size)
        assert len(tokenizer) == size
        expected = {f"w{k}" for k in range(10, 10 - (size - 4), -1)}
        assert set(tokenizer.get_vocab()) == set(SPECIALS) | expected
        assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == SPECIALS
    assert len(build_tokenizer(corpus, vocab_size=1000)) == 14  # a maximum, not a target


def test_min_frequency_drops_rare_words():
    corpus = _counted_corpus()
    for min_frequency in (0, 1, 4, 10):
        tokenizer = build_tokenizer(corpus, min_frequency=min_frequency)
        expected = {f"w{k}" for k in range(max(min_frequency, 1), 11)}
        assert set(tokenizer.get_vocab()) == set(SPECIALS) | expected, min_frequency
        assert len(tokenizer) == 4 + len(expected)
    both = build_tokenizer(corpus, min_frequency=4, vocab_size=6)
    assert set(both.get_vocab()) == set(SPECIALS) | {"w10", "w9"}
    # A dropped word is unknown.
    assert both("w1 w10")["input_ids"][1:-1] == [1, both.convert_tokens_to_ids("w10")]


def test_vocab_size_limit_on_ptb(ptb_train_lines, ptb_word_counts):
    tokenizer = build_tokenizer(ptb_train_lines, vocab_size=1000)
    assert len(tokenizer) == 1000  # the literal <unk> does not take a slot
    vocab = tokenizer.get_vocab()
    assert [vocab[token] for token in SPECIALS] == [0, 1, 2, 3]
    kept = set(vocab) - set(SPECIALS)
    dropped = set(ptb_word_counts) - kept - {"<unk>"}
    assert len(kept) == 996
    assert min(ptb_word_counts[w] for w in kept) >= max(ptb_word_counts[w] for w in dropped)


# ----------------------------------------------------------------------------- encodings


def test_encodings_are_bos_words_eos_and_pad_right(tiny_tokenizer, tiny_model):
    texts = ["the cat sat on the mat .", "a dog .", ""]
    batch = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(-1).tolist()
    assert lengths == [9, 5, 2]
    for row, n in enumerate(lengths):
        assert ids[row, 0].item() == 2 and ids[row, n - 1].item() == 3
        assert torch.all(ids[row, n:] == 0) and torch.all(mask[row, n:] == 0) and torch.all(mask[row, :n] == 1)
        assert 2 not in ids[row, 1 : n - 1].tolist() and 3 not in ids[row, 1 : n - 1].tolist()
    # Truncation keeps <bos> and <eos>, so truncated batches are still valid model inputs.
    truncated = tiny_tokenizer(texts, padding=True, truncation=True, max_length=5, return_tensors="pt")
    assert truncated["input_ids"][0].tolist()[0] == 2 and truncated["input_ids"][0].tolist()[-1] == 3
    assert truncated["input_ids"].shape == (3, 5)
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    for encoded in (batch, truncated):
        out = model(**encoded)
        assert torch.isfinite(out.loss)


# ----------------------------------------------------------------------------- save / load


def _assert_same_tokenizer(loaded, tokenizer, texts: list[str]) -> None:
    assert isinstance(loaded, SentenceVAETokenizerFast)
    assert loaded.text_mode == tokenizer.text_mode
    assert len(loaded) == len(tokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert (loaded.pad_token_id, loaded.unk_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2, 3)
    assert loaded.model_max_length == tokenizer.model_max_length
    assert loaded.padding_side == "right"
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    batch = loaded(texts, padding=True)
    assert batch == tokenizer(texts, padding=True)
    assert loaded.batch_decode(batch["input_ids"]) == tokenizer.batch_decode(batch["input_ids"])
    # The pitfall of a wrongly rebuilt backend: known words must keep their own ids.
    the, cat = tokenizer.convert_tokens_to_ids(["the", "cat"])
    assert 1 not in (the, cat) and the != cat
    assert loaded("the cat cat")["input_ids"] == [2, the, cat, cat, 3]


@pytest.mark.parametrize("mode", ["pretokenized", "raw"])
def test_save_load_through_auto_tokenizer_keeps_encodings(tmp_path, tiny_sentences, mode):
    tokenizer = build_tokenizer(tiny_sentences + ["Hello, World!", "the CAT's mat?"], mode=mode, model_max_length=77)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    texts = tiny_sentences + ["the cat sat", "Hello, World! The cat's", "zebra", "", "  the   mat  "]
    assert tokenizer.text_mode == mode
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), SentenceVAETokenizerFast.from_pretrained(tmp_path)):
        assert loaded.model_max_length == 77
        _assert_same_tokenizer(loaded, tokenizer, texts)


def test_ptb_tokenizer_save_load(tmp_path, ptb_tokenizer, ptb_sample):
    ptb_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    _assert_same_tokenizer(loaded, ptb_tokenizer, [line.strip() for line in ptb_sample[:500]])
    assert len(loaded) == 10002


# --------------------------------------------------------------------------- special-token strings in the text
@pytest.mark.parametrize("path", ["built", "reloaded"])
def test_the_tokenizer_encodes_special_token_strings_as_unk(tiny_tokenizer, tmp_path, path):
    """`<pad>`, `<bos>`, `<eos>` in the text become `<unk>`; the sentence's own `<bos>`/`<eos>` and the padding stay.
    (The copy shipped as remote code does the same: `test_remote_code_loads_without_the_package`.)"""
    from transformers import AutoTokenizer

    tokenizer = tiny_tokenizer
    if path == "reloaded":
        tiny_tokenizer.save_pretrained(tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    unk = tokenizer.unk_token_id
    texts = ["the <pad> cat sat .", "a dog<bos>ran <eos> home", "<eos>", "the cat"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    for row, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(-1).tolist()):
        assert row[0] == tokenizer.bos_token_id and row[n - 1] == tokenizer.eos_token_id
        assert not specials.intersection(row[1 : n - 1]) and set(row[n:]) <= {tokenizer.pad_token_id}
    assert tokenizer("the <pad> cat")["input_ids"] == tokenizer("the <unk> cat")["input_ids"]
    assert tokenizer("a dog<bos>ran", add_special_tokens=False)["input_ids"][2] == unk
    assert tokenizer.encode("<eos>") == [tokenizer.bos_token_id, unk, tokenizer.eos_token_id]
