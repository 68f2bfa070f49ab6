"""Evaluation of sentence VAEs: the bound, importance-weighted NLL, perplexity, KL, mutual information, active units.

Conventions. A sentence `<bos> w_1 ... w_n <eos>` has `n + 1` *predicted tokens* (the words and the end of
sentence) and `n` *words*. Every NLL here is in nats per sentence, summed over the predicted tokens.
Perplexity is `exp(total NLL / total count)` over a whole dataset, reported both per predicted token
(`ppl_*`, end of sentence included, the usual language-modelling convention) and per word (`ppl_*_words`,
end of sentence excluded from the count but not from the NLL; this is what the paper's Table 2 implies).

Estimators (for a VAE with latent size Z > 0):

- bound: the negative ELBO `-log p(x|z) + KL(q(z|x) || p(z))` with one `z ~ q(z|x)` and the KL in closed
  form (the training objective at kl_weight 1); an upper bound on `-log p(x)` in expectation.
- importance-weighted (Burda et al., 2016): `log p(x) ~= logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)]`
  with `z_k ~ q(z|x)`; k=500 by default. Its negation is an upper bound on `-log p(x)` in expectation that
  tightens as k grows, and with k=1 it is the single-sample bound with a Monte-Carlo KL.
- exact: for the RNNLM (`latent_size=0`) `log p(x)` is computed exactly.

Posterior diagnostics:

- mutual information I(x; z) under q, with the estimator of He et al. (2019, "Lagging inference networks",
  `calc_mi`): `E_x E_q(z|x) log q(z|x) - E_z log q(z)`, q(z) the aggregate posterior over an evaluation
  batch. It is computed per batch and averaged weighted by batch size, as He et al. do; it is at most
  `log(batch size)` and depends on how batches are formed (He et al. also bucket sentences by length).
- active units (Burda et al., 2016): dimension d is active when `Var_x(E_q[z_d | x]) > 0.01` over the whole
  dataset (unbiased variance, accumulated in float64 with Chan et al.'s parallel update).

`evaluate_model` streams a dataset in batches and returns every field of `RESULT_FIELDS` (read and batch a text
file with `data.read_sentences` and `data.length_sorted_batches`, or stream one with `streaming.evaluate_file`).
`ELBOMetric` and `PerplexityMetric` are `evaluate.Metric` wrappers (they work offline); `evaluate` is imported only
when one of them is first accessed, since importing it takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.utils import logging

from .data import length_sorted_batches, read_sentences  # noqa: F401  (re-exported: their home was here)
from .latent import LOG_2PI, gaussian_log_density, reparameterize

logger = logging.get_logger(__name__)

DEFAULT_IW_SAMPLES = 500
DEFAULT_MAX_TOKENS_PER_CHUNK = 8192
ACTIVE_UNIT_THRESHOLD = 0.01
# Bound on the (z rows x sentences x latent dims) intermediate of the mutual-information estimator.
_MI_MAX_ELEMENTS = 1 << 22

RESULT_FIELDS = (
    "num_sentences",
    "num_tokens",
    "num_words",
    "latent_size",
    "iw_samples",
    "reconstruction",
    "kl",
    "elbo",
    "nll_bound",
    "reconstruction_per_token",
    "kl_per_token",
    "nll_bound_per_token",
    "nll_bound_per_word",
    "ppl_bound",
    "ppl_bound_words",
    "nll_iw",
    "nll_iw_per_token",
    "nll_iw_per_word",
    "ppl_iw",
    "ppl_iw_words",
    "nll_exact",
    "nll_exact_per_token",
    "nll_exact_per_word",
    "ppl_exact",
    "ppl_exact_words",
    "nll_estimator",
    "nll",
    "nll_per_token",
    "nll_per_word",
    "ppl",
    "ppl_words",
    "mutual_information",
    "active_units",
    "active_unit_threshold",
    "active_unit_variances",
)
"""The keys of the dictionary returned by [`evaluate_model`], in order. Fields that do not apply to a model
(importance-weighted ones for the RNNLM, exact ones for a VAE) are None."""


# --------------------------------------------------------------------------------------------- small helpers
def predicted_token_counts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Predicted tokens per sentence `(B,)` (words + end of sentence) from a `<bos> ... <eos>` attention mask."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be a (batch, length) tensor, got shape {tuple(attention_mask.shape)}")
    return attention_mask.long().sum(-1) - 1


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """`log(mean(exp(values)))` along `dim`, computed stably as `logsumexp - log n`."""
    count = values.shape[dim]
    if count == 0:
        raise ValueError(f"log_mean_exp needs at least one value along dim {dim}, got shape {tuple(values.shape)}")
    return torch.logsumexp(values, dim=dim) - math.log(count)


def perplexity(total_nll: float, total_count: int) -> float:
    """`exp(total_nll / total_count)`; `inf` when that overflows. `total_count` must be positive."""
    if total_count <= 0:
        raise ValueError(f"perplexity needs a positive token count, got total_count={total_count}")
    try:
        return math.exp(total_nll / total_count)
    except OverflowError:
        return float("inf")


def nll_summary(total_nll: float, num_sentences: int, num_tokens: int, prefix: str) -> dict[str, float | None]:
    """Per-sentence, per-token and per-word NLL and both perplexities of a dataset-level total NLL.

    Keys: `{prefix}`, `{prefix}_per_token`, `{prefix}_per_word`, and `ppl{suffix}`, `ppl{suffix}_words` where
    `suffix` is `prefix` without its leading `nll` (so `prefix="nll_iw"` gives `ppl_iw`, `ppl_iw_words`).
    `num_tokens` counts predicted tokens (words + one end of sentence per sentence). Per-word values are None
    when the dataset has no words.
    """
    if num_sentences <= 0:
        raise ValueError(f"nll_summary needs at least one sentence, got num_sentences={num_sentences}")
    if num_tokens < num_sentences:
        raise ValueError(
            f"num_tokens={num_tokens} is smaller than num_sentences={num_sentences}: every sentence predicts at "
            "least its end of sentence"
        )
    if not prefix.startswith("nll"):
        raise ValueError(f"prefix must start with 'nll', got {prefix!r}")
    num_words = num_tokens - num_sentences
    suffix = prefix[len("nll") :]
    return {
        prefix: total_nll / num_sentences,
        f"{prefix}_per_token": total_nll / num_tokens,
        f"{prefix}_per_word": total_nll / num_words if num_words > 0 else None,
        f"ppl{suffix}": perplexity(total_nll, num_tokens),
        f"ppl{suffix}_words": perplexity(total_nll, num_words) if num_words > 0 else None,
    }


def bound_summary(
    total_reconstruction: float, total_kl: float, num_sentences: int, num_tokens: int
) -> dict[str, float | None]:
    """The ELBO and its parts per sentence and per predicted token, and the bound's perplexities.

    Keys: `reconstruction`, `kl`, `elbo` (= -(reconstruction + kl)), `reconstruction_per_token`,
    `kl_per_token`, and `nll_summary(..., prefix="nll_bound")`'s keys.
    """
    summary = nll_summary(total_reconstruction + total_kl, num_sentences, num_tokens, "nll_bound")
    return {
        "reconstruction": total_reconstruction / num_sentences,
        "kl": total_kl / num_sentences,
        "elbo": -summary["nll_bound"],
        "reconstruction_per_token": total_reconstruction / num_tokens,
        "kl_per_token": total_kl / num_tokens,
        **summary,
    }


@contextmanager
def _evaluation_mode(model: torch.nn.Module):
    """Run with the model in eval mode (no dropout, no word dropout) and without autograd; restore afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------- the bound
