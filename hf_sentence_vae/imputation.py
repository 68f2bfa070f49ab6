"""Imputing missing words (the paper's Section 5): constrained beam search and approximate iterated
conditional modes (ICM), batched over sentences.

Sentences are `<bos> w_1 ... w_n <eos>` id tensors in reading order (as the tokenizer produces them) with an
`unknown_mask` marking the word positions to fill. The known words and the sentence length are kept: the
search pins every known word and the end of sentence, forbids the end of sentence at unknown positions, and
leaves the unknown positions free. The search runs in the decoder's order, so for a right-to-left model the
missing end of a sentence is decoded first (conditioned on z only for the VAE, on nothing for the RNNLM) and
the known words follow; the scores are those of whole sentences.

- RNNLM (`latent_size=0`): one constrained beam search (beam 15 by default) maximising log p(x).
- VAE: approximate ICM (3 steps of a beam-5 search by default): initialise the unknown words to `<unk>`,
  then alternate z = the mode (mean) of q(z|x) and a constrained beam search for argmax_x log p(x|z).

The score the ICM maximises is `S(x) = log p(x | z = mean of q(z|x))`. The alternation is not guaranteed to
increase S (the z step uses the recognition model's mode, not argmax_z of the joint, and beam search is
approximate), so the best assignment seen so far is kept: the returned `step_scores` never decrease, and
the returned sentences are the best ones found (the raw per-step scores are returned too).

Only `torch` and `numpy` are imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import TokenizedCorpus, iter_kept_sentences, load_sentences  # noqa: F401  (re-exported: their home was here)
from .decoding import beam_search, reverse_tokens

DEFAULT_RNNLM_BEAMS = 15
DEFAULT_VAE_BEAMS = 5
DEFAULT_ICM_STEPS = 3


@dataclass
class ImputationOutput:
    """Result of [`impute`].

    Args:
        input_ids: `(B, T)` completed sentences in reading order (`<bos> ... <eos>`, right-padded), the known
            words unchanged.
        scores: `(B,)` the model score of each completed sentence: log p(x) for the RNNLM, the ICM score
            log p(x | mean of q(z|x)) for the VAE.
        step_scores: `(B, S)` the score of the returned (best so far) assignment after each step; never
            decreasing along a row (`S = 1` for the RNNLM).
        raw_step_scores: `(B, S)` the score of the assignment each step produced.
        latent: `(B, Z)` the posterior mean of the returned sentences (None for the RNNLM).
    """

    input_ids: torch.Tensor
    scores: torch.Tensor
    step_scores: torch.Tensor
    raw_step_scores: torch.Tensor
    latent: torch.Tensor | None = None


def suffix_unknown_mask(attention_mask: torch.Tensor, fraction: float = 0.2, min_missing: int = 1) -> torch.Tensor:
    """`(B, T)` bool mask of the final `fraction` of each sentence's words (the paper imputes the final 20%).

    A sentence of `n` words loses `round(fraction * n)` words (halves round up), at least `min_missing` and at
    most `n`. `attention_mask` covers `<bos> w_1 ... w_n <eos>`.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    lengths = attention_mask.long().sum(-1) - 2
    missing = torch.floor(lengths.double() * fraction + 0.5).long()
    missing = torch.minimum(missing.clamp(min=min_missing), lengths)
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device).unsqueeze(0)
    first = (lengths - missing + 1).unsqueeze(-1)
    return (positions >= first) & (positions <= lengths.unsqueeze(-1))


