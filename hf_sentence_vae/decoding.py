"""Batched search over a recurrent decoder: greedy, sampling and (constrained) beam search.

The searches are model-agnostic: they drive a `step_fn(tokens, state) -> (log_probs, state)` where
`tokens` is a `(N,)` LongTensor of the previous tokens, `state` a tuple of tensors whose first dimension
is the batch `N`, and `log_probs` a `(N, V)` tensor of normalised next-token log-probabilities. Every
operation is vectorised over the batch (and, for beam search, over batch x beam); the only Python loop
is over time steps.

`forced_tokens` (`(B, T)` LongTensor, `-1` = free) pins the token generated at step `t` for row `b`
(this is how imputation keeps known words and fixes the sentence length).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
LogitsProcessorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SearchResult(NamedTuple):
    """`sequences`: `(B, n, L)` generated ids (end of sentence included, then padding);
    `scores`: `(B, n)` ranking scores (sum of log-probabilities, length-penalised for beam search);
    `log_probs`: `(B, n)` plain sums of the chosen tokens' log-probabilities;
    `lengths`: `(B, n)` tokens generated before padding (end of sentence included)."""

    sequences: torch.Tensor
    scores: torch.Tensor
    log_probs: torch.Tensor
    lengths: torch.Tensor


def _apply_constraints(
    log_probs: torch.Tensor,
    step: int,
    eos_token_id: int,
    min_new_tokens: int,
    forced: torch.Tensor | None,
) -> torch.Tensor:
    """Mask end of sentence before `min_new_tokens`, and pin forced tokens (rows of `forced` >= 0)."""
    if step < min_new_tokens:
        log_probs = log_probs.index_fill(-1, torch.tensor([eos_token_id], device=log_probs.device), float("-inf"))
    if forced is not None and step < forced.shape[1]:
        pinned = forced[:, step]
        is_pinned = pinned >= 0
        if bool(is_pinned.any()):
            only = torch.full_like(log_probs, float("-inf"))
            index = pinned.clamp(min=0).unsqueeze(-1)
            only.scatter_(-1, index, log_probs.gather(-1, index))
            log_probs = torch.where(is_pinned.unsqueeze(-1), only, log_probs)
    return log_probs


def _finished_row(vocab_size: int, pad_token_id: int, like: torch.Tensor) -> torch.Tensor:
    """Log-probabilities for a finished hypothesis: padding with probability one."""
    row = torch.full((vocab_size,), float("-inf"), dtype=like.dtype, device=like.device)
    row[pad_token_id] = 0.0
    return row


def sample_search(
    step_fn: StepFn,
    state: State,
    batch_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    logits_processor: LogitsProcessorFn | None = None,
    forced_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Greedy decoding (`do_sample=False`) or ancestral sampling, batched over `batch_size` rows.

    `logits_processor(generated_ids, scores) -> scores` (e.g. a `transformers.LogitsProcessorList` of
    temperature / top-k / top-p warpers) reshapes the distribution before sampling; it does not change
    the reported log-probabilities, which are the model's own.
    """
    device = state[0].device
    tokens = torch.full((batch_size,), bos_token_id, dtype=torch.long, device=device)
    generated = torch.empty((batch_size, 0), dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    total = torch.zeros(batch_size, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        log_probs, state = step_fn(tokens, state)
        log_probs = _apply_constraints(log_probs.float(), step, eos_token_id, min_new_tokens, forced_tokens)
        if do_sample:
            scores = log_probs if logits_processor is None else logits_processor(generated, log_probs.clone())
            probs = torch.softmax(scores, dim=-1)
            choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            choice = log_probs.argmax(-1)
        chosen = log_probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        choice = choice.masked_fill(finished, pad_token_id)
        total = total + chosen.masked_fill(finished, 0.0)
        lengths = lengths + (~finished).long()
        generated = torch.cat([generated, choice.unsqueeze(-1)], dim=-1)
        finished = finished | (choice == eos_token_id)
        tokens = choice
        if bool(finished.all()):
            break
    return SearchResult(generated.unsqueeze(1), total.unsqueeze(1), total.unsqueeze(1), lengths.unsqueeze(1))


def beam_search(
    step_fn: StepFn,
    state: State,
    batch_size: int,
    num_beams: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    num_return_sequences: int = 1,
    forced_tokens: torch.Tensor | None = None,
) -> SearchResult:
    """Beam search vectorised over batch x beam.

    `state` holds `batch_size` rows; they are expanded to `batch_size * num_beams`. Finished hypotheses
    stay in the beam (extended by padding at no cost) and compete with open ones on their summed
    log-probability; at the end hypotheses are ranked by `sum log p / length ** length_penalty`
    (`length_penalty=0` ranks by the plain sum). With `num_beams=1` this is greedy decoding; with a beam
    at least as wide as the number of partial hypotheses it is exact search.
    """
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
    device = state[0].device
    k = num_beams
    state = tuple(s.repeat_interleave(k, dim=0) for s in state)
    forced = None if forced_tokens is None else forced_tokens.repeat_interleave(k, dim=0)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    sequences = torch.empty((batch_size, k, 0), dtype=torch.long, device=device)
    finished = torch.zeros((batch_size, k), dtype=torch.bool, device=device)
    lengths = torch.zeros((batch_size, k), dtype=torch.long, device=device)
    tokens = torch.full((batch_size * k,), bos_token_id, dtype=torch.long, device=device)
    offsets = (torch.arange(batch_size, device=device) * k).unsqueeze(-1)
    for step in range(max_new_tokens):
        log_probs, state = step_fn(tokens, state)
        log_probs = _apply_constraints(log_probs.float(), step, eos_token_id, min_new_tokens, forced)
        vocab_size = log_probs.shape[-1]
        done_row = _finished_row(vocab_size, pad_token_id, log_probs)
        log_probs = torch.where(finished.view(-1, 1), done_row, log_probs)
        candidates = (scores.unsqueeze(-1) + log_probs.view(batch_size, k, vocab_size)).view(batch_size, -1)
        scores, flat = candidates.topk(k, dim=-1)
        beam = torch.div(flat, vocab_size, rounding_mode="floor")
        tokens_bk = flat % vocab_size
        source = (offsets + beam).view(-1)
        state = tuple(s.index_select(0, source) for s in state)
        if forced is not None:
            forced = forced.index_select(0, source)
        was_finished = finished.gather(1, beam)
        sequences = torch.cat(
            [sequences.gather(1, beam.unsqueeze(-1).expand_as(sequences)), tokens_bk.unsqueeze(-1)], -1
        )
        lengths = lengths.gather(1, beam) + (~was_finished).long()
        finished = was_finished | (tokens_bk == eos_token_id)
        tokens = tokens_bk.view(-1)
        if bool(finished.all()):
            break
    log_probs_total = scores
    ranking = scores / lengths.clamp(min=1).float().pow(length_penalty) if length_penalty else scores
    ranking, order = ranking.sort(dim=-1, descending=True)
    order = order[:, :num_return_sequences]
    pick = order.unsqueeze(-1).expand(-1, -1, sequences.shape[-1])
    return SearchResult(
        sequences.gather(1, pick),
        ranking[:, :num_return_sequences],
        log_probs_total.gather(1, order),
        lengths.gather(1, order),
    )


def reverse_tokens(sequences: torch.Tensor, lengths: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Reverse, in each row, the `lengths[b]` tokens starting at position `offset`; other positions stay.

    Used for right-to-left models: `offset=1` with `lengths = total - 2` flips the words between `<bos>`
    and `<eos>`; on generated sequences (`offset=0`, `lengths` = words before `<eos>`) it restores reading
    order.
    """
    positions = torch.arange(sequences.shape[-1], device=sequences.device)
    lengths = lengths.unsqueeze(-1)
    inside = (positions >= offset) & (positions < offset + lengths)
    source = torch.where(inside, 2 * offset + lengths - 1 - positions, positions)
    return sequences.gather(-1, source)
