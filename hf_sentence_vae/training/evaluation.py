"""The validation bound during training: the single-sample bound of `metrics` over a tokenized corpus, split
across processes and reproducible (each batch draws its posterior sample from a generator seeded by its index).

The figures are `metrics.bound_summary`'s; the run's logs name them after the training loss they are compared with:
`{split}_loss` is the bound (`nll_bound`), `{split}_reconstruction` and `{split}_kl` its terms, `{split}_ppl` its
perplexity per predicted token (`ppl_bound`). `--metric_for_best_model` selects on `loss` or `reconstruction`. On
request, `{split}_mi`: the mutual information between x and z, the batch-mixture estimate of each evaluation batch
(`metrics.mutual_information`) averaged over sentences, which aggressive training watches (He et al., 2019).
"""

from __future__ import annotations

import torch

from ..data import TokenizedCorpus, bucketed_batches
from ..metrics import bound_summary
from ..metrics import mutual_information as batch_mutual_information
from ..modeling_sentence_vae import SentenceVAEModel

# Log name -> `metrics.bound_summary` key.
LOG_NAMES = {"loss": "nll_bound", "reconstruction": "reconstruction", "kl": "kl", "ppl": "ppl_bound"}


@torch.no_grad()
def evaluate_bound(
    model: SentenceVAEModel,
    corpus: TokenizedCorpus,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    mutual_information: bool = False,
) -> torch.Tensor:
    """The sums of the single-sample bound's terms over a corpus, `(reconstruction, KL, predicted tokens,
    sentences)` in float64 (each batch's terms summed in the model's dtype), and with `mutual_information` a fifth:
    each batch's mutual-information estimate times its size (0 for the RNNLM). Process `rank` of `world_size`
    evaluates every `world_size`-th batch (in length order) and returns its own sums: add them across processes,
    then [`bound_metrics`]."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5 if mutual_information else 4, dtype=torch.float64)
    batches = bucketed_batches(corpus.lengths, batch_size, shuffle=False)
    for index in range(rank, len(batches), world_size):
        batch = {k: v.to(device) for k, v in corpus.batch(batches[index]).items()}
        generator = torch.Generator(device=device).manual_seed(seed + index)
        out = model(**batch, return_logits=False, generator=generator, sample_latent=True, return_dict=True)
        terms = [
            float(out.reconstruction_per_sentence.sum()),
            float(out.kl_per_sentence.sum()),
            float(out.num_tokens),
            len(batches[index]),
        ]
        if mutual_information:
            mi = 0.0 if out.mu is None else float(batch_mutual_information(out.mu, out.logvar, generator=generator))
            terms.append(mi * len(batches[index]))
        sums += torch.tensor(terms, dtype=torch.float64)
    model.train(was_training)
    return sums


def bound_metrics(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    """`{prefix}_loss`, `{prefix}_reconstruction`, `{prefix}_kl` (nats per sentence) and `{prefix}_ppl` from the
    summed terms of [`evaluate_bound`] (and `{prefix}_mi` when they hold the mutual information)."""
    reconstruction, kl, tokens, sentences = (float(x) for x in sums[:4])
    summary = bound_summary(reconstruction, kl, max(int(sentences), 1), max(int(tokens), 1))
    metrics = {f"{prefix}_{name}": summary[key] for name, key in LOG_NAMES.items()}
    if len(sums) > 4:
        metrics[f"{prefix}_mi"] = float(sums[4]) / max(sentences, 1.0)
    return metrics


__all__ = ["LOG_NAMES", "bound_metrics", "evaluate_bound"]