def _check(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, unknown_mask: torch.Tensor):
    if attention_mask is None:
        attention_mask = input_ids.ne(model.config.pad_token_id)
    attention_mask = model.check_inputs(input_ids, attention_mask)
    unknown_mask = unknown_mask.to(input_ids.device).bool()
    if unknown_mask.shape != input_ids.shape:
        raise ValueError(
            f"unknown_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(unknown_mask.shape)}"
        )
    lengths = attention_mask.sum(-1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    is_word = (positions >= 1) & (positions < (lengths - 1).unsqueeze(-1))
    if bool((unknown_mask & ~is_word).any()):
        raise ValueError("unknown_mask may only mark word positions (not <bos>, <eos> or padding)")
    return attention_mask, unknown_mask


def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    unknown_mask: torch.Tensor,
    latent: torch.Tensor | None = None,
    num_beams: int = DEFAULT_VAE_BEAMS,
    allow_unk: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax over the unknown words of log p(x | z) (log p(x) for the RNNLM, `latent=None`), by beam search.

    Known words, the sentence length and the end of sentence are pinned; at unknown positions the end of
    sentence (and `<unk>` unless `allow_unk`) is forbidden. The search runs in the decoder's order (right to
    left for `config.right_to_left` models).

    Returns `(ids, log_probs)`: `(B, T)` completed sentences in reading order and `(B,)` their log p(x | z)
    (the sum of every token's log-probability, end of sentence included: whole-sentence scores).
    """
    cfg = model.config
    attention_mask, unknown_mask = _check(model, input_ids, attention_mask, unknown_mask)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if (latent is None) != cfg.is_rnnlm:
        raise ValueError("pass latent codes for a VAE and latent=None for an RNNLM")
    batch_size, total = input_ids.shape
    lengths = attention_mask.long().sum(-1)
    ordered = model.to_decoder_order(input_ids, attention_mask)
    free = unknown_mask
    if cfg.right_to_left:
        free = reverse_tokens(unknown_mask.long(), lengths - 2, offset=1).bool()
    # Step t of the search generates position t + 1 of the decoder-order sequence.
    targets, free = ordered[:, 1:], free[:, 1:]
    valid = attention_mask[:, 1:]
    forced = targets.masked_fill(free | ~valid, -1)
    banned = [cfg.eos_token_id] + ([] if allow_unk else [cfg.unk_token_id])

    device = input_ids.device
    rows = torch.arange(batch_size, device=device)
    state = (*model.initial_decoder_state(latent, batch_size), rows)
    banned_ids = torch.tensor(banned, device=device)
    step_counter = [0]

    def step_fn(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        *inner, row = state
        log_probs, inner = model.decoder_step(tokens, tuple(inner))
        t = step_counter[0]
        step_counter[0] += 1
        if t < free.shape[1]:
            ban = free[row, t]  # this hypothesis' sentence has an unknown word at step t
            if bool(ban.any()):
                penalty = torch.zeros_like(log_probs[:1]).index_fill(-1, banned_ids, float("-inf"))
                log_probs = torch.where(ban.unsqueeze(-1), log_probs + penalty, log_probs)
        return log_probs, (*inner, row)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = beam_search(
                step_fn,
                state,
                batch_size,
                num_beams,
                bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id,
                pad_token_id=cfg.pad_token_id,
                max_new_tokens=total - 1,
                length_penalty=0.0,
                num_return_sequences=1,
                forced_tokens=forced,
            )
    finally:
        model.train(was_training)
    generated = result.sequences[:, 0]
    out = torch.full_like(input_ids, cfg.pad_token_id)
    out[:, 0] = cfg.bos_token_id
    width = min(generated.shape[1], total - 1)
    out[:, 1 : 1 + width] = generated[:, :width]
    out = out.masked_fill(~attention_mask, cfg.pad_token_id)
    if cfg.right_to_left:
        out = reverse_tokens(out, lengths - 2, offset=1)
    return out, result.log_probs[:, 0]


def icm_score(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The score approximate ICM maximises, `(B,)`: log p(x | z) at z = the mean of q(z|x) for a VAE,
    log p(x) for an RNNLM."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if attention_mask is None:
                attention_mask = input_ids.ne(model.config.pad_token_id)
            latent = None
            if not model.config.is_rnnlm:
                latent, _ = model.encode(input_ids, attention_mask)
            return model.log_likelihood_given_latent(input_ids, attention_mask, latent).float()
    finally:
        model.train(was_training)


def impute(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    unknown_mask: torch.Tensor,
    num_beams: int | None = None,
    num_steps: int | None = None,
    allow_unk: bool = True,
) -> ImputationOutput:
    """Fill the unknown words of a batch of sentences.

    RNNLM: one constrained beam search (`num_beams`, default 15). VAE: approximate ICM with `num_steps`
    (default 3) constrained searches of `num_beams` (default 5): unknown words start as `<unk>`; each step sets
    z to the posterior mean of the current sentences and re-decodes the unknown words given z. The best
    assignment so far (by [`icm_score`]) is returned.
    """
    cfg = model.config
    attention_mask, unknown_mask = _check(model, input_ids, attention_mask, unknown_mask)
    if cfg.is_rnnlm:
        ids, log_probs = constrained_beam_search(
            model,
            input_ids,
            attention_mask,
            unknown_mask,
            None,
            num_beams=DEFAULT_RNNLM_BEAMS if num_beams is None else num_beams,
            allow_unk=allow_unk,
        )
        scores = log_probs.float()
        return ImputationOutput(ids, scores, scores.unsqueeze(-1), scores.unsqueeze(-1), None)

    num_beams = DEFAULT_VAE_BEAMS if num_beams is None else num_beams
    num_steps = DEFAULT_ICM_STEPS if num_steps is None else num_steps
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    current = input_ids.masked_fill(unknown_mask, cfg.unk_token_id)
    best_ids = best_scores = best_latent = None
    step_scores, raw_scores = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            latent, _ = model.encode(current, attention_mask)
            for _ in range(num_steps):
                candidate, _ = constrained_beam_search(
                    model, current, attention_mask, unknown_mask, latent, num_beams=num_beams, allow_unk=allow_unk
                )
                new_latent, _ = model.encode(candidate, attention_mask)
                scores = model.log_likelihood_given_latent(candidate, attention_mask, new_latent).float()
                if best_ids is None:
                    best_ids, best_scores, best_latent = candidate, scores, new_latent
                else:
                    better = scores > best_scores
                    best_ids = torch.where(better.unsqueeze(-1), candidate, best_ids)
                    best_latent = torch.where(better.unsqueeze(-1), new_latent, best_latent)
                    best_scores = torch.where(better, scores, best_scores)
                step_scores.append(best_scores)
                raw_scores.append(scores)
                if torch.equal(candidate, current):  # a fixed point: later steps would repeat this one
                    break
                current, latent = candidate, new_latent
    finally:
        model.train(was_training)
    while len(step_scores) < num_steps:
        step_scores.append(step_scores[-1])
        raw_scores.append(raw_scores[-1])
    return ImputationOutput(
        best_ids, best_scores, torch.stack(step_scores, -1), torch.stack(raw_scores, -1), best_latent
    )


# --------------------------------------------------------------------------------------------- text level
def _word_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """The word tokens of one encoded sentence (`<unk>` kept; `<pad>`, `<bos>`, `<eos>` dropped)."""
    skip = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return [tok for i, tok in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))) if i not in skip]


def impute_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    fraction: float = 0.2,
    batch_size: int = 64,
    num_beams: int | None = None,
    num_steps: int | None = None,
    allow_unk: bool = True,
    progress: bool = False,
) -> list[dict[str, object]]:
    """Impute the final `fraction` of the words of each text (the paper's setting: 20%), batched by length.

    Returns one dict per text, in input order: `original` (the sentence as the tokenizer sees it, `<unk>`
    for unknown words), `imputed` (the completed sentence), `prefix` (the known words), `true_suffix`,
    `imputed_suffix`, `num_missing` and `score` (see [`ImputationOutput.scores`]).
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    corpus, _ = TokenizedCorpus.from_sentences(tokenizer, list(texts))
    too_short = np.flatnonzero(corpus.lengths < 3).tolist()
    if too_short:
        raise ValueError(f"texts {too_short[:5]} have no words to impute")
    results: list[dict[str, object] | None] = [None] * len(texts)
    batches = corpus.sorted_batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(texts) // batch_size), desc="impute", unit="batch")
    for positions, batch in batches:
        input_ids, attention_mask = batch["input_ids"].to(model.device), batch["attention_mask"].bool().to(model.device)
        unknown = suffix_unknown_mask(attention_mask, fraction)
        out = impute(model, input_ids, attention_mask, unknown, num_beams, num_steps, allow_unk)
        num_words = attention_mask.sum(-1) - 2
        num_missing = unknown.sum(-1)
        for row, i in enumerate(positions.tolist()):
            n_words, n_missing = int(num_words[row]), int(num_missing[row])
            true_words = _word_tokens(tokenizer, input_ids[row].tolist())
            new_words = _word_tokens(tokenizer, out.input_ids[row].tolist())
            keep = n_words - n_missing
            results[i] = {
                "original": " ".join(true_words),
                "imputed": " ".join(new_words),
                "prefix": " ".join(true_words[:keep]),
                "true_suffix": " ".join(true_words[keep:]),
                "imputed_suffix": " ".join(new_words[keep:]),
                "num_missing": n_missing,
                "score": float(out.scores[row]),
            }
    return results  # type: ignore[return-value]


def missing_count(num_words: int, fraction: float = 0.2, min_missing: int = 1) -> int:
    """How many final words [`suffix_unknown_mask`] marks unknown in a sentence of `num_words` words."""
    return min(max(int(math.floor(num_words * fraction + 0.5)), min_missing), num_words)


__all__ = [
    "ImputationOutput",
    "constrained_beam_search",
    "icm_score",
    "impute",
    "impute_texts",
    "iter_kept_sentences",
    "load_sentences",
    "missing_count",
    "suffix_unknown_mask",
    "DEFAULT_RNNLM_BEAMS",
    "DEFAULT_VAE_BEAMS",
    "DEFAULT_ICM_STEPS",
]