@dataclass
class BoundTerms:
    """Per-sentence terms of the single-sample bound, each `(B,)` (mu, logvar `(B, Z)`, None for the RNNLM).

    `reconstruction` is `-log p(x|z)` for one `z ~ q(z|x)`, `kl` is `KL(q(z|x) || p(z))` in closed form and
    `nll_bound = reconstruction + kl = -ELBO`. For the RNNLM `kl` is 0 and `nll_bound` is the exact NLL.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    nll_bound: torch.Tensor
    mu: torch.Tensor | None
    logvar: torch.Tensor | None


def elbo_terms(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """The single-sample bound's terms per sentence, in evaluation mode (no dropout, no word dropout).

    Args:
        model: a `SentenceVAEModel`.
        input_ids, attention_mask: `(B, T)` `<bos> ... <eos>` batch as the tokenizer produces it.
        generator: random generator for the posterior sample (reproducible evaluation).
    """
    with _evaluation_mode(model):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generator=generator,
            sample_latent=True,
            return_logits=False,
            return_dict=True,
        )
    reconstruction = out.reconstruction_per_sentence.double()
    kl = out.kl_per_sentence.double()
    return BoundTerms(reconstruction, kl, reconstruction + kl, out.mu, out.logvar)


# --------------------------------------------------------------------------------------------- likelihoods
def exact_log_likelihood(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`log p(x)` per sentence `(B,)` (float64) for an RNNLM (`latent_size=0`), computed exactly."""
    if not model.config.is_rnnlm:
        raise ValueError(
            f"exact_log_likelihood needs an RNNLM (latent_size=0), got latent_size={model.config.latent_size}: "
            "use importance_weighted_log_likelihood for a VAE"
        )
    with _evaluation_mode(model):
        return model.log_likelihood_given_latent(input_ids, attention_mask, None).double()


