"""Weight averaging (`--ema_decay`): an exponential moving average of a model's weights (Polyak & Juditsky 1992),
which evaluations, `best/` and the final figures use while the optimizer trains the weights themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def update_weight_average(
    averages: list[torch.Tensor], params: list[torch.Tensor], decay: float, num_updates: int
) -> None:
    """In place, an exponential moving average of the weights after `num_updates + 1` optimizer steps:
    average <- d average + (1 - d) param, with d = min(decay, (1 + n) / (10 + n)) so that the first steps'
    averages do not keep the initialisation (the warm-up of TensorFlow's ExponentialMovingAverage)."""
    d = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    with torch.no_grad():
        for average, param in zip(averages, params, strict=True):
            average.lerp_(param.detach().to(average.dtype), 1.0 - d)


def _copy_into(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)


class WeightAverage:
    """The running average of `model`'s parameters (in parameter order), starting from `averages`."""

    def __init__(self, model: torch.nn.Module, decay: float, averages: list[torch.Tensor]):
        self.model, self.decay, self.averages = model, decay, averages

    def update(self, num_updates: int) -> None:
        """Fold in the weights after optimizer step `num_updates + 1`."""
        update_weight_average(self.averages, list(self.model.parameters()), self.decay, num_updates)

    def restart(self, params: set[int]) -> None:
        """Restart the average of the parameters whose `id` is in `params` from their current values."""
        for i, param in enumerate(self.model.parameters()):
            if id(param) in params:
                self.averages[i] = param.detach().clone().to(self.averages[i].dtype)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back afterwards."""
        params = list(self.model.parameters())
        trained = [p.detach().clone() for p in params]
        _copy_into(params, self.averages)
        try:
            yield
        finally:
            _copy_into(params, trained)


__all__ = ["WeightAverage", "update_weight_average"]
