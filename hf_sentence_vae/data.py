"""Text data: reading sentence files, tokenized corpora and their batches, for training and for evaluation.

- Reading: [`iter_sentences`] is the one reader of sentence files (lazy, bounded memory, the file checked first by
  [`check_text_file`]); [`read_sentences`], [`load_sentences`] and [`iter_kept_sentences`] are built on it.
- Batching: a [`TokenizedCorpus`] holds sentences as one flat id array plus offsets and cuts padded batches by
  index arrays; [`bucketed_batches`] orders them (length-bucketed and shuffled for training, sorted by length for
  evaluation). [`stream_batches`] and [`length_sorted_batches`] batch any iterable of sentences through them, a
  bounded pool at a time.
- Training splits: local files (one sentence a line) or a Hub dataset through `datasets`, tokenized with
  `Dataset.map(batched=True)` (cached on disk by `datasets`; [`load_text_splits`], [`tokenize_splits`]).
- The demo corpus: WordNet's example sentences.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from .tokenization_sentence_vae_fast import special_token_string_counts

logger = logging.get_logger(__name__)

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')
DEFAULT_POOL_BATCHES = 50
# A sentence of 100,000 characters is ~20,000 words, far beyond any model's maximum length: the rest of a longer
# line is skipped unread into memory.
DEFAULT_MAX_LINE_CHARS = 100_000


def truncate_ids(ids: list[int], max_length: int | None, eos: int) -> list[int]:
    """An encoding of at most `max_length` ids: a longer one keeps its first ids and its `<eos>`."""
    return ids[: max_length - 1] + [eos] if max_length is not None and len(ids) > max_length else ids


# --------------------------------------------------------------------------- the built-in demo corpus
def read_wordnet_examples(wordnet_dir: str | os.PathLike = DEFAULT_WORDNET_DIR) -> list[str]:
    """The example sentences of WordNet 3.0 (quoted strings in the glosses of `data.{noun,verb,adj,adv}`).

    Files are read as latin-1; licence header lines (starting with spaces) are skipped; duplicates are
    dropped keeping first occurrences. Debian's `wordnet-base` package installs the files (~48k examples).
    """
    folder = Path(wordnet_dir)
    files = [folder / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    present = [f for f in files if f.is_file()]
    if not present:
        raise FileNotFoundError(
            f"no WordNet data files (data.noun, data.verb, ...) in {folder}: install Debian's wordnet-base "
            "(`apt-get install wordnet-base`) or pass another corpus"
        )
    seen: dict[str, None] = {}
    for path in present:
        with open(path, encoding="latin-1") as handle:
            for line in handle:
                if line.startswith(" ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1]
                for example in _WORDNET_EXAMPLE.findall(gloss):
                    example = " ".join(example.split())
                    if example:
                        seen.setdefault(example, None)
    return list(seen)


def split_corpus(lines: Sequence[str], validation_fraction: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle and split lines into train and validation lists."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(len(lines))
    cut = max(1, int(round(len(lines) * validation_fraction)))
    return [lines[i] for i in order[cut:]], [lines[i] for i in order[:cut]]


# --------------------------------------------------------------------------- reading sentence files
def check_text_file(path: str, split: str = "input", chunk_size: int = 1 << 20, label: str | None = None) -> None:
    """Fail early, naming the file (as `--{split}_file`, or `label`), when it is missing, empty or not UTF-8
    anywhere (the whole file is decoded incrementally in `chunk_size` pieces, ~1 s per GB; the error gives the
    byte offset and the line number)."""
    flag = label or f"--{split}_file"
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory, not a text file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag} {path!r} is empty")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # Offsets in the error count from the start of the decoder's buffer: pending bytes of a character
                # cut at the previous chunk's end come first.
                pending = err.object[: len(err.object) - len(chunk)]
                position = offset - len(pending) + err.start
                line = newlines + err.object[: err.start].count(b"\n") - pending.count(b"\n") + 1
                raise ValueError(
                    f"{flag} {path!r} is not valid UTF-8: line {line}, byte {position} "
                    f"({err.object[err.start : err.start + 4]!r}); convert it, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            if not chunk:
                return
            offset += len(chunk)
            newlines += chunk.count(b"\n")


def iter_sentences(
    path: str | os.PathLike,
    max_sentences: int | None = None,
    stats: dict | None = None,
    label: str = "input file",
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
) -> Iterator[str]:
    """Lazily yield the non-blank lines of a UTF-8 text file (stripped), at most `max_sentences` of them.

    The file is checked first (missing, a directory, empty, or not UTF-8 anywhere: one clear error naming it as
    `label`, e.g. ``"--test_file"``, and the line). A byte-order mark at its start is dropped. Lines are split as
    `datasets`' text loader and `open()` split them (universal newlines); a line longer than `max_line_chars`
    characters is cut there (the rest is skipped in bounded pieces). If `stats` is a dict, it receives
    `sentences`, `blank_lines` and `cut_lines` counts as reading proceeds."""
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    if max_line_chars < 1:
        raise ValueError(f"max_line_chars must be >= 1, got {max_line_chars}")
    path = str(path)
    check_text_file(path, label=label)  # now, not at the first next()
    stats = {} if stats is None else stats
    stats.update(sentences=0, blank_lines=0, cut_lines=0)
    return _read_sentences(path, max_sentences, stats, max_line_chars)


def _bounded_lines(handle, max_chars: int) -> Iterator[tuple[str, bool]]:
    """`(line, cut)` for each line of a text handle, no line longer than `max_chars` characters held in memory."""
    while True:
        line = handle.readline(max_chars)
        if not line:
            return
        cut = False
        if len(line) == max_chars and not line.endswith("\n"):
            rest = handle.readline(max_chars)
            cut = rest not in ("", "\n")
            while rest and not rest.endswith("\n"):  # skip the rest of the line, one bounded piece at a time
                rest = handle.readline(max_chars)
        yield line, cut


def _read_sentences(path: str, max_sentences: int | None, stats: dict, max_line_chars: int) -> Iterator[str]:
    with open(path, encoding="utf-8-sig") as handle:
        for line, cut in _bounded_lines(handle, max_line_chars):
            text = line.strip()
            if not text:
                stats["blank_lines"] += 1
                continue
            stats["sentences"] += 1
            stats["cut_lines"] += int(cut)
            yield text
            if max_sentences is not None and stats["sentences"] >= max_sentences:
                return


def read_sentences(path: str | os.PathLike, max_sentences: int | None = None) -> tuple[list[str], int]:
    """The non-blank lines of a text file (one sentence a line, stripped) and the number of blank lines skipped.

    With `max_sentences`, only the first `max_sentences` non-blank lines are kept (see [`iter_sentences`])."""
    stats: dict = {}
    sentences = list(iter_sentences(path, max_sentences=max_sentences, stats=stats))
    return sentences, stats["blank_lines"]


def sentences_with_min_words(
    sentences: Iterable[str], tokenizer, min_words: int = 1, chunk_size: int = 1024
) -> Iterator[str]:
    """The sentences of at least `min_words` words as `tokenizer` splits them (at least one in any case),
    tokenized `chunk_size` at a time: lazy, for inputs of any size."""
    iterator = iter(sentences)
    minimum = max(min_words, 1)
    while True:
        chunk = list(islice(iterator, chunk_size))
        if not chunk:
            return
        lengths = [len(ids) - 2 for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]]
        yield from (text for text, n in zip(chunk, lengths) if n >= minimum)


def load_sentences(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer=None,
    max_sentences: int | None = None,
    min_words: int = 1,
    label: str = "input file",
) -> list[str]:
    """The stripped non-blank lines of one or more text files (one sentence a line), keeping sentences of at
    least `min_words` words (as `tokenizer` splits them, else on whitespace), the first `max_sentences`.

    Reading is lazy and stops at the `max_sentences`-th kept sentence, so the first sentences of a large file cost
    what they hold. Each file is checked first (missing, a directory, empty or not UTF-8: one clear error naming
    it as `label`); see [`iter_kept_sentences`]."""
    return list(islice(iter_kept_sentences(paths, tokenizer, min_words, label), max_sentences or None))


def iter_kept_sentences(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer=None,
    min_words: int = 1,
    label: str = "input file",
) -> Iterator[str]:
    """Lazily, the stripped non-blank lines of the files with at least `min_words` words (as `tokenizer` splits
    them, else on whitespace), in order; files are read in bounded memory ([`iter_sentences`])."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    readers = [iter_sentences(path, label=label) for path in paths]  # every file is checked before any is read
    for sentences in readers:
        if tokenizer is not None:
            yield from sentences_with_min_words(sentences, tokenizer, min_words)
        else:
            yield from (s for s in sentences if len(s.split()) >= max(min_words, 1))


