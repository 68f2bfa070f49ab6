"""Generation and evaluation in bounded memory, whatever the number of sentences.

- [`generate_stream`] decodes any number of prior samples batch by batch and yields each batch's texts, so
  100,000 sentences take the memory of one batch (write them out as they come: [`write_generated`]).
- [`evaluate_file`] reads a text file lazily (`data.iter_sentences`), batches it a bounded pool at a time
  (`data.stream_batches`) and feeds the batches to `metrics.evaluate_model` (which accumulates only running sums),
  so evaluating a large file holds one pool of sentences at a time instead of the whole file.

Sorting by length within pools of `pool_batches * batch_size` sentences keeps padding low; every estimate in
`evaluate_model` is a sum over sentences, so the batching does not change the results except the mutual
information, which is estimated per batch (see `metrics`); a file that fits in one pool is batched exactly as
`data.length_sorted_batches` batches it.

Memory stays bounded by the pool whatever the input: a line longer than `max_line_chars` characters is read in
pieces and cut (counted as `cut_lines`), and with `max_length` an encoding keeps its first ids and `<eos>` (counted
as `truncated_lines`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from .data import (
    DEFAULT_MAX_LINE_CHARS,
    DEFAULT_POOL_BATCHES,
    iter_sentences,
    sentences_with_min_words,
    stream_batches,
)
from .metrics import evaluate_model


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


# --------------------------------------------------------------------------- evaluation
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


# The reader and the batcher live in `data`; their names here are kept for existing imports.
__all__ = [
    "DEFAULT_MAX_LINE_CHARS",
    "DEFAULT_POOL_BATCHES",
    "evaluate_file",
    "generate_stream",
    "iter_sentences",
    "sentences_with_min_words",
    "stream_batches",
    "write_generated",
]
