"""Text-level tools on a trained model's latent space (the paper's Section 6): greedy decodes of prior
samples, posterior means and samples for given sentences, and homotopies between sentences."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .latent import interpolate, reparameterize, volume_preserving_stretch


def decode(model, tokenizer, latent: torch.Tensor, **generate_kwargs) -> list[str]:
    """Greedy (or as configured by `generate_kwargs`) decodes of `(B, Z)` codes, as text."""
    out = model.generate(latent=latent, **generate_kwargs)
    return tokenizer.batch_decode(out.sequences, skip_special_tokens=True)


def encode_texts(model, tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance `(B, Z)` of each text."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    batch = tokenizer(list(texts), padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model.encode(batch["input_ids"], batch["attention_mask"])


def prior_samples(
    model, tokenizer, num_samples: int, generator: torch.Generator | None = None, **generate_kwargs
) -> list[str]:
    """Greedy decodes of codes drawn from the prior (the paper's Table 5)."""
    return decode(model, tokenizer, model.sample_prior(num_samples, generator=generator), **generate_kwargs)


def stretched_prior_samples(
    model, tokenizer, num_samples: int, c: float = 0.1, generator: torch.Generator | None = None, **generate_kwargs
) -> list[str]:
    """Lower-probability samples: prior draws mapped by a random volume-preserving stretch (Table 6)."""
    z = model.sample_prior(num_samples, generator=generator)
    matrix = volume_preserving_stretch(z.shape[-1], c=c, generator=generator, dtype=torch.float32)
    return decode(model, tokenizer, z @ matrix.to(z).T, **generate_kwargs)


def posterior_decodes(
    model, tokenizer, texts: Sequence[str], num_samples: int = 3, generator: torch.Generator | None = None
) -> list[dict[str, object]]:
    """For each text: the greedy decode of the posterior mean and of `num_samples` posterior samples (Table 7)."""
    mu, logvar = encode_texts(model, tokenizer, texts)
    means = decode(model, tokenizer, mu)
    rows = [{"input": text, "mean": mean, "samples": []} for text, mean in zip(texts, means)]
    if num_samples:
        z = reparameterize(mu, logvar, num_samples=num_samples, generator=generator)  # (k, B, Z)
        decoded = decode(model, tokenizer, z.transpose(0, 1).reshape(-1, z.shape[-1]))
        for i, row in enumerate(rows):
            row["samples"] = decoded[i * num_samples : (i + 1) * num_samples]
    return rows


def homotopy(model, tokenizer, start: str | torch.Tensor, end: str | torch.Tensor, steps: int = 7) -> list[str]:
    """Greedy decodes along the line between two sentences' posterior means (or two codes) (Tables 8, 12)."""
    codes = []
    for point in (start, end):
        if isinstance(point, str):
            point = encode_texts(model, tokenizer, [point])[0][0]
        codes.append(point.to(model.device))
    return decode(model, tokenizer, interpolate(codes[0], codes[1], steps))
