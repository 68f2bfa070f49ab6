"""Data (`hf_sentence_vae.data`): length-bucketed batching, the flat corpus and its padded batches, tokenization with
truncation, text loading (blank lines, encodings, local datasets), the WordNet example-sentence reader, and bad
training data, one clear error each through `train.py`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    SIZES,
    WORDS,
    assert_process_error_line,
    nothing_trained,
    reset_accelerate,
    synthetic_lines,
    tiny_argv,
    tiny_config,
    train_cli_error,
    train_subprocess,
)

from hf_sentence_vae.data import (
    TokenizedCorpus,
    bucketed_batches,
    iterate_batches,
    load_text_splits,
    pad_fraction,
    read_wordnet_examples,
    split_corpus,
    tokenize_splits,
)
from hf_sentence_vae.training import Trainer, TrainingConfig

REAL_WORDNET = "/usr/share/wordnet"


def _flatten(batches) -> list[int]:
    return sorted(int(i) for batch in batches for i in batch)


# --------------------------------------------------------------------------- bucketed batches
@pytest.mark.parametrize(
    "n, batch_size, multiplier", [(1000, 32, 50), (1000, 32, 3), (101, 8, 2), (7, 10, 50), (1, 1, 1), (64, 64, 1)]
)
def test_bucketed_batches_cover_every_index_once(n, batch_size, multiplier):
    lengths = np.random.default_rng(n).integers(3, 60, size=n)
    for shuffle in (True, False):
        batches = bucketed_batches(lengths, batch_size, seed=1, epoch=2, shuffle=shuffle, bucket_multiplier=multiplier)
        assert _flatten(batches) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        # only the last batch of each pool may be short
        assert sum(len(b) < batch_size for b in batches) <= (-(-n // (batch_size * multiplier)) if shuffle else 1)


def test_bucketed_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(3, 60, size=500)

    def run(seed, epoch):
        return [b.tolist() for b in bucketed_batches(lengths, 16, seed=seed, epoch=epoch, bucket_multiplier=4)]

    assert run(3, 0) == run(3, 0)
    assert run(3, 5) == run(3, 5)
    assert run(3, 0) != run(3, 1)  # a new order every epoch
    assert run(3, 0) != run(4, 0)  # and for every seed
    first = {tuple(sorted(b)) for b in run(3, 0)}
    second = {tuple(sorted(b)) for b in run(3, 1)}
    assert len(first & second) < len(first) // 2  # not merely the same batches reordered


def test_unshuffled_batches_are_sorted_by_length_and_fixed():
    lengths = np.random.default_rng(1).integers(3, 60, size=300)
    batches = bucketed_batches(lengths, 32, shuffle=False)
    order = np.concatenate(batches)
    assert np.all(np.diff(lengths[order]) >= 0)
    assert [b.tolist() for b in batches] == [b.tolist() for b in bucketed_batches(lengths, 32, seed=9, shuffle=False)]


def test_bucketed_batches_reject_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches(np.array([3, 4]), 0)


def test_bucketing_pads_far_less_than_random_batching_on_ptb(ptb_train_lines):
    lengths = np.array([len(line.split()) + 2 for line in ptb_train_lines if line.strip()])
    assert len(lengths) > 40_000
    bucketed = pad_fraction(lengths, bucketed_batches(lengths, 32, seed=0, epoch=0))
    order = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    unbucketed = pad_fraction(lengths, random_batches)
    assert unbucketed > 0.3
    assert bucketed < 0.05
    assert bucketed < unbucketed / 5
    # within a bucketed batch, lengths are close
    spreads = [int(lengths[b].max() - lengths[b].min()) for b in bucketed_batches(lengths, 32, seed=0, epoch=0)]
    assert np.median(spreads) <= 1


def test_pad_fraction_by_hand():
    lengths = np.array([2, 4, 4, 4])
    assert pad_fraction(lengths, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(2 / 16)
    assert pad_fraction(lengths, [np.array([1, 2, 3])]) == 0.0


# --------------------------------------------------------------------------- the flat corpus
SEQUENCES = [[2, 5, 3], [2, 6, 7, 8, 3], [2, 9, 3], [2, 4, 4, 4, 4, 4, 3], [2, 10, 11, 3]]


def _rows(corpus: TokenizedCorpus) -> list[list[int]]:
    return [corpus.ids[corpus.offsets[i] : corpus.offsets[i + 1]].tolist() for i in range(len(corpus))]


def test_corpus_batch_pads_right_with_the_pad_id():
    corpus = TokenizedCorpus.from_lists(SEQUENCES, pad_token_id=0)
    assert len(corpus) == 5
    assert corpus.lengths.tolist() == [3, 5, 3, 7, 4]
    assert corpus.num_tokens == sum(len(s) - 1 for s in SEQUENCES)
    batch = corpus.batch(np.array([2, 1, 4]))
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[2, 9, 3, 0, 0], [2, 6, 7, 8, 3], [2, 10, 11, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    wide = corpus.batch([0, 3], pad_to=9)
    assert wide["input_ids"].shape == (2, 9)
    assert wide["input_ids"][0].tolist() == [2, 5, 3] + [0] * 6
    assert wide["input_ids"][1].tolist() == [2, 4, 4, 4, 4, 4, 3, 0, 0]
    assert wide["attention_mask"].sum(-1).tolist() == [3, 7]
    # another pad id is honoured
    other = TokenizedCorpus.from_lists(SEQUENCES, pad_token_id=99).batch([0, 1])
    assert other["input_ids"][0].tolist() == [2, 5, 3, 99, 99]


def test_from_dataset_agrees_with_from_lists():
    import datasets

    dataset = datasets.Dataset.from_dict({"input_ids": SEQUENCES, "length": [len(s) for s in SEQUENCES]})
    reference = TokenizedCorpus.from_lists(SEQUENCES, 0)
    corpus = TokenizedCorpus.from_dataset(dataset, 0)
    assert _rows(corpus) == SEQUENCES
    np.testing.assert_array_equal(corpus.offsets, reference.offsets)
    np.testing.assert_array_equal(corpus.ids, reference.ids)
    for indices in ([0, 1, 2], [3, 4], [4, 0]):
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(corpus.batch(indices)[key], reference.batch(indices)[key])
    # views of a dataset: a contiguous slice (offsets not starting at 0) and index mappings
    views = {
        "slice": (dataset.select(range(1, 4)), SEQUENCES[1:4]),
        "select": (dataset.select([4, 0, 2]), [SEQUENCES[4], SEQUENCES[0], SEQUENCES[2]]),
        "filter": (dataset.filter(lambda row: row["length"] > 3), [s for s in SEQUENCES if len(s) > 3]),
        "shuffle": (dataset.shuffle(seed=0), None),
    }
    for name, (view, expected) in views.items():
        expected = expected if expected is not None else [list(x) for x in view["input_ids"]]
        assert _rows(TokenizedCorpus.from_dataset(view, 0)) == expected, name


def test_iterate_batches_covers_every_sentence_once():
    corpus = TokenizedCorpus.from_lists(SEQUENCES * 7, 0)
    seen = []
    for batch in iterate_batches(corpus, 4):
        seen.extend(batch["attention_mask"].sum(-1).tolist())
    assert sorted(seen) == sorted(corpus.lengths.tolist())


# --------------------------------------------------------------------------- tokenization
def test_tokenize_splits_truncates_keeping_eos_and_counts(tiny_tokenizer):
    import datasets

    long = "the cat sat on the mat and the dog ran to the park ."  # 13 words
    texts = ["the cat sat .", long, "a dog ran .", long + " the mat was red ."]
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts}),
            "validation": datasets.Dataset.from_dict({"text": texts[:1]}),
        }
    )
    tokenized, truncated = tokenize_splits(splits, tiny_tokenizer, max_length=8)
    assert truncated == {"train": 2, "validation": 0}
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    full = tiny_tokenizer(texts)["input_ids"]
    rows = tokenized["train"]["input_ids"]
    for row, reference in zip(rows, full):
        row = list(row)
        assert row[0] == bos and row[-1] == eos and len(row) <= 8
        if len(reference) <= 8:
            assert row == reference
        else:
            assert row == reference[:7] + [eos]  # first words kept, then <eos>
            assert eos not in row[:-1]
    assert list(tokenized["train"]["length"]) == [len(r) for r in rows]
    untouched, none = tokenize_splits(splits, tiny_tokenizer, max_length=64)
    assert none == {"train": 0, "validation": 0}
    assert [list(r) for r in untouched["train"]["input_ids"]] == full
    with pytest.raises(ValueError, match="max_length"):
        tokenize_splits(splits, tiny_tokenizer, max_length=2)


def test_ptb_corpus_from_tokenized_dataset_matches_the_tokenizer(ptb_dir, ptb_tokenizer, tmp_path):
    lines = (ptb_dir / "ptb.valid.txt").read_text(encoding="utf-8").splitlines()[:200]
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = load_text_splits(train_file=str(tmp_path / "valid.txt"))
    tokenized, truncated = tokenize_splits(splits, ptb_tokenizer, max_length=50)
    corpus = TokenizedCorpus.from_dataset(tokenized["train"], ptb_tokenizer.pad_token_id)
    expected = [
        ids[:49] + [ptb_tokenizer.eos_token_id] if len(ids) > 50 else ids for ids in ptb_tokenizer(lines)["input_ids"]
    ]
    assert _rows(corpus) == expected
    assert truncated["train"] == sum(len(ids) > 50 for ids in ptb_tokenizer(lines)["input_ids"])


# --------------------------------------------------------------------------- loading text
def test_blank_lines_are_dropped_and_counted(tmp_path, caplog):
    path = tmp_path / "train.txt"
    path.write_text("the cat sat .\n\n   \na dog ran .\n\t\n\nthe end .\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        splits = load_text_splits(train_file=str(path))
    assert list(splits["train"]["text"]) == ["the cat sat .", "a dog ran .", "the end ."]
    assert any("skipped 4 blank line(s)" in record.getMessage() for record in caplog.records), caplog.text


def test_all_three_local_splits(tmp_path):
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(f"{name} one .\n{name} two .\n", encoding="utf-8")
    splits = load_text_splits(str(tmp_path / "train.txt"), str(tmp_path / "valid.txt"), str(tmp_path / "test.txt"))
    assert sorted(splits) == ["test", "train", "validation"]
    assert list(splits["validation"]["text"]) == ["valid one .", "valid two ."]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty"),
        (b"\n\n  \n", "no non-blank lines"),
        (b"caf\xe9 au lait .\nthe end .\n", "not valid UTF-8"),
        (b"the cat sat .\nvoil\xe0\n", "not valid UTF-8"),  # the bad byte among the file's last four
    ],
)
def test_bad_train_files_are_named(tmp_path, content, pattern):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        load_text_splits(train_file=str(path))
    assert "train" in str(info.value)


def test_missing_file_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("a b .\n")
    with pytest.raises(FileNotFoundError, match="--validation_file .*absent.txt.*does not exist"):
        load_text_splits(str(tmp_path / "train.txt"), str(tmp_path / "absent.txt"))


def test_a_character_cut_by_the_utf8_check_window_is_not_an_error(tmp_path):
    """The encoding check reads the first MiB: a valid two-byte character straddling that boundary is fine."""
    path = tmp_path / "big.txt"
    head = b"a" * ((1 << 20) - 1)
    path.write_bytes(head + "\u00e9".encode() + b" b .\nthe end .\n")
    splits = load_text_splits(train_file=str(path))
    assert len(splits["train"]) == 2
    assert splits["train"][1]["text"] == "the end ."


def test_local_dataset_with_text_column_and_local_validation_file(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "data.csv").write_text("sentence,label\nthe cat sat .,1\na dog ran .,0\n,1\n")
    (tmp_path / "valid.txt").write_text("the park .\n")
    splits = load_text_splits(
        validation_file=str(tmp_path / "valid.txt"), dataset_name=str(folder), text_column="sentence"
    )
    assert list(splits["train"]["text"]) == ["the cat sat .", "a dog ran ."]  # the empty cell is dropped
    assert list(splits["validation"]["text"]) == ["the park ."]
    with pytest.raises(ValueError, match=r"--text_column 'labels' is not a column.*'sentence', 'label'"):
        load_text_splits(dataset_name=str(folder), text_column="labels")
    with pytest.raises(ValueError, match=r"--text_column 'label' .* is not a text column.*int64"):
        load_text_splits(dataset_name=str(folder), text_column="label")


def test_split_corpus_is_deterministic_and_disjoint():
    lines = [f"sentence {i}" for i in range(200)]
    train, valid = split_corpus(lines, 0.1, seed=3)
    assert len(valid) == 20 and len(train) == 180
    assert sorted(train + valid) == sorted(lines)
    assert split_corpus(lines, 0.1, seed=3) == (train, valid)
    assert split_corpus(lines, 0.1, seed=4) != (train, valid)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="validation_fraction"):
            split_corpus(lines, bad)


# --------------------------------------------------------------------------- WordNet examples
WORDNET_HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    '  2 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON  \n'
    '  3 | a header line with a bar and "a quote" is still header  \n'
)


def _write_wordnet(folder, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for pos, body in files.items():
        (folder / f"data.{pos}").write_bytes((WORDNET_HEADER + body).encode("latin-1"))


def test_read_wordnet_examples_from_a_synthetic_file(tmp_path):
    folder = tmp_path / "wordnet"
    _write_wordnet(
        folder,
        {
            "noun": (
                "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist  \n"
                '00002137 03 n 02 abstraction 0 abstract_entity 0 010 | a general concept; "the caf\u00e9 was an '
                'abstraction"; "a   second    example"  \n'
            ),
            "verb": (
                "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 02 + 02 00 | "
                'draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"; '
                '"The patient is respiring"  \n'
                "00002724 29 v 01 choke 0 002 @ 00001740 v 0000 01 + 02 00 | breathe with great difficulty; "
                '"She choked with emotion"  \n'
                'a malformed line with "a quote" but no bar\n'
            ),
            "adj": '00001740 00 a 01 able 0 005 | having the necessary means; "she was able to program"; "a second example"  \n',
        },
    )
    examples = read_wordnet_examples(folder)
    assert examples == [
        "the caf\u00e9 was an abstraction",
        "a second example",  # whitespace normalised; its duplicate in data.adj is dropped
        "I can breathe better when the air is clean",
        "The patient is respiring",
        "She choked with emotion",
        "she was able to program",
    ]
    assert not any("AS IS" in e or "quote" in e for e in examples)


def test_read_wordnet_examples_needs_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_wordnet_examples(tmp_path)


@pytest.mark.skipif(
    not os.path.isfile(f"{REAL_WORDNET}/data.noun"), reason="WordNet (Debian wordnet-base) not installed"
)
def test_read_wordnet_examples_from_the_real_files():
    examples = read_wordnet_examples(REAL_WORDNET)
    assert len(examples) > 40_000
    assert len(set(examples)) == len(examples)
    assert "She choked with emotion when she spoke about her deceased husband" in examples
    assert "I can breathe better when the air is clean" in examples
    assert all(e and '"' not in e and e == " ".join(e.split()) for e in examples)
    assert not any("PRINCETON" in e for e in examples)


# --------------------------------------------------------------------------- bad training data, one clear error each (through train.py)
def test_missing_data_file(train_script, capsys, small_data, tmp_path):
    data = dict(small_data, train_file=str(tmp_path / "nope.txt"))
    train_cli_error(
        train_script, capsys, tiny_argv(data, tmp_path / "run"), r"--train_file '.*nope\.txt' does not exist"
    )
    nothing_trained(tmp_path / "run")


def test_data_file_that_is_a_directory(train_script, capsys, small_data, tmp_path):
    data = dict(small_data, validation_file=str(tmp_path))
    train_cli_error(train_script, capsys, tiny_argv(data, tmp_path / "run"), r"--validation_file .* is a directory")


def test_empty_data_file(train_script, capsys, small_data, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    data = dict(small_data, train_file=str(tmp_path / "empty.txt"))
    train_cli_error(train_script, capsys, tiny_argv(data, tmp_path / "run"), r"--train_file .*empty\.txt' is empty")
    nothing_trained(tmp_path / "run")


def test_blank_only_data_file(train_script, capsys, small_data, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\t\n\r\n")
    data = dict(small_data, validation_file=str(tmp_path / "blank.txt"))
    train_cli_error(train_script, capsys, tiny_argv(data, tmp_path / "run"), "validation split has no non-blank lines")


def test_blank_lines_are_skipped_and_counted(small_data, tmp_path, caplog):
    lines = synthetic_lines(40)
    text = "\n\n".join(lines[:10]) + "\n   \n\t\n" + "\n".join(lines[10:]) + "\n"  # 9 + 2 blank lines
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    config = TrainingConfig(
        **dict(small_data, train_file=str(tmp_path / "train.txt")), output_dir=str(tmp_path / "o"), **SIZES
    )
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert len(trainer.corpora["train"]) == 40
    assert "train: skipped 11 blank line(s)" in caplog.text


def test_non_utf8_bytes_beyond_the_first_mebibyte(train_script, capsys, small_data, tmp_path):
    """The whole file is checked, not a sample: a latin-1 byte after 1.6 MB is reported with its line."""
    good = ("\n".join(synthetic_lines(200)) + "\n").encode("utf-8")
    repeats = (1_600_000 // len(good)) + 1
    bad = good * repeats + "the caf\u00e9 was open .\n".encode("latin-1") + good
    (tmp_path / "late.txt").write_bytes(bad)
    data = dict(small_data, train_file=str(tmp_path / "late.txt"))
    line = 200 * repeats + 1
    train_cli_error(
        train_script,
        capsys,
        tiny_argv(data, tmp_path / "run"),
        rf"--train_file .*late\.txt' is not valid UTF-8: line {line}, byte {len(good) * repeats + 7}",
    )
    nothing_trained(tmp_path / "run")


def test_non_utf8_file_through_a_real_process(small_data, tmp_path):
    """End to end: the process exits with status 2 and a one-line message, no traceback."""
    (tmp_path / "latin.txt").write_bytes("le caf\u00e9 .\n".encode("latin-1") * 5)
    data = dict(small_data, train_file=str(tmp_path / "latin.txt"))
    proc = train_subprocess(tiny_argv(data, tmp_path / "run"))
    assert_process_error_line(proc, r"latin\.txt' is not valid UTF-8: line 1, byte 6")
    nothing_trained(tmp_path / "run")


def test_over_long_lines_are_truncated_and_counted(small_data, tmp_path, caplog):
    lines = synthetic_lines(30)
    lines[3] = " ".join(WORDS[i % len(WORDS)] for i in range(20_000))  # one enormous line
    lines[7] = " ".join(["cat"] * 40)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = dict(small_data, train_file=str(tmp_path / "train.txt"))
    config = TrainingConfig(**data, output_dir=str(tmp_path / "o"), **SIZES, max_length=30)
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert "train: truncated 2 line(s) longer than max_length=30 tokens" in caplog.text
    assert trainer.truncated["train"] == 2
    corpus = trainer.corpora["train"]
    assert int(corpus.lengths.max()) == 30
    assert corpus.ids[corpus.offsets[4] - 1] == trainer.tokenizer.eos_token_id  # truncated rows keep their <eos>


def test_special_token_strings_in_the_text_become_unk(small_data, tmp_path, caplog):
    """A literal `<pad>` or `<bos>` in a sentence would be an unpredictable target (an infinite loss)."""
    lines = synthetic_lines(30)
    lines[0] = "the <pad> cat sat ."
    lines[1] = "a dog<bos>ran <eos> home ."
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = dict(small_data, train_file=str(tmp_path / "train.txt"))
    config = TrainingConfig(**data, output_dir=str(tmp_path / "o"), **SIZES)
    reset_accelerate()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
    assert "train: replaced 3 special-token string(s)" in caplog.text
    tokenizer, corpus = trainer.tokenizer, trainer.corpora["train"]
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    for row in range(len(corpus)):
        inner = corpus.ids[corpus.offsets[row] + 1 : corpus.offsets[row + 1] - 1]
        assert not specials.intersection(inner.tolist())
    batch = corpus.batch(torch.arange(4).numpy())
    assert torch.isfinite(trainer.model(**batch, return_logits=False).loss)


def test_text_column_that_does_not_exist(train_script, capsys, tmp_path):
    folder = tmp_path / "csv_dataset"
    folder.mkdir()
    rows = ["sentence,label"] + [f"{line},{i % 2}" for i, line in enumerate(synthetic_lines(12))]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    argv = tiny_argv({}, tmp_path / "run", dataset_name=str(folder), text_column="text")
    train_cli_error(train_script, capsys, argv, r"--text_column 'text' is not a column .*sentence")
    nothing_trained(tmp_path / "run")


def test_a_byte_order_mark_is_not_part_of_the_first_word(small_data, tmp_path):
    text = "\ufeff" + Path(small_data["train_file"]).read_text(encoding="utf-8")
    (tmp_path / "bom.txt").write_text(text, encoding="utf-8")
    reset_accelerate()
    trainer = Trainer(tiny_config(dict(small_data, train_file=str(tmp_path / "bom.txt")), tmp_path / "run"))
    trainer.close()
    assert not [word for word in trainer.tokenizer.get_vocab() if "\ufeff" in word]
    from hf_sentence_vae.metrics import read_sentences
    from hf_sentence_vae.streaming import iter_sentences

    first = text[1:].split("\n", 1)[0]
    assert next(iter_sentences(tmp_path / "bom.txt")) == first == read_sentences(tmp_path / "bom.txt")[0][0]
