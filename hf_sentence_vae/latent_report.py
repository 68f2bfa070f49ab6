"""How much of a sentence its code carries: the latent report of a trained sentence VAE on a test set.

`latent_report(model, tokenizer, sentences)` measures, on one set of sentences:

- rate: KL(q(z|x) || p(z)) per sentence and per latent dimension, the mutual information I(x; z) under q with
  the aggregate posterior taken over the *whole set* (the batch-mixture estimator of He et al. 2019 with one
  batch of all N sentences, so its ceiling is log N), and the active units (Var_x E[z_d|x] > 0.01);
- reconstruction from the posterior mean, greedy and beam search: corpus BLEU against the input (`sacrebleu`,
  `tokenize="none"`, on the tokenizer's view of the input, so out-of-vocabulary words are `<unk>` on both
  sides), the exact-match rate and the fraction of distinct reconstructions;
- homotopies (the paper's Section 6.3) between the posterior means of random pairs of sentences, greedily
  decoded at evenly spaced points: the fraction of distinct sentences on a path and the mean word edit
  distance between neighbouring points;
- optionally a linear probe: TREC question-type accuracy of a logistic regression on posterior means.

Everything is seeded; `render_markdown` turns the report into a page with examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .analysis import decode, ids_to_texts, posterior_means
from .latent import gaussian_kl, interpolate
from .metrics import ACTIVE_UNIT_THRESHOLD, active_units, mutual_information

REPORT_FILE = "latent_report.json"  # in a model folder: the report the model card shows
DEFAULT_HOMOTOPY_PAIRS = 100
DEFAULT_HOMOTOPY_STEPS = 9
DEFAULT_NUM_BEAMS = 5
NUM_EXAMPLES = 8


# --------------------------------------------------------------------------------------------- text metrics
def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two sentences counted in words (insertions, deletions, substitutions)."""
    x, y = a.split(), b.split()
    previous = list(range(len(y) + 1))
    for i, word in enumerate(x, 1):
        current = [i]
        for j, other in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of whitespace-tokenized hypotheses against one reference each (`sacrebleu`,
    `tokenize="none"`)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="none").score)


def reconstruction_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU, exact-match rate and fraction of distinct hypotheses."""
    if not references:
        raise ValueError("reconstruction_scores got no sentences")
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True))
    return {
        "bleu": corpus_bleu(hypotheses, references),
        "exact_match": exact / len(references),
        "distinct_fraction": len(set(hypotheses)) / len(hypotheses),
    }


def homotopy_scores(paths: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over paths of the fraction of distinct sentences on a path and of the mean word edit distance between
    neighbouring points."""
    if not paths or any(len(path) < 2 for path in paths):
        raise ValueError("homotopy_scores needs paths of at least two sentences")
    distinct = [len(set(path)) / len(path) for path in paths]
    steps = [sum(word_edit_distance(a, b) for a, b in zip(path, path[1:])) / (len(path) - 1) for path in paths]
    return {"distinct_fraction": sum(distinct) / len(paths), "neighbour_edit_distance": sum(steps) / len(paths)}


# --------------------------------------------------------------------------------------------- the report
def _batched_decode(model, tokenizer, latent: torch.Tensor, batch_size: int, **generate_kwargs) -> list[str]:
    texts: list[str] = []
    for start in range(0, latent.shape[0], batch_size):
        texts.extend(decode(model, tokenizer, latent[start : start + batch_size].to(model.device), **generate_kwargs))
    return texts


