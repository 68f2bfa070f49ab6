"""Batched search over a recurrent decoder: greedy, sampling and (constrained) beam search.

The searches are model-agnostic: they drive a `step_fn(tokens, state) -> (log_probs, state)` where
`tokens` is a `(N,)` LongTensor of the previous tokens, `state` a tuple of tensors whose first dimension
is the batch `N`, and `log_probs` a `(N, V)` tensor of normalised next-token log-probabilities. Every
operation is vectorised over the batch (and, for beam search, over batch x beam); the only Python loop
is over time steps.

`forced_tokens` (`(B, T)` LongTensor, `-1` = free) pins the token generated at step `t` for row `b`
(this is how imputation keeps known words and fixes the sentence length).

`logits_processor(generated_ids, scores) -> scores` (e.g. a `transformers.LogitsProcessorList` of repetition
penalty, n-gram blocking, bad words, suppressed tokens) reshapes every step's log-probabilities before a token is
chosen; `generated_ids` are the tokens generated so far (no `<bos>`, in the decoder's order). The searches report
the model's own log-probabilities of the chosen tokens (`log_probs`) whatever the processors did. With
`output_scores=True` they also return the scores each step chose from (`step_scores`, one `(N, V)` tensor per
step, `N` = every row of the batch, or batch x beams): rows that have ended hold 0 for `<pad>` and `-inf`
elsewhere, so the score of a whole generated sequence is the sum of its tokens' entries. With `output_logits=True`
they return the model's own log-probabilities of every step in the same layout (`step_logits`), before any
processor, constraint or warper.

`max_time` (seconds, as in `transformers`) ends a search after the step during which that time ran out: the rows
still open end there, as at the length limit. `stopping_fn(generated_ids) -> (N,) bool` (e.g. `transformers`
stopping criteria) is asked after each step about the sequences still open (greedy and sampling) or every hypothesis
(beam search), in the decoder's order: those it marks end there, without `<eos>`.

`suppress_tokens` (`(S,)` LongTensor) are ids never generated, applied after `logits_processor` (the reported
log-probabilities stay the model's).

Fast paths. A search also takes a step function that chooses tokens itself: `greedy_step_fn(tokens, state, banned,
with_log_probs) -> (choice, log_probs, state)` gives the `(N,)` greedy choices among the ids not in `banned` and,
when asked, their `(N,)` log-probabilities; `top_k_step_fn(tokens, state, k, banned) -> (log_probs, ids, state)`
gives each row's `k` best ids, best first, with their log-probabilities (`(N, k)` each). A model implements them
without materialising the `(N, V)` distribution (`kernels.greedy_tokens`, `kernels.top_k_tokens`). They are used
when nothing needs that distribution: no `logits_processor` (suppressed ids and the `min_new_tokens` end of sentence
are passed as `banned`), no `forced_tokens`, no `output_scores` or `output_logits`; otherwise the search runs on
`step_fn`. Both give the same sequences (up to exact ties between floating-point scores, where rounding can pick
either).
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import NamedTuple

import torch

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
StoppingFn = Callable[[torch.Tensor], torch.Tensor]
GreedyStepFn = Callable[
    [torch.Tensor, State, "torch.Tensor | None", bool], tuple[torch.Tensor, "torch.Tensor | None", State]
]
TopKStepFn = Callable[[torch.Tensor, State, int, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor, State]]
LogitsProcessorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SearchResult(NamedTuple):
    """`sequences`: `(B, n, L)` generated ids (end of sentence included, then padding);
    `scores`: `(B, n)` ranking scores (sum of the processed log-probabilities, length-penalised for beam search);
    `log_probs`: `(B, n)` plain sums of the chosen tokens' log-probabilities under the model;
    `lengths`: `(B, n)` tokens generated before padding (end of sentence included);
    `step_scores`: with `output_scores`, the `L` per-step `(N, V)` scores the search chose from;
    `beam_indices`: with `output_scores` or `output_logits` in beam search, `(B, n, L)` the row of `step_scores[t]`
    each returned hypothesis extended at step `t` (`-1` after its batch row left the search), as `transformers`'
    `compute_transition_scores` reads them;
    `step_logits`: with `output_logits`, the `L` per-step `(N, V)` log-probabilities of the model, unprocessed."""

    sequences: torch.Tensor
    scores: torch.Tensor
    log_probs: torch.Tensor
    lengths: torch.Tensor
    step_scores: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    step_logits: tuple[torch.Tensor, ...] | None = None


def _deadline(max_time: float | None) -> float | None:
    """The `time.monotonic()` after which a search given `max_time` seconds stops."""
    if max_time is None:
        return None
    if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not max_time > 0:  # also NaN
        raise ValueError(f"max_time must be > 0 seconds, got {max_time!r}")
    return monotonic() + max_time


def _past(deadline: float | None) -> bool:
    return deadline is not None and monotonic() >= deadline


def _stops(stopping_fn: StoppingFn | None, generated_ids: torch.Tensor) -> torch.Tensor | None:
    """`stopping_fn`'s `(N,)` verdict on `(N, L)` generated ids, checked; None without one."""
    if stopping_fn is None:
        return None
    stop = torch.as_tensor(stopping_fn(generated_ids), device=generated_ids.device)
    if stop.shape != generated_ids.shape[:1]:
        raise ValueError(
            f"stopping criteria must return one bool per sequence, shape ({generated_ids.shape[0]},), got "
            f"{tuple(stop.shape)}"
        )
    return stop.bool()


