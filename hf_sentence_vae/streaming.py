"""Bounded-memory generation and evaluation for large inputs and outputs.

- [`generate_stream`] decodes any number of prior samples batch by batch and yields each batch's texts, so
  100,000 sentences take the memory of one batch (write them out as they come: [`write_generated`]).
- [`iter_sentences`] reads a text file lazily (non-blank, stripped lines), [`stream_batches`] turns any
  iterable of sentences into padded, length-sorted batches using a bounded pool of sentences, and
  [`evaluate_file`] feeds them to `metrics.evaluate_model` (which accumulates only running sums), so evaluating a
  large file holds one pool of sentences at a time instead of the whole file (`metrics.read_sentences` and
  `metrics.length_sorted_batches` read and sort everything).

Sorting by length within pools of `pool_batches * batch_size` sentences keeps padding low; every estimate in
`evaluate_model` is a sum over sentences, so the batching does not change the results except the mutual
information, which is estimated per batch (see `metrics`); a file that fits in one pool is batched exactly as
`metrics.length_sorted_batches` batches it.

Memory stays bounded by the pool whatever the input: a line longer than `max_line_chars` characters is read in
pieces and cut (counted as `cut_lines`), and with `max_length` an encoding keeps its first ids and `<eos>` (counted
as `truncated_lines`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import torch

from .data import _check_text_file

DEFAULT_POOL_BATCHES = 50
# A sentence of 100,000 characters is ~20,000 words, far beyond any model's maximum length: the rest of a longer
# line is skipped unread into memory.
DEFAULT_MAX_LINE_CHARS = 100_000


# --------------------------------------------------------------------------- generation
def generate_stream(
    model,
    tokenizer,
    num_sentences: int,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    skip_special_tokens: bool = True,
    **generate_kwargs,
) -> Iterator[list[str]]:
    """Yield the decoded texts of `num_sentences` prior samples, one list per batch of at most `batch_size`.

    Each batch draws its codes from the prior (`model.generate(num_samples=...)`; for the RNNLM, unconditional
    samples) with `generator`, decodes them (the model's generation settings unless `generate_kwargs` say
    otherwise, e.g. `do_sample=True`, `num_beams=4`, `max_new_tokens=30`) and drops every tensor before the next
    batch, so memory does not grow with `num_sentences`. With `num_return_sequences=k` a batch yields `k` texts per code.
    """
    if not isinstance(num_sentences, int) or num_sentences < 0:
        raise ValueError(f"num_sentences must be a non-negative integer, got {num_sentences!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if "latent" in generate_kwargs or "num_samples" in generate_kwargs:
        raise ValueError("generate_stream draws its own codes: do not pass latent or num_samples")
    return _generate_batches(
        model, tokenizer, num_sentences, batch_size, generator, skip_special_tokens, generate_kwargs
    )


def _generate_batches(model, tokenizer, num_sentences, batch_size, generator, skip_special_tokens, generate_kwargs):
    remaining = num_sentences
    while remaining > 0:
        size = min(batch_size, remaining)
        with torch.no_grad():
            out = model.generate(
                num_samples=size, generator=generator, **{**generate_kwargs, "return_dict_in_generate": True}
            )
            texts = tokenizer.batch_decode(out.sequences.cpu(), skip_special_tokens=skip_special_tokens)
        del out
        remaining -= size
        yield texts


def write_generated(
    path: str | os.PathLike, model, tokenizer, num_sentences: int, batch_size: int = 256, **kwargs
) -> int:
    """Write `num_sentences` generated sentences to `path`, one a line, as they are decoded (bounded memory).
    The file appears complete or not at all (written to a temporary name, then renamed). Returns the number of
    lines written."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for texts in generate_stream(model, tokenizer, num_sentences, batch_size, **kwargs):
                handle.writelines(" ".join(text.split()) + "\n" for text in texts)
                count += len(texts)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


# --------------------------------------------------------------------------- reading and batching
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
    _check_text_file(path, "input", label=label)  # now, not at the first next()
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


def _truncate(ids: list[int], max_length: int | None, eos: int) -> list[int]:
    return ids[: max_length - 1] + [eos] if max_length is not None and len(ids) > max_length else ids


def stream_batches(
    tokenizer,
    sentences: Iterable[str],
    batch_size: int,
    pool_batches: int = DEFAULT_POOL_BATCHES,
    max_length: int | None = None,
    stats: dict | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded `{"input_ids", "attention_mask"}` batches from any iterable of sentences, holding at most
    `pool_batches * batch_size` sentences at a time: each pool is tokenized, sorted by length and cut into
    batches. With `max_length`, longer encodings keep their first ids and `<eos>` (as in training); if `stats` is
    a dict, its `truncated_lines` counts them."""
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
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    while True:
        pool = list(islice(iterator, pool_batches * batch_size))
        if not pool:
            return
        if any(not isinstance(text, str) for text in pool):
            raise ValueError("stream_batches expects an iterable of str sentences")
        # Tokenized a batch at a time: the tokenizer's per-token bookkeeping (offsets, token strings) would take
        # kilobytes per sentence for a whole pool; only the ids are kept.
        encoded = []
        for start in range(0, len(pool), batch_size):
            encoded.extend(tokenizer(pool[start : start + batch_size], add_special_tokens=True)["input_ids"])
        del pool
        if max_length is not None:
            stats["truncated_lines"] += sum(len(ids) > max_length for ids in encoded)
            encoded = [_truncate(ids, max_length, eos) for ids in encoded]
        encoded.sort(key=len)
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            width = len(rows[-1])
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, ids in enumerate(rows):
                input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[i, : len(ids)] = 1
            yield {"input_ids": input_ids, "attention_mask": attention_mask}


def evaluate_file(
    model,
    tokenizer,
    path: str | os.PathLike,
    batch_size: int = 64,
    max_sentences: int | None = None,
    pool_batches: int = DEFAULT_POOL_BATCHES,
    max_length: int | None = None,
    label: str = "input file",
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    **evaluate_kwargs,
) -> dict:
    """`metrics.evaluate_model` over a text file streamed in bounded memory (see [`iter_sentences`] and
    [`stream_batches`]); the result also reports the `blank_lines` skipped, the `cut_lines` (longer than
    `max_line_chars`) and the `truncated_lines` (longer than `max_length` ids). `evaluate_kwargs` go to
    `evaluate_model` (`iw_samples`, `generator`, `progress`, ...)."""
    from .metrics import evaluate_model

    stats: dict = {}
    sentences = iter_sentences(
        path, max_sentences=max_sentences, stats=stats, label=label, max_line_chars=max_line_chars
    )
    batches = stream_batches(
        tokenizer, sentences, batch_size, pool_batches=pool_batches, max_length=max_length, stats=stats
    )
    evaluate_kwargs.setdefault("progress", False)
    results = evaluate_model(model, batches, **evaluate_kwargs)
    results["blank_lines"] = stats.get("blank_lines", 0)
    results["cut_lines"] = stats.get("cut_lines", 0)
    results["truncated_lines"] = stats.get("truncated_lines", 0)
    return results


__all__ = [
    "generate_stream",
    "write_generated",
    "iter_sentences",
    "sentences_with_min_words",
    "stream_batches",
    "evaluate_file",
]
