"""Pure tensor functions on the latent space: Gaussian terms, prior samples and paths between codes.

Only `torch` is imported, so this module travels with the model's remote code.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per dimension, in closed form (same shape as `mu`)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)


def gaussian_log_density(
    z: torch.Tensor, mu: torch.Tensor | None = None, logvar: torch.Tensor | None = None
) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension; the standard normal when mu is None."""
    if mu is None:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, num_samples: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps. With `num_samples=k` the result has a leading sample dimension `(k, *mu.shape)`."""
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


def sample_standard_normal(
    num_samples: int,
    latent_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`(num_samples, latent_size)` draws from the prior N(0, I)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return torch.randn((num_samples, latent_size), device=device, dtype=dtype, generator=generator)


def interpolate(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """The homotopy z(t) = (1 - t) * start + t * end at `steps` evenly spaced t in [0, 1] (both ends included).

    `start` and `end` are `(Z,)` codes (result `(steps, Z)`) or `(B, Z)` batches (result `(B, steps, Z)`).
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2 to include both end points, got {steps}")
    if start.shape != end.shape:
        raise ValueError(f"start and end must have the same shape, got {tuple(start.shape)} and {tuple(end.shape)}")
    t = torch.linspace(0.0, 1.0, steps, device=start.device, dtype=start.dtype).unsqueeze(-1)
    return (1.0 - t) * start.unsqueeze(-2) + t * end.unsqueeze(-2)


def volume_preserving_stretch(
    latent_size: int, c: float = 0.1, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A random linear map for lower-probability samples (the paper's Table 6).

    M = I + U, with U's entries uniform in [-c, c], rescaled so that |det M| = 1: the map stretches some
    directions and shrinks others without changing volume. Apply to prior samples as `z @ M.T`.
    """
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    noise = (torch.rand((latent_size, latent_size), generator=generator, dtype=dtype) * 2.0 - 1.0) * c
    matrix = torch.eye(latent_size, dtype=noise.dtype) + noise
    _, logabsdet = torch.linalg.slogdet(matrix)
    return matrix / torch.exp(logabsdet / latent_size)
