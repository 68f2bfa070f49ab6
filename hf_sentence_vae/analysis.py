"""Text-level tools on a trained model's latent space (the paper's Section 6): decodes of prior samples
(Table 5) and of stretched, lower-probability prior samples (Table 6), posterior means and samples for given
sentences (Table 7), homotopies between sentences or random points (Tables 8 and 12), and a 2-D PCA view of
posterior means.

Decoding follows the model's `generation_config` (a trained model's: beam search, `<unk>` suppressed where the
training text had it; the paper decoded greedily: `num_beams=1`) unless `generate_kwargs` say otherwise; see
[`describe_decoding`]. Decoded text keeps `<unk>` (a word of the Penn Treebank's vocabulary) and drops only
`<pad>`, `<bos>` and `<eos>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .data import TokenizedCorpus
from .latent import gaussian_log_density, interpolate, reparameterize, volume_preserving_stretch


def load_pretrained(model_name_or_path, tokenizer_name_or_path=None, device: str | torch.device | None = None):
    """Load a `save_pretrained` folder (model + tokenizer) for analysis: `(model, tokenizer)`, the model in
    eval mode on `device` (default: CUDA when available), its tokenizer checked against its config. A folder whose
    weights do not match its config, or a path that does not exist, raises one clear error
    (`loading.load_model_and_tokenizer`)."""
    from .loading import load_model_and_tokenizer

    return load_model_and_tokenizer(model_name_or_path, tokenizer_name_or_path, device)


def ids_to_texts(tokenizer, sequences: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
    """Word ids to text, one string a row: `<pad>`, `<bos>` and `<eos>` dropped, `<unk>` kept."""
    if isinstance(sequences, torch.Tensor):
        sequences = sequences.tolist()
    skip = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    texts = []
    for ids in sequences:
        tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i not in skip])
        texts.append(" ".join(tokens))
    return texts


def decode(model, tokenizer, latent: torch.Tensor, **generate_kwargs) -> list[str]:
    """Decodes of `(B, Z)` codes, as text (the model's generation settings, overridden by `generate_kwargs`)."""
    ids = model.generate(latent=latent, **{**generate_kwargs, "return_dict_in_generate": False})  # no scores needed
    return ids_to_texts(tokenizer, ids)


def describe_decoding(model, tokenizer=None, **generate_kwargs) -> str:
    """How `generate` decodes with the model's `generation_config` and `generate_kwargs`, in words, e.g.
    "beam search (5 beams), `<unk>` suppressed" or "greedy decoding"."""
    settings = model.generation_config.to_dict()
    settings.update(generate_kwargs)
    if settings.get("do_sample"):
        text = "ancestral sampling"
        temperature = settings.get("temperature")
        if temperature not in (None, 1.0):
            text += f" at temperature {temperature:g}"
    elif (settings.get("num_beams") or 1) > 1:
        text = f"beam search ({settings['num_beams']} beams)"
    else:
        text = "greedy decoding"
    suppressed = settings.get("suppress_tokens") or []
    if suppressed:
        names = tokenizer.convert_ids_to_tokens(list(suppressed)) if tokenizer is not None else suppressed
        text += ", " + ", ".join(f"`{name}`" for name in names) + " suppressed"
    return text


def encode_texts(model, tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance `(B, Z)` of each text (one padded batch; see [`posterior_means`])."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    batch = tokenizer(list(texts), padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model.encode(batch["input_ids"], batch["attention_mask"])


def posterior_means(model, tokenizer, texts: Sequence[str], batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances `(N, Z)` (on the CPU, float32) of many texts, batched by length,
    in input order."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(texts) == 0:
        raise ValueError("posterior_means got no texts")
    corpus, _ = TokenizedCorpus.from_sentences(tokenizer, list(texts))
    mu = torch.empty((len(texts), model.config.latent_size))
    logvar = torch.empty_like(mu)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for positions, batch in corpus.sorted_batches(batch_size):
                batch = {k: v.to(model.device) for k, v in batch.items()}
                m, lv = model.encode(batch["input_ids"], batch["attention_mask"])
                index = torch.from_numpy(positions)
                mu[index] = m.float().cpu()
                logvar[index] = lv.float().cpu()
    finally:
        model.train(was_training)
    return mu, logvar


def prior_samples(
    model, tokenizer, num_samples: int, generator: torch.Generator | None = None, **generate_kwargs
) -> list[str]:
    """Decodes of codes drawn from the prior (the paper's Table 5)."""
    return decode(model, tokenizer, model.sample_prior(num_samples, generator=generator), **generate_kwargs)


def stretched_prior_codes(
    model, num_samples: int, c: float = 0.1, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Prior draws `z` and their images `z @ M.T` under a random volume-preserving stretch `M` (entries of
    `M - I` uniform in [-c, c], |det M| = 1; see `latent.volume_preserving_stretch`).

    Returns `z`, `stretched`, `matrix`, the singular values of `M` (`singular_values`: how much each
    direction is stretched) and the prior log-densities of both sets of codes (`log_prior`,
    `stretched_log_prior`).
    """
    z = model.sample_prior(num_samples, generator=generator)
    matrix_generator = None  # the matrix is drawn on the CPU, whatever the generator's device
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        matrix_generator = torch.Generator().manual_seed(seed)
    matrix = volume_preserving_stretch(z.shape[-1], c=c, generator=matrix_generator, dtype=torch.float32)
    stretched = z @ matrix.to(z).T
    return {
        "z": z,
        "stretched": stretched,
        "matrix": matrix,
        "singular_values": torch.linalg.svdvals(matrix),
        "log_prior": gaussian_log_density(z.float()),
        "stretched_log_prior": gaussian_log_density(stretched.float()),
    }


def stretched_prior_samples(
    model, tokenizer, num_samples: int, c: float = 0.1, generator: torch.Generator | None = None, **generate_kwargs
) -> list[str]:
    """Lower-probability samples: prior draws mapped by a random volume-preserving stretch (Table 6)."""
    codes = stretched_prior_codes(model, num_samples, c=c, generator=generator)
    return decode(model, tokenizer, codes["stretched"], **generate_kwargs)


def posterior_decodes(
    model,
    tokenizer,
    texts: Sequence[str],
    num_samples: int = 3,
    generator: torch.Generator | None = None,
    **generate_kwargs,
) -> list[dict[str, object]]:
    """For each text: the decode of the posterior mean and of `num_samples` posterior samples (Table 7)."""
    mu, logvar = encode_texts(model, tokenizer, texts)
    means = decode(model, tokenizer, mu, **generate_kwargs)
    rows = [{"input": text, "mean": mean, "samples": []} for text, mean in zip(texts, means)]
    if num_samples:
        z = reparameterize(mu, logvar, num_samples=num_samples, generator=generator)  # (k, B, Z)
        decoded = decode(model, tokenizer, z.transpose(0, 1).reshape(-1, z.shape[-1]), **generate_kwargs)
        for i, row in enumerate(rows):
            row["samples"] = decoded[i * num_samples : (i + 1) * num_samples]
    return rows


def homotopy(
    model, tokenizer, start: str | torch.Tensor, end: str | torch.Tensor, steps: int = 7, **generate_kwargs
) -> list[str]:
    """Decodes along the line between two sentences' posterior means (or two codes) (Tables 8, 12)."""
    codes = []
    for point in (start, end):
        if isinstance(point, str):
            point = encode_texts(model, tokenizer, [point])[0][0]
        codes.append(point.to(model.device))
    return decode(model, tokenizer, interpolate(codes[0], codes[1], steps), **generate_kwargs)


def random_homotopies(
    model,
    tokenizer,
    num_paths: int,
    steps: int = 7,
    generator: torch.Generator | None = None,
    **generate_kwargs,
) -> list[list[str]]:
    """Homotopies between pairs of random points of the prior (the paper's Tables 8 and 12), all decoded in
    one batch: `num_paths` lists of `steps` sentences."""
    ends = model.sample_prior(2 * num_paths, generator=generator)
    path_codes = interpolate(ends[:num_paths], ends[num_paths:], steps)  # (P, steps, Z)
    decoded = decode(model, tokenizer, path_codes.reshape(-1, path_codes.shape[-1]), **generate_kwargs)
    return [decoded[i * steps : (i + 1) * steps] for i in range(num_paths)]


def collapse_repeats(sentences: Sequence[str]) -> list[str]:
    """Drop consecutive duplicates along a path (the paper's tables list each distinct sentence once)."""
    out: list[str] = []
    for sentence in sentences:
        if not out or out[-1] != sentence:
            out.append(sentence)
    return out


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project `(N, D)` points on their first two principal components: `(N, 2)` coordinates and the
    fraction of the variance each component explains. D = 1 gives a zero second coordinate."""
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) matrix, got shape {tuple(points.shape)}")
    centred = points.double() - points.double().mean(0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    coords = centred @ vh[:2].T
    variance = singular.pow(2)
    ratio = variance[:2] / variance.sum().clamp(min=1e-12)
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros_like(coords)], 1)
        ratio = torch.cat([ratio, torch.zeros(1, dtype=ratio.dtype)])
    return coords.float(), ratio.float()


def plot_latent_pca(
    means: torch.Tensor, lengths: Sequence[int], path: str | Path, title: str = "Posterior means (PCA)"
) -> Path:
    """Scatter the 2-D PCA of posterior means coloured by sentence length (words); saves a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, ratio = pca_2d(means)
    fig, ax = plt.subplots(figsize=(6.5, 5.0), dpi=120)
    scatter = ax.scatter(coords[:, 0], coords[:, 1], c=list(lengths), cmap="viridis", s=6, alpha=0.7)
    fig.colorbar(scatter, ax=ax, label="sentence length (words)")
    ax.set_xlabel(f"PC 1 ({100 * float(ratio[0]):.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * float(ratio[1]):.1f}% of variance)")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def length_correlation(means: torch.Tensor, lengths: Sequence[int]) -> list[float]:
    """Pearson correlation of each of the first two principal components with sentence length."""
    coords, _ = pca_2d(means)
    length = torch.tensor(list(lengths), dtype=torch.float64)
    out = []
    for k in range(2):
        x = coords[:, k].double()
        x, y = x - x.mean(), length - length.mean()
        denominator = (x.norm() * y.norm()).clamp(min=1e-12)
        out.append(float((x * y).sum() / denominator))
    return out


__all__ = [
    "load_pretrained",
    "collapse_repeats",
    "decode",
    "describe_decoding",
    "encode_texts",
    "homotopy",
    "ids_to_texts",
    "length_correlation",
    "pca_2d",
    "plot_latent_pca",
    "posterior_decodes",
    "posterior_means",
    "prior_samples",
    "random_homotopies",
    "stretched_prior_codes",
    "stretched_prior_samples",
]