# --------------------------------------------------------------------------- training splits with datasets
def load_text_splits(
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    text_column: str = "text",
    cache_dir: str | None = None,
):
    """Load the text splits as a `datasets.DatasetDict` with one column, ``text``; blank lines are dropped (and
    counted in the log). Local files take precedence per split; a Hub dataset supplies the rest."""
    import datasets

    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path}
    if not files and not dataset_name:
        raise ValueError("give --train_file (and --validation_file) or --dataset_name")
    splits = {}
    if dataset_name:
        try:
            hub = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        except Exception as err:  # network, missing dataset, ...: say which dataset failed and why
            raise ValueError(f"could not load --dataset_name {dataset_name!r}: {type(err).__name__}: {err}") from err
        for split, dataset in hub.items():
            if text_column not in dataset.column_names:
                raise ValueError(
                    f"--text_column {text_column!r} is not a column of {dataset_name!r} split {split!r}; "
                    f"columns: {dataset.column_names}"
                )
            feature = dataset.features[text_column]
            if getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise ValueError(
                    f"--text_column {text_column!r} of {dataset_name!r} split {split!r} is not a text column "
                    f"(its type is {feature}); columns: {dataset.column_names}"
                )
            dataset = dataset.select_columns([text_column])
            if text_column != "text":
                dataset = dataset.rename_column(text_column, "text")
            splits[split] = dataset
    if files:
        for split, path in files.items():
            check_text_file(path, split)
        # utf-8-sig: a byte-order mark at the start of a file (Windows editors write one) is not part of the first word.
        local = datasets.load_dataset("text", data_files=files, cache_dir=cache_dir, encoding="utf-8-sig")
        splits.update(local)
    if "train" not in splits:
        raise ValueError(f"no training split: got splits {sorted(splits)}")
    result = datasets.DatasetDict()
    for split, dataset in splits.items():
        kept = dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
        dropped = len(dataset) - len(kept)
        if dropped:
            logger.warning(f"{split}: skipped {dropped} blank line(s)")
        if len(kept) == 0:
            raise ValueError(f"the {split} split has no non-blank lines")
        result[split] = kept
    return result