def _samples_per_chunk(
    num_samples: int, attention_mask: torch.Tensor, samples_per_chunk: int | None, max_tokens_per_chunk: int
) -> int:
    if samples_per_chunk is not None:
        if samples_per_chunk < 1:
            raise ValueError(f"samples_per_chunk must be >= 1, got {samples_per_chunk}")
        return min(samples_per_chunk, num_samples)
    if max_tokens_per_chunk < 1:
        raise ValueError(f"max_tokens_per_chunk must be >= 1, got {max_tokens_per_chunk}")
    batch_tokens = max(1, int(predicted_token_counts(attention_mask).sum()))
    return max(1, min(num_samples, max_tokens_per_chunk // batch_tokens))


def importance_log_weights(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_samples: int = DEFAULT_IW_SAMPLES,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    samples_per_chunk: int | None = None,
    max_tokens_per_chunk: int = DEFAULT_MAX_TOKENS_PER_CHUNK,
) -> torch.Tensor:
    """Log importance weights `log p(x|z_k) + log p(z_k) - log q(z_k|x)` with `z_k ~ q(z|x)`: `(k, B)` float64.

    The k samples are drawn at once (`(k, B, Z)`, cheap) and scored in chunks: a chunk of s samples repeats
    the batch s times and runs the decoder once on the `(s * B, T)` result, so memory stays bounded. The chunk
    size is `samples_per_chunk`, or by default as many samples as fit in `max_tokens_per_chunk` predicted
    tokens (at least one). Chunking does not change the result.

    Args:
        model: a `SentenceVAEModel` with `latent_size > 0` (evaluated in eval mode, without autograd).
        input_ids, attention_mask: `(B, T)` `<bos> ... <eos>` batch.
        num_samples: k, the number of importance samples per sentence.
        posterior: `(mu, logvar)` of q(z|x) if already computed (otherwise the batch is encoded).
        generator: random generator for the samples.
    """
    latent_size = int(model.config.latent_size)
    if model.config.is_rnnlm:
        raise ValueError("importance_log_weights needs a VAE (latent_size > 0): use exact_log_likelihood for an RNNLM")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if attention_mask is None:
        attention_mask = input_ids.ne(model.config.pad_token_id)
    chunk = _samples_per_chunk(num_samples, attention_mask, samples_per_chunk, max_tokens_per_chunk)
    batch_size = input_ids.shape[0]
    with _evaluation_mode(model):
        mu, logvar = model.encode(input_ids, attention_mask) if posterior is None else posterior
        if mu.shape != (batch_size, latent_size) or logvar.shape != mu.shape:
            raise ValueError(
                f"posterior must be (mu, logvar) of shape ({batch_size}, {latent_size}), got "
                f"{tuple(mu.shape)} and {tuple(logvar.shape)}"
            )
        # All k draws at once (k * B * Z numbers, small next to the decoder's activations), so that the
        # estimate does not depend on the chunking: torch's sampler orders numbers differently by tensor size.
        samples = reparameterize(mu, logvar, num_samples=num_samples, generator=generator)  # (k, B, Z)
        log_weights = []
        for z in samples.split(chunk):
            size = z.shape[0]
            log_likelihood = model.log_likelihood_given_latent(
                input_ids.repeat(size, 1), attention_mask.repeat(size, 1), z.reshape(size * batch_size, latent_size)
            ).view(size, batch_size)
            z64 = z.double()
            log_prior = gaussian_log_density(z64)
            log_posterior = gaussian_log_density(z64, mu.double(), logvar.double())
            log_weights.append(log_likelihood.double() + log_prior - log_posterior)
    return torch.cat(log_weights, dim=0)


def importance_weighted_log_likelihood(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_samples: int = DEFAULT_IW_SAMPLES,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    samples_per_chunk: int | None = None,
    max_tokens_per_chunk: int = DEFAULT_MAX_TOKENS_PER_CHUNK,
) -> torch.Tensor:
    """The importance-weighted estimate of `log p(x)` per sentence `(B,)` (float64, Burda et al., 2016):
    `logsumexp_k(log w_k) - log k` over [`importance_log_weights`] (see there for the arguments).

    Its negation is the IW-NLL: an upper bound on `-log p(x)` in expectation, decreasing in expectation as
    `num_samples` grows; with `num_samples=1` it is the single-sample bound with a sampled KL.
    """
    log_weights = importance_log_weights(
        model,
        input_ids,
        attention_mask,
        num_samples=num_samples,
        posterior=posterior,
        generator=generator,
        samples_per_chunk=samples_per_chunk,
        max_tokens_per_chunk=max_tokens_per_chunk,
    )
    return log_mean_exp(log_weights, dim=0)


# --------------------------------------------------------------------------------------------- posterior diagnostics
def mutual_information(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """He et al.'s (2019) estimate of I(x; z) under q over one batch of posteriors (a float64 scalar tensor).

    `E_x[E_q(z|x) log q(z|x)] - E_x E_q(z|x)[log q(z)]`: the first term in closed form (the negative entropy of
    each diagonal Gaussian), the second with one `z ~ q(z|x)` per sentence and the aggregate posterior
    `q(z) = mean_n q(z | x_n)` over the batch (`logsumexp` over the batch minus `log N`).

    Args:
        mu, logvar: `(N, Z)` posterior parameters of N sentences.
        generator: random generator for the samples.
    """
    if mu.dim() != 2 or logvar.shape != mu.shape:
        raise ValueError(
            f"mu and logvar must be (N, Z) tensors of the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    if mu.shape[0] == 0:
        raise ValueError("mutual_information needs at least one posterior, got an empty batch")
    num, latent_size = mu.shape
    z = reparameterize(mu, logvar, generator=generator).double()
    mu, logvar = mu.double(), logvar.double()
    neg_entropy = (-0.5 * latent_size * LOG_2PI - 0.5 * (1.0 + logvar).sum(-1)).mean()
    rows = max(1, _MI_MAX_ELEMENTS // max(1, num * latent_size))
    log_aggregate = torch.cat(
        [
            torch.logsumexp(gaussian_log_density(z_chunk.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0)), dim=1)
            for z_chunk in z.split(rows)
        ]
    ) - math.log(num)
    return neg_entropy - log_aggregate.mean()


class RunningMoments:
    """Streaming per-dimension mean and variance of `(N, D)` batches, in float64.

    Batches are merged with Chan et al.'s parallel update (no sum of squares, so no catastrophic
    cancellation when the variance is small next to the mean). `variance` is the unbiased estimate.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, values: torch.Tensor) -> None:
        """Add a `(N, D)` batch of observations."""
        if values.dim() != 2:
            raise ValueError(f"RunningMoments.update expects an (N, D) tensor, got shape {tuple(values.shape)}")
        if self.mean is not None and values.shape[1] != self.mean.shape[0]:
            raise ValueError(f"RunningMoments holds {self.mean.shape[0]} dimensions, got a batch of {values.shape[1]}")
        batch_count = values.shape[0]
        if batch_count == 0:
            return
        values = values.detach().double()
        batch_mean = values.mean(0)
        batch_m2 = (values - batch_mean).pow(2).sum(0)
        if self.mean is None:
            self.count, self.mean, self._m2 = batch_count, batch_mean, batch_m2
            return
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (batch_count / total)
        self._m2 = self._m2 + batch_m2 + delta.pow(2) * (self.count * batch_count / total)
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-dimension variance `(D,)` (zeros with fewer than two observations)."""
        if self._m2 is None:
            raise ValueError("RunningMoments.variance: no observations were added")
        if self.count < 2:
            return torch.zeros_like(self._m2)
        return self._m2 / (self.count - 1)


def active_units(variances: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """The number of active latent dimensions (Burda et al., 2016): those with `Var_x(E_q[z_d|x]) > threshold`.

    Args:
        variances: `(Z,)` variances over the dataset of the posterior means (e.g. `RunningMoments.variance`
            fed with every batch's `mu`).
        threshold: the activity threshold (0.01 in Burda et al. and He et al.).
    """
    if variances.dim() != 1:
        raise ValueError(f"variances must be a (Z,) tensor, got shape {tuple(variances.shape)}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return int((variances > threshold).sum())


# --------------------------------------------------------------------------------------------- streaming evaluation
def _unpack_batch(batch, device: torch.device, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` on `device` from a mapping or a pair; the mask is inferred from padding
    when absent."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"a batch mapping must hold 'input_ids', got keys {sorted(batch)}")
        input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
    elif isinstance(batch, Sequence) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        input_ids, attention_mask = batch
    else:
        raise ValueError(
            "each batch must be a mapping with 'input_ids' (and 'attention_mask') or an (input_ids, attention_mask) "
            f"pair of tensors, got {type(batch).__name__}"
        )
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(
            f"input_ids must be a tensor (tokenize with return_tensors='pt'), got {type(input_ids).__name__}"
        )
    input_ids = input_ids.to(device)
    if attention_mask is None:
        return input_ids, input_ids.ne(pad_token_id)
    return input_ids, attention_mask.to(device).bool()


def evaluate_model(
    model,
    batches: Iterable,
    iw_samples: int = DEFAULT_IW_SAMPLES,
    generator: torch.Generator | None = None,
    progress: bool = True,
    samples_per_chunk: int | None = None,
    max_tokens_per_chunk: int = DEFAULT_MAX_TOKENS_PER_CHUNK,
    active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
) -> dict:
    """Evaluate a sentence VAE (or RNNLM) over a whole dataset streamed in batches.

    Per batch: one forward pass for the single-sample bound (closed-form KL), then, for a VAE, the mutual
    information of the batch's posteriors, the posterior means into a streaming variance, and `iw_samples`
    importance samples per sentence (chunked as in [`importance_log_weights`]). For the RNNLM the forward
    pass gives the exact NLL. Totals are summed in float64 and divided at the end, so batch sizes and padding
    do not weight the result.

    Args:
        model: a `SentenceVAEModel` (run in eval mode without autograd; its mode is restored afterwards).
        batches: an iterable (a `DataLoader`, a list) of mappings with `input_ids` and `attention_mask` `(B, T)`
            tensors (or `(input_ids, attention_mask)` pairs), `<bos> ... <eos>` as the tokenizer produces them.
        iw_samples: importance samples per sentence for the IW-NLL (0 skips it; ignored for the RNNLM).
        generator: random generator for every sample drawn (reproducible evaluation).
        progress: show a tqdm progress bar over batches.
        samples_per_chunk, max_tokens_per_chunk: the IW chunking (see [`importance_log_weights`]).
        active_unit_threshold: variance above which a latent dimension counts as active.

    Returns a dict with the keys of `RESULT_FIELDS` (JSON-serialisable). `nll`, `ppl`, ... repeat the tightest
    estimate available (`nll_estimator`: `"exact"` for the RNNLM, `"importance_weighted"` for a VAE with
    `iw_samples > 0`, else `"bound"`).
    """
    from tqdm.auto import tqdm

    if not isinstance(iw_samples, int) or iw_samples < 0:
        raise ValueError(f"iw_samples must be a non-negative integer, got {iw_samples!r}")
    latent_size = int(model.config.latent_size)
    is_rnnlm = model.config.is_rnnlm
    use_iw = not is_rnnlm and iw_samples > 0
    device = model.device
    pad_token_id = model.config.pad_token_id

    num_sentences = num_tokens = 0
    total_reconstruction = total_kl = total_iw_nll = total_mi = 0.0
    moments = RunningMoments()
    total = len(batches) if hasattr(batches, "__len__") else None
    with _evaluation_mode(model):
        for batch in tqdm(batches, total=total, desc="evaluating", unit="batch", disable=not progress):
            input_ids, attention_mask = _unpack_batch(batch, device, pad_token_id)
            if input_ids.shape[0] == 0:
                continue
            terms = elbo_terms(model, input_ids, attention_mask, generator=generator)
            num_sentences += input_ids.shape[0]
            num_tokens += int(predicted_token_counts(attention_mask).sum())
            total_reconstruction += float(terms.reconstruction.sum())
            total_kl += float(terms.kl.sum())
            if is_rnnlm:
                continue
            total_mi += float(mutual_information(terms.mu, terms.logvar, generator=generator)) * input_ids.shape[0]
            moments.update(terms.mu)
            if use_iw:
                log_likelihood = importance_weighted_log_likelihood(
                    model,
                    input_ids,
                    attention_mask,
                    num_samples=iw_samples,
                    posterior=(terms.mu, terms.logvar),
                    generator=generator,
                    samples_per_chunk=samples_per_chunk,
                    max_tokens_per_chunk=max_tokens_per_chunk,
                )
                total_iw_nll -= float(log_likelihood.sum())
    if num_sentences == 0:
        raise ValueError("evaluate_model got no sentences: the batches are empty")

    results: dict = dict.fromkeys(RESULT_FIELDS)
    results.update(
        num_sentences=num_sentences,
        num_tokens=num_tokens,
        num_words=num_tokens - num_sentences,
        latent_size=latent_size,
        iw_samples=iw_samples if use_iw else 0,
        active_unit_threshold=active_unit_threshold,
    )
    results.update(bound_summary(total_reconstruction, total_kl, num_sentences, num_tokens))
    if is_rnnlm:
        # No latent: the single forward pass scored log p(x) exactly.
        estimator, best_total = "exact", total_reconstruction
        results.update(nll_summary(best_total, num_sentences, num_tokens, "nll_exact"))
        results.update(mutual_information=0.0, active_units=0, active_unit_variances=[])
    else:
        variances = moments.variance
        results.update(
            mutual_information=total_mi / num_sentences,
            active_units=active_units(variances, active_unit_threshold),
            active_unit_variances=variances.tolist(),
        )
        if use_iw:
            estimator, best_total = "importance_weighted", total_iw_nll
            results.update(nll_summary(best_total, num_sentences, num_tokens, "nll_iw"))
        else:
            estimator, best_total = "bound", total_reconstruction + total_kl
    results["nll_estimator"] = estimator
    results.update(nll_summary(best_total, num_sentences, num_tokens, "nll"))
    return results


# --------------------------------------------------------------------------------------------- evaluate.Metric wrappers
_METRIC_CITATION = """\
@inproceedings{bowman2016generating,
  title={Generating Sentences from a Continuous Space},
  author={Bowman, Samuel R. and Vilnis, Luke and Vinyals, Oriol and Dai, Andrew M. and Jozefowicz, Rafal and Bengio, Samy},
  booktitle={CoNLL},
  year={2016}
}
"""


def _to_lists(*columns) -> list[list[float]]:
    return [[float(v) for v in column] for column in columns]


def _build_metric_classes() -> dict[str, type]:
    import datasets
    import evaluate

    class _OfflineMetric(evaluate.Metric):
        """An `evaluate.Metric` defined in this package (no Hub script, so it works with HF_HUB_OFFLINE=1).
        Kept in memory by default (no cache files) unless run distributed."""

        def __init__(self, *args, keep_in_memory: bool | None = None, **kwargs):
            if keep_in_memory is None:
                keep_in_memory = kwargs.get("num_process", 1) == 1
            super().__init__(*args, keep_in_memory=keep_in_memory, **kwargs)

    class ELBOMetric(_OfflineMetric):
        """The ELBO and its parts over a dataset, from per-sentence reconstruction NLLs, KLs and token counts.

        Inputs: `reconstruction` (`-log p(x|z)`, nats per sentence), `kl` (nats per sentence), `num_tokens`
        (predicted tokens per sentence: words + end of sentence). Returns [`bound_summary`]'s fields plus
        `num_sentences`, `num_tokens`, `num_words`.

        Example: `ELBOMetric().compute(reconstruction=[90.0], kl=[2.0], num_tokens=[21])`.
        """

        def _info(self):
            return evaluate.MetricInfo(
                description="Negative ELBO (reconstruction + KL) of a sentence VAE per sentence, per token and as "
                "perplexity (per token incl. end of sentence, and per word).",
                citation=_METRIC_CITATION,
                inputs_description="reconstruction: -log p(x|z) per sentence; kl: KL(q(z|x)||p(z)) per sentence; "
                "num_tokens: predicted tokens per sentence (words + end of sentence).",
                features=datasets.Features(
                    {
                        "reconstruction": datasets.Value("float64"),
                        "kl": datasets.Value("float64"),
                        "num_tokens": datasets.Value("int64"),
                    }
                ),
            )

        def _compute(self, reconstruction, kl, num_tokens):
            reconstruction, kl, counts = _to_lists(reconstruction, kl, num_tokens)
            total_tokens = int(sum(counts))
            result = {"num_sentences": len(counts), "num_tokens": total_tokens, "num_words": total_tokens - len(counts)}
            result.update(bound_summary(math.fsum(reconstruction), math.fsum(kl), len(counts), total_tokens))
            return result

    class PerplexityMetric(_OfflineMetric):
        """Perplexity of per-sentence NLLs (bound, IW or exact) over a dataset: `exp(sum nll / sum count)`.

        Inputs: `nll` (nats per sentence), `num_tokens` (predicted tokens per sentence: words + end of
        sentence). Returns `nll` (per sentence), `nll_per_token`, `nll_per_word`, `perplexity` (per token, end
        of sentence included) and `perplexity_words` (per word; the paper's Table 2 convention).

        Example: `PerplexityMetric().compute(nll=[92.0], num_tokens=[21])`.
        """

        def _info(self):
            return evaluate.MetricInfo(
                description="Corpus perplexity from per-sentence negative log-likelihoods, per token (end of "
                "sentence included) and per word.",
                citation=_METRIC_CITATION,
                inputs_description="nll: negative log-likelihood per sentence (nats); num_tokens: predicted tokens "
                "per sentence (words + end of sentence).",
                features=datasets.Features({"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
            )

        def _compute(self, nll, num_tokens):
            nll, counts = _to_lists(nll, num_tokens)
            summary = nll_summary(math.fsum(nll), len(counts), int(sum(counts)), "nll")
            return {
                "nll": summary["nll"],
                "nll_per_token": summary["nll_per_token"],
                "nll_per_word": summary["nll_per_word"],
                "perplexity": summary["ppl"],
                "perplexity_words": summary["ppl_words"],
            }

    return {"ELBOMetric": ELBOMetric, "PerplexityMetric": PerplexityMetric}


_LAZY_METRICS = ("ELBOMetric", "PerplexityMetric")


def __getattr__(name: str):
    """Build the `evaluate.Metric` wrappers on first access (importing `evaluate` takes seconds)."""
    if name in _LAZY_METRICS:
        classes = _build_metric_classes()
        for cls in classes.values():
            cls.__module__ = __name__
        globals().update(classes)
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `ELBOMetric` and `PerplexityMetric` are left out of `__all__` so that `import *` does not import `evaluate`.
__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "DEFAULT_IW_SAMPLES",
    "RESULT_FIELDS",
    "BoundTerms",
    "RunningMoments",
    "active_units",
    "bound_summary",
    "elbo_terms",
    "evaluate_model",
    "exact_log_likelihood",
    "importance_log_weights",
    "importance_weighted_log_likelihood",
    "length_sorted_batches",
    "log_mean_exp",
    "mutual_information",
    "nll_summary",
    "perplexity",
    "predicted_token_counts",
    "read_sentences",
]