@torch.no_grad()
def latent_report(
    model,
    tokenizer,
    sentences: Sequence[str],
    num_beams: int = DEFAULT_NUM_BEAMS,
    homotopy_pairs: int = DEFAULT_HOMOTOPY_PAIRS,
    homotopy_steps: int = DEFAULT_HOMOTOPY_STEPS,
    batch_size: int = 128,
    decode_batch_size: int = 256,
    max_new_tokens: int | None = None,
    trec: tuple[Any, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The latent report of `model` on `sentences` (see the module docstring).

    Args:
        model, tokenizer: a trained sentence VAE (`latent_size > 0`) and its tokenizer; the model is used in eval
            mode.
        sentences: the test set, one sentence a string.
        num_beams: beam width of the beam-search reconstructions (greedy ones are always made).
        homotopy_pairs, homotopy_steps: number of random sentence pairs and points per path (ends included).
        batch_size, decode_batch_size: sentences per encoder batch and codes per decoding batch.
        max_new_tokens: longest decode (default: the model's `max_sentence_length`).
        trec: `(train, test)` `TRECData` for the linear probe (skipped when None).
        seed: seeds the MI samples and the choice of homotopy pairs.
    """
    if model.config.is_rnnlm:
        raise ValueError("the latent report needs a VAE (latent_size > 0); this model is an RNNLM")
    if len(sentences) < 2:
        raise ValueError(f"the latent report needs at least 2 sentences, got {len(sentences)}")
    for name, value, minimum in (
        ("num_beams", num_beams, 1),
        ("homotopy_pairs", homotopy_pairs, 1),
        ("homotopy_steps", homotopy_steps, 2),
        ("batch_size", batch_size, 1),
        ("decode_batch_size", decode_batch_size, 1),
    ):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        references = ids_to_texts(tokenizer, tokenizer(list(sentences))["input_ids"])
        mu, logvar = posterior_means(model, tokenizer, list(sentences), batch_size=batch_size)
        kl_dims = gaussian_kl(mu.double(), logvar.double()).mean(0)
        variances = mu.double().var(0)
        report: dict[str, Any] = {
            "num_sentences": len(sentences),
            "latent_size": model.config.latent_size,
            "kl": float(kl_dims.sum()),
            "kl_per_dimension": kl_dims.tolist(),
            "mutual_information": float(mutual_information(mu, logvar, generator=generator)),
            "mutual_information_ceiling": math.log(len(sentences)),
            "active_units": active_units(variances, ACTIVE_UNIT_THRESHOLD),
            "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
            "posterior_mean_variances": variances.tolist(),
        }
        # The searches named here, whatever the model's generation_config says (a trained model's saved defaults are
        # beam search with `<unk>` suppressed), and every token allowed: the references are the tokenizer's view of
        # the input, `<unk>` included.
        decoding = {"max_new_tokens": max_new_tokens, "do_sample": False, "suppress_tokens": None}
        reconstructions = {}
        for name, kwargs in (("greedy", {"num_beams": 1}), (f"beam{num_beams}", {"num_beams": num_beams})):
            hypotheses = _batched_decode(model, tokenizer, mu, decode_batch_size, **decoding, **kwargs)
            reconstructions[name] = hypotheses
            report[f"reconstruction_{name}"] = reconstruction_scores(hypotheses, references)

        pairs = torch.randperm(len(sentences), generator=generator)[: 2 * homotopy_pairs]
        if len(pairs) < 2 * homotopy_pairs:  # fewer sentences than pairs asked for: draw with replacement
            pairs = torch.randint(len(sentences), (2 * homotopy_pairs,), generator=generator)
        starts, ends = pairs[:homotopy_pairs], pairs[homotopy_pairs:]
        codes = interpolate(mu[starts], mu[ends], homotopy_steps).reshape(-1, mu.shape[-1])
        decoded = _batched_decode(model, tokenizer, codes, decode_batch_size, **decoding, num_beams=1)
        paths = [decoded[i * homotopy_steps : (i + 1) * homotopy_steps] for i in range(homotopy_pairs)]
        report["homotopy"] = {"pairs": homotopy_pairs, "steps": homotopy_steps, **homotopy_scores(paths)}

        if trec is not None:
            from .embeddings import evaluate_trec

            probe = evaluate_trec(model, tokenizer, *trec, batch_size=batch_size, seed=seed)
            report["linear_probe_trec"] = {k: probe[k] for k in ("accuracy", "majority_class_accuracy", "C")}
        report["settings"] = {
            "num_beams": num_beams,
            "homotopy_decoding": "greedy",
            "max_new_tokens": max_new_tokens or model.config.max_sentence_length,
            "seed": seed,
            "bleu": "sacrebleu corpus BLEU, tokenize=none, one reference (the tokenized input)",
        }
        report["examples"] = {
            "reconstructions": [
                {"input": references[i], **{name: hyps[i] for name, hyps in reconstructions.items()}}
                for i in range(min(NUM_EXAMPLES, len(references)))
            ],
            "homotopies": [
                {"start": references[int(starts[i])], "end": references[int(ends[i])], "path": paths[i]}
                for i in range(min(3, homotopy_pairs))
            ],
        }
        return report
    finally:
        model.train(was_training)


def report_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of a [`latent_report`] as `(measure, value)` rows (for the markdown page and the model card)."""
    beam = next(key for key in report if key.startswith("reconstruction_beam"))
    rows = [
        ("sentences", str(report["num_sentences"])),
        ("KL (nats / sentence)", f"{report['kl']:.2f}"),
        (
            "mutual information I(x; z) (nats; ceiling log N)",
            f"{report['mutual_information']:.2f} ({report['mutual_information_ceiling']:.2f})",
        ),
        ("active units", f"{report['active_units']} / {report['latent_size']}"),
        ("KL per dimension", ", ".join(f"{v:.2f}" for v in report["kl_per_dimension"])),
    ]
    for key, label in (("reconstruction_greedy", "greedy"), (beam, beam.removeprefix("reconstruction_"))):
        scores = report[key]
        rows.append(
            (
                f"reconstruction from the posterior mean, {label}: BLEU / exact / distinct",
                f"{scores['bleu']:.1f} / {100 * scores['exact_match']:.1f} % / "
                f"{100 * scores['distinct_fraction']:.1f} %",
            )
        )
    homotopy = report["homotopy"]
    rows.append(
        (
            f"homotopies ({homotopy['pairs']} pairs, {homotopy['steps']} points): distinct / neighbour edit distance",
            f"{100 * homotopy['distinct_fraction']:.1f} % / {homotopy['neighbour_edit_distance']:.2f} words",
        )
    )
    if "linear_probe_trec" in report:
        probe = report["linear_probe_trec"]
        rows.append(
            (
                "linear probe, TREC 6-class accuracy (majority class)",
                f"{probe['accuracy']:.1f} % ({probe['majority_class_accuracy']:.1f} %)",
            )
        )
    return rows


def render_markdown(report: dict[str, Any], title: str = "Latent report") -> str:
    """A markdown page of a [`latent_report`]: the figures as a table, then reconstruction and homotopy examples."""
    rows = report_rows(report)
    lines = [f"# {title}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "## Reconstructions from the posterior mean", ""]
    for example in report["examples"]["reconstructions"]:
        lines.append(f"- input: {example['input']}")
        lines += [f"  - {name}: {text}" for name, text in example.items() if name != "input"]
    lines += ["", "## Homotopies between posterior means (greedy)", ""]
    for example in report["examples"]["homotopies"]:
        lines += [f"{i}. {text}" for i, text in enumerate(example["path"], 1)] + [""]
    return "\n".join(lines)