def tokenize_splits(splits, tokenizer, max_length: int, num_proc: int | None = None):
    """Tokenize every split with `Dataset.map(batched=True)` into ``input_ids`` (``<bos> ... <eos>``, at most
    `max_length` ids: longer sentences keep their first words and their ``<eos>``) and ``length``. The count
    of truncated lines is logged per split, and so is the count of special-token strings (``<pad>``, ``<bos>``,
    ``<eos>``) found inside sentences, which the tokenizer encodes as ``<unk>``. Returns (`DatasetDict`,
    {split: truncated count})."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (<bos>, a word, <eos>), got {max_length}")
    eos = tokenizer.eos_token_id

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
        specials = special_token_string_counts(batch["text"], tokenizer)
        truncated = [len(x) > max_length for x in ids]
        ids = [truncate_ids(x, max_length, eos) for x in ids]
        return {"input_ids": ids, "length": [len(x) for x in ids], "truncated": truncated, "specials": specials}

    tokenized = splits.map(encode, batched=True, remove_columns=["text"], num_proc=num_proc, desc="Tokenizing")
    counts = {}
    for split, dataset in tokenized.items():
        counts[split] = int(np.asarray(dataset.data.column("truncated")).sum())
        if counts[split]:
            logger.warning(f"{split}: truncated {counts[split]} line(s) longer than max_length={max_length} tokens")
        specials = int(np.asarray(dataset.data.column("specials")).sum())
        if specials:
            logger.warning(
                f"{split}: replaced {specials} special-token string(s) (<pad>, <bos>, <eos>) inside sentences by <unk>"
            )
    return tokenized, counts


# --------------------------------------------------------------------------- in-memory corpus and batches
@dataclass
class TokenizedCorpus:
    """Sentences as one flat id array plus offsets; cuts padded batches by index arrays."""

    ids: np.ndarray
    offsets: np.ndarray
    pad_token_id: int

    @classmethod
    def from_dataset(cls, dataset, pad_token_id: int) -> TokenizedCorpus:
        if getattr(dataset, "_indices", None) is not None:  # after select/filter/shuffle: rows are a mapping
            dataset = dataset.flatten_indices()
        column = dataset.data.column("input_ids").combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy()
        start = int(offsets[0])
        return cls(values[start : int(offsets[-1])], offsets - start, pad_token_id)

    @classmethod
    def from_sentences(
        cls,
        tokenizer,
        sentences: Sequence[str],
        max_length: int | None = None,
        chunk_size: int = 1024,
    ) -> tuple[TokenizedCorpus, int]:
        """`(corpus, truncated)`: the sentences tokenized `chunk_size` at a time (the tokenizer's per-token bookkeeping
        would take kilobytes per sentence for many at once; only the ids are kept), encodings longer than
        `max_length` keeping their first ids and `<eos>` (`truncated` counts them)."""
        encoded: list[list[int]] = []
        for start in range(0, len(sentences), chunk_size):
            encoded.extend(tokenizer(list(sentences[start : start + chunk_size]), add_special_tokens=True)["input_ids"])
        truncated = 0
        if max_length is not None:
            truncated = sum(len(ids) > max_length for ids in encoded)
            encoded = [truncate_ids(ids, max_length, tokenizer.eos_token_id) for ids in encoded]
        return cls.from_lists(encoded, tokenizer.pad_token_id), truncated

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]], pad_token_id: int) -> TokenizedCorpus:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(ids, offsets, pad_token_id)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        """Predicted tokens: words plus end of sentence (all ids minus one `<bos>` per sentence)."""
        return int(self.offsets[-1]) - len(self)

    def sequences(self) -> list[np.ndarray]:
        """Every sentence's ids (`<bos> ... <eos>`), in corpus order."""
        return np.split(self.ids, self.offsets[1:-1])

    def batch(self, indices: np.ndarray, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """A right-padded batch {input_ids, attention_mask} of the given sentences (optionally to `pad_to`)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        width = int(lengths.max()) if pad_to is None else pad_to
        positions = np.arange(width)
        mask = positions[None, :] < lengths[:, None]
        gather = np.where(mask, starts[:, None] + positions[None, :], 0)
        ids = np.where(mask, self.ids[gather], self.pad_token_id)
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }

    def sorted_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """`(indices, batch)` covering every sentence once, shortest first (sentences of equal length in their
        order), `batch_size` sentences a batch padded to its longest: little padding, and the results of a
        per-sentence evaluation do not depend on it."""
        for indices in bucketed_batches(self.lengths, batch_size, shuffle=False):
            yield indices, self.batch(indices)


def bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    bucket_multiplier: int = 50,
) -> list[np.ndarray]:
    """Length-bucketed batches: shuffle, cut into pools of `bucket_multiplier * batch_size` sentences, sort
    each pool by length, cut into batches, shuffle the batch order. A pure function of (seed, epoch), so a
    resumed run sees the same batches. Without `shuffle`, batches of sorted lengths in a fixed order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    pool = batch_size * bucket_multiplier
    batches = []
    for start in range(0, n, pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_fraction(lengths: np.ndarray, batches: Sequence[np.ndarray]) -> float:
    """Fraction of padding positions in the given batches (padded to each batch's longest sentence)."""
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - float(sum(int(lengths[b].sum()) for b in batches)) / max(padded, 1)


def iterate_batches(corpus: TokenizedCorpus, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches in length order (little padding), covering every sentence once."""
    for _, batch in corpus.sorted_batches(batch_size):
        yield batch


def stream_batches(
    tokenizer,
    sentences: Iterable[str],
    batch_size: int,
    pool_batches: int = DEFAULT_POOL_BATCHES,
    max_length: int | None = None,
    stats: dict | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded `{"input_ids", "attention_mask"}` batches from any iterable of sentences, holding at most
    `pool_batches * batch_size` sentences at a time: each pool is tokenized into a [`TokenizedCorpus`] and cut into
    batches in length order. With `max_length`, longer encodings keep their first ids and `<eos>` (as in training);
    if `stats` is a dict, its `truncated_lines` counts them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pool_batches < 1:
        raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
    if max_length is not None and max_length < 3:
        raise ValueError(f"max_length must be >= 3 (<bos>, a word, <eos>), got {max_length}")
    stats = {} if stats is None else stats
    stats["truncated_lines"] = 0
    return _pooled_batches(tokenizer, iter(sentences), batch_size, pool_batches, max_length, stats)


def _pooled_batches(tokenizer, iterator, batch_size, pool_batches, max_length, stats):
    while pool := list(islice(iterator, pool_batches * batch_size)):
        if any(not isinstance(text, str) for text in pool):
            raise ValueError("stream_batches expects an iterable of str sentences")
        corpus, truncated = TokenizedCorpus.from_sentences(tokenizer, pool, max_length, chunk_size=batch_size)
        del pool
        stats["truncated_lines"] += truncated
        for _, batch in corpus.sorted_batches(batch_size):
            yield batch


def length_sorted_batches(tokenizer, sentences: Sequence[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Tokenize sentences and group them by length into padded batches (less padding, same results).

    Returns a list of `{"input_ids", "attention_mask"}` `(B, T)` tensors, shortest sentences first: the batches of
    [`stream_batches`] with all the sentences in one pool."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(sentences) == 0:
        raise ValueError("length_sorted_batches got no sentences")
    corpus, _ = TokenizedCorpus.from_sentences(tokenizer, list(sentences), chunk_size=batch_size)
    return [batch for _, batch in corpus.sorted_batches(batch_size)]


__all__ = [
    "DEFAULT_MAX_LINE_CHARS",
    "DEFAULT_POOL_BATCHES",
    "TokenizedCorpus",
    "bucketed_batches",
    "check_text_file",
    "iter_kept_sentences",
    "iter_sentences",
    "iterate_batches",
    "length_sorted_batches",
    "load_sentences",
    "load_text_splits",
    "pad_fraction",
    "read_sentences",
    "read_wordnet_examples",
    "sentences_with_min_words",
    "split_corpus",
    "stream_batches",
    "tokenize_splits",
    "truncate_ids",
]
