"""Property-based tests (hypothesis): the tokenizer and the data pipeline take arbitrary Unicode text without
crashing and round-trip what they should. Example counts are kept small so the module runs in seconds."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hf_sentence_vae import build_tokenizer
from hf_sentence_vae.data import TokenizedCorpus, check_text_file, load_text_splits, tokenize_splits
from hf_sentence_vae.tokenization_sentence_vae_fast import SPECIAL_TOKENS

# The whitespace the tokenizer splits on: Rust's `char::is_whitespace` (the Unicode White_Space property). Python's
# `str.split()` also splits on U+001C..U+001F, which the tokenizer keeps inside words.
TOKENIZER_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + ("\u2028\u2029\u202f\u205f\u3000")
)
PYTHON_ONLY_WHITESPACE = "\x1c\x1d\x1e\x1f"
_SPLIT = re.compile(f"[{re.escape(TOKENIZER_WHITESPACE)}]+")
CORPUS = [
    "the cat sat on the mat .",
    "the dog ran to the park , and the cat saw it !",
    "a cat ' s hat was green ?",
    "the mat was red ; the cat was happy .",
]


def fuzz_settings(examples: int):
    """Few examples by default (seconds); `FUZZ_SCALE=50 pytest tests/test_fuzz.py` fuzzes 50 times longer."""
    return settings(
        max_examples=max(1, int(examples * float(os.environ.get("FUZZ_SCALE", "1")))),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Text as `open(..., encoding="utf-8")` can produce it: any code point but lone surrogates.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
word = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=TOKENIZER_WHITESPACE + PYTHON_ONLY_WHITESPACE),
    min_size=1,
    max_size=8,
).filter(
    # A word starting with NUL is glued to the previous one by the decoder (its continuation prefix is "\x00"), and
    # a special-token string inside a word is split out by the added-token matching: both are outside this property.
    lambda w: not w.startswith("\x00") and not any(special in w for special in SPECIAL_TOKENS)
)
separator = st.text(st.sampled_from(TOKENIZER_WHITESPACE), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def raw_tokenizer():
    return build_tokenizer(CORPUS, mode="raw")


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_tokenizer(CORPUS)


def _check_framing(tokenizer, ids: list[int]) -> None:
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert all(isinstance(i, int) and 0 <= i < len(tokenizer) for i in ids)


# --------------------------------------------------------------------------- tokenizer
@fuzz_settings(60)
@given(vocabulary=st.lists(word, min_size=1, max_size=12, unique=True), data=st.data())
def test_pretokenized_round_trip_of_in_vocabulary_words(vocabulary, data):
    """Whitespace-separated in-vocabulary words (any Unicode whitespace, leading and trailing too) decode back to
    the words joined by single spaces, with no <unk>; a saved-and-reloaded tokenizer does the same."""
    tokenizer = build_tokenizer([" ".join(vocabulary)])
    words = data.draw(st.lists(st.sampled_from(vocabulary), max_size=12), label="words")
    gaps = data.draw(st.lists(separator, min_size=len(words) + 1, max_size=len(words) + 1), label="gaps")
    text = gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:]))
    ids = tokenizer(text)["input_ids"]
    _check_framing(tokenizer, ids)
    assert len(ids) == len(words) + 2
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(words)


@fuzz_settings(80)
@given(text=any_text)
def test_pretokenized_mode_takes_any_text(word_tokenizer, text):
    """Any text encodes to <bos> + one id per whitespace-separated piece + <eos> (unknown pieces are <unk>), and
    decodes without error."""
    assume(not any(special in text for special in SPECIAL_TOKENS))
    ids = word_tokenizer(text)["input_ids"]
    _check_framing(word_tokenizer, ids)
    pieces = [p for p in _SPLIT.split(text) if p]
    assert len(ids) - 2 == len(pieces)
    for piece, token in zip(pieces, ids[1:-1]):
        assert token == word_tokenizer.get_vocab().get(piece, word_tokenizer.unk_token_id)
    assert isinstance(word_tokenizer.decode(ids, skip_special_tokens=True), str)


@fuzz_settings(80)
@given(text=any_text)
def test_raw_mode_never_crashes_and_decoding_is_stable(raw_tokenizer, text):
    """Raw mode (NFKC, lower-case, punctuation split) takes any text; decoding then re-encoding is a fixed point."""
    ids = raw_tokenizer(text)["input_ids"]
    _check_framing(raw_tokenizer, ids)
    decoded = raw_tokenizer.decode(ids, skip_special_tokens=True)
    assert isinstance(decoded, str)
    if not set(ids[1:-1]) & {0, 1, 2, 3}:  # (skipped special tokens inside the text cannot come back)
        assert raw_tokenizer(decoded)["input_ids"] == ids


@fuzz_settings(60)
@given(
    tokens=st.lists(st.sampled_from(sorted({w for line in CORPUS for w in line.split()})), max_size=12),
    upper=st.lists(st.booleans(), min_size=12, max_size=12),
    glue=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_raw_mode_round_trip_of_in_vocabulary_text(raw_tokenizer, tokens, upper, glue):
    """Known words in any case, punctuation attached or not: decoding gives the lower-cased tokens, space-joined."""
    text = ""
    for i, token in enumerate(tokens):
        piece = token.upper() if upper[i] else token
        text += piece if (i == 0 or (glue[i] and not token.isalnum())) else " " + piece
    ids = raw_tokenizer(text)["input_ids"]
    _check_framing(raw_tokenizer, ids)
    assert raw_tokenizer.unk_token_id not in ids
    assert raw_tokenizer.decode(ids, skip_special_tokens=True) == " ".join(tokens)


@fuzz_settings(40)
@given(lines=st.lists(any_text, min_size=1, max_size=6), mode=st.sampled_from(["pretokenized", "raw"]))
def test_building_a_tokenizer_from_any_text(lines, mode):
    """Any corpus either builds a tokenizer whose special ids are 0-3 and that frames every line with them, or is
    refused with a clear ValueError (no words at all)."""
    try:
        tokenizer = build_tokenizer(lines, mode=mode)
    except ValueError as err:
        assert "found no words" in str(err)
        return
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [
        0,
        1,
        2,
        3,
    ]
    for ids in tokenizer(lines)["input_ids"]:
        _check_framing(tokenizer, ids)


# --------------------------------------------------------------------------- data pipeline
@fuzz_settings(30)
@given(lines=st.lists(any_text, min_size=1, max_size=12), max_length=st.integers(3, 10))
def test_tokenize_splits_and_corpus_on_any_lines(word_tokenizer, lines, max_length):
    """Every row is <bos> ... <eos>, at most `max_length` ids, free of inner <pad>/<bos>/<eos>; rows equal the
    tokenizer's encodings (specials inside a sentence -> <unk>, truncation keeping <eos>); the truncation count is
    right; the in-memory corpus and its padded batches hold exactly these rows."""
    import datasets
    import numpy as np

    tokenizer = word_tokenizer
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": lines})})
    tokenized, truncated = tokenize_splits(splits, tokenizer, max_length)
    inner = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    expected, cut = [], 0
    for ids in tokenizer(lines)["input_ids"]:
        ids = [ids[0]] + [tokenizer.unk_token_id if i in inner else i for i in ids[1:-1]] + [ids[-1]]
        if len(ids) > max_length:
            ids, cut = ids[: max_length - 1] + [tokenizer.eos_token_id], cut + 1
        expected.append(ids)
    corpus = TokenizedCorpus.from_dataset(tokenized["train"], tokenizer.pad_token_id)
    rows = [corpus.ids[corpus.offsets[i] : corpus.offsets[i + 1]].tolist() for i in range(len(corpus))]
    assert rows == expected
    assert truncated == {"train": cut}
    for row in rows:
        _check_framing(tokenizer, row)
        assert len(row) <= max_length and not inner.intersection(row[1:-1])
    batch = corpus.batch(np.arange(len(corpus)))
    assert batch["attention_mask"].sum(1).tolist() == [len(r) for r in rows]
    for i, row in enumerate(rows):
        assert batch["input_ids"][i, : len(row)].tolist() == row
        assert set(batch["input_ids"][i, len(row) :].tolist()) <= {tokenizer.pad_token_id}


@fuzz_settings(40)
@given(sequences=st.lists(st.lists(st.integers(0, 50), max_size=9), min_size=1, max_size=10), data=st.data())
def test_tokenized_corpus_batches_any_rows(sequences, data):
    import numpy as np

    corpus = TokenizedCorpus.from_lists(sequences, pad_token_id=0)
    assert len(corpus) == len(sequences) and corpus.lengths.tolist() == [len(s) for s in sequences]
    picks = data.draw(st.lists(st.integers(0, len(sequences) - 1), min_size=1, max_size=8), label="picks")
    assume(max(len(sequences[i]) for i in picks) > 0)
    batch = corpus.batch(np.asarray(picks))
    for row, index in enumerate(picks):
        n = len(sequences[index])
        assert batch["input_ids"][row, :n].tolist() == sequences[index]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


@fuzz_settings(8)
@given(content=st.text(st.characters(blacklist_categories=("Cs",)), max_size=120))
def test_load_text_splits_reads_any_utf8_file(content):
    """Any UTF-8 file: the non-blank lines (universal newlines, as `open()` splits them) come through unchanged, or
    the file is refused with a clear error (empty / no non-blank lines)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz_text_"))
    try:
        path = folder / "train.txt"
        path.write_bytes(content.encode("utf-8"))
        lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        expected = [line for line in lines if line.strip()]
        try:
            splits = load_text_splits(train_file=str(path), cache_dir=str(folder / "cache"))
        except ValueError as err:
            assert not expected
            assert "is empty" in str(err) or "no non-blank lines" in str(err)
            return
        assert list(splits["train"]["text"]) == expected
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@fuzz_settings(150)
@given(
    prefix=st.binary(max_size=40),
    middle=st.sampled_from([b"", b"\n", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80"]),
    suffix=st.binary(max_size=40),
    chunk_size=st.sampled_from([1, 2, 3, 5, 64, 1 << 20]),
)
def test_utf8_check_agrees_with_python_anywhere_in_the_file(prefix, middle, suffix, chunk_size):
    """The streaming UTF-8 check accepts exactly the files Python decodes and reports the first bad byte and its
    line, whatever the chunk boundaries."""
    data = prefix + middle + suffix
    folder = Path(tempfile.mkdtemp(prefix="fuzz_utf8_"))
    try:
        path = folder / "f.txt"
        path.write_bytes(data)
        try:
            data.decode("utf-8")
            expected = None
        except UnicodeDecodeError as err:
            expected = (data[: err.start].count(b"\n") + 1, err.start)
        try:
            check_text_file(str(path), "train", chunk_size=chunk_size)
            got = None
        except ValueError as err:
            if not data:
                assert "is empty" in str(err)
                return
            match = re.search(r"line (\d+), byte (\d+)", str(err))
            assert match, str(err)
            got = (int(match.group(1)), int(match.group(2)))
        assert got == expected
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@fuzz_settings(30)
@given(sentences=st.lists(any_text.filter(str.strip), min_size=1, max_size=30), batch_size=st.integers(1, 7))
def test_stream_batches_cover_every_sentence_once(word_tokenizer, sentences, batch_size):
    from collections import Counter

    from hf_sentence_vae.streaming import stream_batches

    rows = []
    for batch in stream_batches(word_tokenizer, iter(sentences), batch_size, pool_batches=2):
        assert batch["input_ids"].shape[0] <= batch_size
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            rows.append(tuple(ids[: int(mask.sum())].tolist()))
    assert Counter(rows) == Counter(tuple(ids) for ids in word_tokenizer(sentences)["input_ids"])