def _ended_row(vocab_size: int, pad_token_id: int, device: torch.device) -> torch.Tensor:
    """The `(V,)` scores of a row that has ended: `<pad>` at no cost, nothing else."""
    row = torch.full((vocab_size,), float("-inf"), device=device)
    row[pad_token_id] = 0.0
    return row


def _banned_ids(
    suppress_tokens: torch.Tensor | None, step: int, min_new_tokens: int, eos_token_id: int, device: torch.device
) -> torch.Tensor | None:
    """The ids a fast step may not choose at `step`: the suppressed ones, and end of sentence before
    `min_new_tokens`."""
    if step >= min_new_tokens:
        return suppress_tokens
    eos = torch.tensor([eos_token_id], device=device)
    return eos if suppress_tokens is None else torch.cat([suppress_tokens, eos])


def _suppress(scores: torch.Tensor, suppress_tokens: torch.Tensor | None) -> torch.Tensor:
    """`scores` with the `suppress_tokens` ids at -inf."""
    if suppress_tokens is None or suppress_tokens.numel() == 0:
        return scores
    return scores.index_fill(-1, suppress_tokens, float("-inf"))


def _apply_constraints(
    scores: torch.Tensor,
    step: int,
    eos_token_id: int,
    min_new_tokens: int,
    forced: torch.Tensor | None,
    log_probs: torch.Tensor,
) -> torch.Tensor:
    """Mask end of sentence before `min_new_tokens`, and pin forced tokens (rows of `forced` >= 0) at the model's
    own log-probability `log_probs` (whatever the processors made of it)."""
    if step < min_new_tokens:
        scores = scores.index_fill(-1, torch.tensor([eos_token_id], device=scores.device), float("-inf"))
    if forced is not None and step < forced.shape[1]:
        pinned = forced[:, step]
        is_pinned = pinned >= 0
        if bool(is_pinned.any()):
            only = torch.full_like(scores, float("-inf"))
            index = pinned.clamp(min=0).unsqueeze(-1)
            only.scatter_(-1, index, log_probs.gather(-1, index))
            scores = torch.where(is_pinned.unsqueeze(-1), only, scores)
    return scores


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
    logits_warper: LogitsProcessorFn | None = None,
    output_scores: bool = False,
    suppress_tokens: torch.Tensor | None = None,
    greedy_step_fn: GreedyStepFn | None = None,
    compute_scores: bool = True,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    output_logits: bool = False,
    max_time: float | None = None,
    stopping_fn: StoppingFn | None = None,
) -> SearchResult:
    """Greedy decoding (`do_sample=False`) or ancestral sampling, batched over `batch_size` rows.

    Each step's log-probabilities go through `logits_processor` (see the module docstring), then the length and
    forced-token constraints, then, when sampling, `logits_warper(generated_ids, scores) -> scores` (e.g.
    `transformers`' temperature / top-k / top-p warpers) shapes the distribution that is sampled from. The reported
    log-probabilities are the model's own.

    Greedy rows that have produced `<eos>` leave the batch (their state rows are dropped), so a batch costs
    the sum of its sentence lengths rather than its size times its longest sentence; rows do not interact,
    so the results are those of decoding every row on its own. Sampling keeps all rows to the end, so the
    generator's random stream is consumed as always.

    Greedy decoding runs on `greedy_step_fn` where it can (see the module docstring); with `compute_scores=False`
    it then skips the log-probabilities, and the result's `scores` and `log_probs` are zeros.

    `on_tokens` (e.g. a `transformers` streamer's `put`) is called after each step with that step's chosen ids:
    `(N,)` for the rows still being decoded in greedy search, for every row in sampling (`<pad>` for rows that have
    ended).
    """
    device = state[0].device
    deadline = _deadline(max_time)
    tokens = torch.full((batch_size,), bos_token_id, dtype=torch.long, device=device)
    generated = torch.full((batch_size, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    total = torch.zeros(batch_size, device=device)
    ranking = torch.zeros(batch_size, device=device) if logits_processor is not None else total
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)  # greedy: the rows still being decoded
    forced = forced_tokens
    step_scores: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    ended = None
    steps = 0
    fast = (
        greedy_step_fn is not None
        and not do_sample
        and logits_processor is None
        and forced_tokens is None
        and not output_scores
        and not output_logits
    )
    for step in range(max_new_tokens):
        steps = step + 1
        if fast:
            banned = _banned_ids(suppress_tokens, step, min_new_tokens, eos_token_id, device)
            choice, chosen, state = greedy_step_fn(tokens, state, banned, compute_scores)
            best = chosen
        else:
            log_probs, state = step_fn(tokens, state)
            log_probs = log_probs.float()
            scores = log_probs
            if logits_processor is not None:
                scores = logits_processor(
                    generated[rows, :step] if not do_sample else generated[:, :step], scores.clone()
                )
            scores = _suppress(scores, suppress_tokens)
            scores = _apply_constraints(scores, step, eos_token_id, min_new_tokens, forced, log_probs)
            if (output_scores or output_logits) and ended is None:
                ended = _ended_row(scores.shape[-1], pad_token_id, device)
            if output_logits:  # greedy search drops ended rows; sampling keeps them, with `finished` set
                logits = ended.expand(batch_size, -1).index_copy(0, rows, log_probs)
                step_logits.append(torch.where(finished.unsqueeze(-1), ended, logits))
            if not do_sample:
                # max() gives the first maximal index, as argmax() does, at a fraction of argmax's CPU time.
                best, choice = scores.max(-1)
                chosen = best if logits_processor is None else log_probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
                if output_scores:
                    step_scores.append(ended.expand(batch_size, -1).index_copy(0, rows, scores))
        if not do_sample:
            generated[rows, step] = choice
            if on_tokens is not None:
                on_tokens(choice)
            if chosen is not None:
                total.index_add_(0, rows, chosen)
            if logits_processor is not None:
                ranking.index_add_(0, rows, best)
            lengths[rows] += 1
            done = choice == eos_token_id
            stop = _stops(stopping_fn, generated[rows, : step + 1])
            if stop is not None:
                done = done | stop
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                rows, choice = rows[keep], choice[keep]
                state = tuple(s.index_select(0, keep) for s in state)
                if forced is not None:
                    forced = forced.index_select(0, keep)
            tokens = choice
            if _past(deadline):
                break
            continue
        processed = scores
        if logits_warper is not None:
            scores = logits_warper(generated[:, :step], scores.clone())
        if output_scores:
            step_scores.append(torch.where(finished.unsqueeze(-1), ended, scores))
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        chosen = log_probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        choice = choice.masked_fill(finished, pad_token_id)
        total = total + chosen.masked_fill(finished, 0.0)
        if logits_processor is not None:
            ranking = ranking + processed.gather(-1, choice.unsqueeze(-1)).squeeze(-1).masked_fill(finished, 0.0)
        else:
            ranking = total
        lengths = lengths + (~finished).long()
        generated[:, step] = choice
        if on_tokens is not None:
            on_tokens(choice)
        finished = finished | (choice == eos_token_id)
        stop = _stops(stopping_fn, generated[:, : step + 1])
        if stop is not None:
            finished = finished | stop
        tokens = choice
        if bool(finished.all()) or _past(deadline):
            break
    generated = generated[:, :steps]
    return SearchResult(
        generated.unsqueeze(1),
        ranking.unsqueeze(1),
        total.unsqueeze(1),
        lengths.unsqueeze(1),
        tuple(step_scores) if output_scores else None,
        step_logits=tuple(step_logits) if output_logits else None,
    )


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
    logits_processor: LogitsProcessorFn | None = None,
    output_scores: bool = False,
    suppress_tokens: torch.Tensor | None = None,
    top_k_step_fn: TopKStepFn | None = None,
    output_logits: bool = False,
    max_time: float | None = None,
    stopping_fn: StoppingFn | None = None,
) -> SearchResult:
    """Beam search vectorised over batch x beam.

    `state` holds `batch_size` rows: the first step runs on them (every hypothesis of a row starts alike), and its
    results and state are repeated for the row's `num_beams` hypotheses. Finished hypotheses
    stay in the beam (extended by padding at no cost) and compete with open ones on their summed
    (processed) log-probability; at the end hypotheses are ranked by `sum log p / length ** length_penalty`
    (`length_penalty=0` ranks by the plain sum). With `num_beams=1` this is greedy decoding; with a beam
    at least as wide as the number of partial hypotheses it is exact search.

    Each step takes the `num_beams` best tokens of every hypothesis first (only those can enter the next
    beam), so the selection works on `(B, k * k)` candidates instead of `(B, k * V)`; rows whose hypotheses
    have all finished leave the batch. Both leave the search's result unchanged. Where it can, the step runs on
    `top_k_step_fn`, which gives those best tokens directly (see the module docstring).
    """
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
    device = state[0].device
    deadline = _deadline(max_time)
    k = num_beams
    state = tuple(state)  # `batch_size` rows until the first step has run
    forced = None if forced_tokens is None else forced_tokens.repeat_interleave(k, dim=0)
    processed = logits_processor is not None
    # Results of every row, filled in as rows finish.
    out_sequences = torch.full((batch_size, k, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_scores = torch.empty((batch_size, k), device=device)
    out_raw = torch.empty((batch_size, k), device=device) if processed else out_scores
    out_lengths = torch.zeros((batch_size, k), dtype=torch.long, device=device)
    out_origins = torch.full((batch_size, k, max_new_tokens), -1, dtype=torch.long, device=device)
    # The rows still searching, and their hypotheses.
    active = torch.arange(batch_size, device=device)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    raw = scores.clone() if processed else None  # the model's own sums, when processors change the scores
    sequences = torch.empty((batch_size, k, 0), dtype=torch.long, device=device)
    # the rows of step_scores (output_scores) and step_logits (output_logits) each hypothesis came from
    origins = torch.empty((batch_size, k, 0), dtype=torch.long, device=device)
    finished = torch.zeros((batch_size, k), dtype=torch.bool, device=device)
    lengths = torch.zeros((batch_size, k), dtype=torch.long, device=device)
    tokens = torch.full((batch_size,), bos_token_id, dtype=torch.long, device=device)
    step_scores: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    steps = 0
    track = output_scores or output_logits  # the rows of the per-step outputs each hypothesis came from
    fast = top_k_step_fn is not None and not processed and forced_tokens is None and not track
    for step in range(max_new_tokens):
        steps = step + 1
        n = active.numel()
        pinned = is_pinned = None
        if fast:
            banned = _banned_ids(suppress_tokens, step, min_new_tokens, eos_token_id, device)
            if step == 0:
                top_scores, top_tokens, state = top_k_step_fn(tokens, state, k, banned)
                top_scores, top_tokens = top_scores.repeat_interleave(k, dim=0), top_tokens.repeat_interleave(k, dim=0)
            else:
                top_scores, top_tokens, state = _open_hypotheses_step(top_k_step_fn, tokens, state, k, banned, finished)
        else:
            log_probs, state = step_fn(tokens, state)
            log_probs = log_probs.float()
            if step == 0:
                log_probs = log_probs.repeat_interleave(k, dim=0)
            step_log_probs = log_probs
            if processed:
                step_log_probs = logits_processor(sequences.reshape(n * k, step), log_probs.clone())
            step_log_probs = _suppress(step_log_probs, suppress_tokens)
            if step < min_new_tokens:
                eos = torch.tensor([eos_token_id], device=device)
                step_log_probs = step_log_probs.index_fill(-1, eos, float("-inf"))
            # The best min(k, V) tokens of each hypothesis: the next beam is drawn from these.
            top_scores, top_tokens = step_log_probs.topk(min(k, step_log_probs.shape[-1]), dim=-1)
        if step == 0:
            state = tuple(s.repeat_interleave(k, dim=0) for s in state)
        if forced is not None and step < forced.shape[1]:
            pinned = forced[:, step]
            is_pinned = (pinned >= 0).unsqueeze(-1)
            if bool(is_pinned.any()):
                only_scores = torch.full_like(top_scores, float("-inf"))
                only_scores[:, 0] = log_probs.gather(-1, pinned.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                only_tokens = top_tokens.clone()
                only_tokens[:, 0] = pinned.clamp(min=0)
                top_scores = torch.where(is_pinned, only_scores, top_scores)
                top_tokens = torch.where(is_pinned, only_tokens, top_tokens)
            else:
                pinned = None
        # Finished hypotheses continue with padding at no cost.
        done = finished.view(-1, 1)
        if output_scores:
            step_scores.append(
                _beam_step_scores(
                    step_log_probs, log_probs, done, pinned, is_pinned, active, k, batch_size, pad_token_id
                )
            )
        if output_logits:
            step_logits.append(
                _beam_step_scores(log_probs, log_probs, done, None, None, active, k, batch_size, pad_token_id)
            )
        top_scores = torch.where(done, _finished_candidates(top_scores), top_scores)
        top_tokens = top_tokens.masked_fill(done, pad_token_id)
        width = top_scores.shape[-1]
        candidates = (scores.unsqueeze(-1) + top_scores.view(n, k, width)).view(n, -1)
        scores, flat = candidates.topk(k, dim=-1)
        beam = torch.div(flat, width, rounding_mode="floor")
        tokens_bk = top_tokens.view(n, k * width).gather(1, flat)
        if processed:
            top_raw = log_probs.gather(-1, top_tokens).masked_fill(done, 0.0)
            raw = (raw.unsqueeze(-1) + top_raw.view(n, k, width)).view(n, -1).gather(1, flat)
        was_finished = finished.gather(1, beam)
        sequences = torch.cat(
            [sequences.gather(1, beam.unsqueeze(-1).expand_as(sequences)), tokens_bk.unsqueeze(-1)], -1
        )
        if track:
            origin = active.unsqueeze(-1) * k + beam  # a finished hypothesis' row holds <pad> at no cost
            origins = torch.cat([origins.gather(1, beam.unsqueeze(-1).expand_as(origins)), origin.unsqueeze(-1)], -1)
        lengths = lengths.gather(1, beam) + (~was_finished).long()
        finished = was_finished | (tokens_bk == eos_token_id)
        stop = _stops(stopping_fn, sequences.reshape(n * k, -1))
        if stop is not None:
            finished = finished | stop.view(n, k)
        source = (torch.arange(n, device=device).unsqueeze(-1) * k + beam).view(-1)
        row_done = finished.all(-1)
        if bool(row_done.any()):
            out_sequences[active[row_done], :, :steps] = sequences[row_done]
            out_scores[active[row_done]] = scores[row_done]
            if processed:
                out_raw[active[row_done]] = raw[row_done]
            out_lengths[active[row_done]] = lengths[row_done]
            if track:
                out_origins[active[row_done], :, :steps] = origins[row_done]
            keep = (~row_done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                active = active[:0]
                break
            active, scores, sequences = active[keep], scores[keep], sequences[keep]
            lengths, finished, tokens_bk = lengths[keep], finished[keep], tokens_bk[keep]
            if processed:
                raw = raw[keep]
            if track:
                origins = origins[keep]
            source = source.view(n, k)[keep].view(-1)
        state = tuple(s.index_select(0, source) for s in state)
        if forced is not None:
            forced = forced.index_select(0, source)
        tokens = tokens_bk.reshape(-1)
        if _past(deadline):
            break
    if active.numel():  # the length limit or max_time: the rows still open end here
        out_sequences[active, :, :steps] = sequences
        out_scores[active] = scores
        if processed:
            out_raw[active] = raw
        out_lengths[active] = lengths
        if track:
            out_origins[active, :, :steps] = origins
    out_sequences = out_sequences[:, :, :steps]
    if length_penalty:
        ranking = out_scores / out_lengths.clamp(min=1).float().pow(length_penalty)
    else:
        ranking = out_scores
    ranking, order = ranking.sort(dim=-1, descending=True)
    order = order[:, :num_return_sequences]
    pick = order.unsqueeze(-1).expand(-1, -1, out_sequences.shape[-1])
    return SearchResult(
        out_sequences.gather(1, pick),
        ranking[:, :num_return_sequences],
        out_raw.gather(1, order),
        out_lengths.gather(1, order),
        tuple(step_scores) if output_scores else None,
        out_origins[:, :, :steps].gather(1, pick) if track else None,
        tuple(step_logits) if output_logits else None,
    )


def _open_hypotheses_step(
    top_k_step_fn: TopKStepFn,
    tokens: torch.Tensor,
    state: State,
    k: int,
    banned: torch.Tensor | None,
    finished: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, State]:
    """`top_k_step_fn` on the hypotheses that have not finished only (a finished one continues with padding, whatever
    the model says): `(N, k')` scores and tokens for all `N` rows (anything on finished rows) and the new state (a
    finished row's state carried along unchanged)."""
    open_rows = (~finished.view(-1)).nonzero().squeeze(-1)
    if open_rows.numel() == tokens.numel():
        return top_k_step_fn(tokens, state, k, banned)
    open_scores, open_tokens, open_state = top_k_step_fn(
        tokens.index_select(0, open_rows), tuple(s.index_select(0, open_rows) for s in state), k, banned
    )
    width = open_scores.shape[-1]
    scores = open_scores.new_zeros(tokens.numel(), width).index_copy_(0, open_rows, open_scores)
    top_tokens = open_tokens.new_zeros(tokens.numel(), width).index_copy_(0, open_rows, open_tokens)
    state = tuple(s.index_copy(0, open_rows, new) for s, new in zip(state, open_state))
    return scores, top_tokens, state


def _beam_step_scores(
    step_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    done: torch.Tensor,
    pinned: torch.Tensor | None,
    is_pinned: torch.Tensor | None,
    active: torch.Tensor,
    num_beams: int,
    batch_size: int,
    pad_token_id: int,
) -> torch.Tensor:
    """The `(batch_size * num_beams, V)` scores a beam-search step chose from, for `output_scores`: the processed
    log-probabilities of the open hypotheses (a pinned token alone, at the model's log-probability, where tokens are
    forced), the ended-row pattern for finished hypotheses and for rows that have left the search."""
    vocab = step_log_probs.shape[-1]
    ended = _ended_row(vocab, pad_token_id, step_log_probs.device)
    scores = step_log_probs
    if pinned is not None:
        only = torch.full_like(scores, float("-inf"))
        index = pinned.clamp(min=0).unsqueeze(-1)
        only.scatter_(-1, index, log_probs.gather(-1, index))
        scores = torch.where(is_pinned, only, scores)
    scores = torch.where(done, ended, scores)
    full = ended.expand(batch_size, num_beams, vocab).clone()
    full[active] = scores.view(-1, num_beams, vocab)
    return full.view(batch_size * num_beams, vocab)


def _finished_candidates(like: torch.Tensor) -> torch.Tensor:
    """Candidate scores of a finished hypothesis: padding (the first candidate) at no cost, nothing else."""
    row = torch.full((like.shape[-1],), float("-inf"), dtype=like.dtype, device=like.device)
    row[0] = 0.0
    return row


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
