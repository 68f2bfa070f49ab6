"""KL-weight schedules (the paper's Section 3.1 "KL cost annealing") as pure functions of the step.

- ``sigmoid``: w(t) = 1 / (1 + exp(-slope * (t - midpoint))), the paper's Figure 2 (that figure's values
  fit slope ~0.0024 and midpoint ~3200; slope 0.0025 and midpoint 2500 are the common defaults).
- ``linear``: w(t) = min(1, start + (1 - start) * t / warmup_steps).
- ``cyclical``: Fu et al. (2019): the run is cut into `cycles` cycles; within each, w rises linearly from 0
  to 1 over the first `ratio` of the cycle and stays at 1 for the rest.
- ``constant``: w(t) = value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("sigmoid", "linear", "cyclical", "constant")


@dataclass(frozen=True)
class KLSchedule:
    """A KL-weight schedule; call it with the (0-based) optimizer step to get the weight."""

    name: str = "sigmoid"
    slope: float = 0.0025
    midpoint: float = 2500.0
    warmup_steps: int = 10000
    start: float = 0.0
    cycles: int = 4
    ratio: float = 0.5
    total_steps: int | None = None
    value: float = 1.0

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"kl_schedule must be one of {SCHEDULES}, got {self.name!r}")
        if self.name == "sigmoid" and self.slope <= 0:
            raise ValueError(f"kl_sigmoid_slope must be > 0, got {self.slope}")
        if self.name == "linear" and self.warmup_steps < 1:
            raise ValueError(f"kl_warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.name == "cyclical":
            if self.cycles < 1:
                raise ValueError(f"kl_cycles must be >= 1, got {self.cycles}")
            if not 0.0 < self.ratio <= 1.0:
                raise ValueError(f"kl_cycle_ratio must be in (0, 1], got {self.ratio}")
            if not self.total_steps or self.total_steps < self.cycles:
                raise ValueError(f"the cyclical schedule needs total_steps >= cycles, got {self.total_steps}")
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"kl_start must be in [0, 1], got {self.start}")
        if self.value < 0:
            raise ValueError(f"kl_constant must be >= 0, got {self.value}")

    def __call__(self, step: int) -> float:
        if self.name == "sigmoid":
            return sigmoid_weight(step, self.slope, self.midpoint)
        if self.name == "linear":
            return linear_weight(step, self.warmup_steps, self.start)
        if self.name == "cyclical":
            return cyclical_weight(step, self.total_steps, self.cycles, self.ratio)
        return self.value


def sigmoid_weight(step: int, slope: float, midpoint: float) -> float:
    """1 / (1 + exp(-slope * (step - midpoint))), computed without overflow."""
    x = slope * (step - midpoint)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def linear_weight(step: int, warmup_steps: int, start: float = 0.0) -> float:
    """Linear warm-up from `start` to 1 over `warmup_steps` steps, then 1."""
    return min(1.0, start + (1.0 - start) * step / warmup_steps)


def cyclical_weight(step: int, total_steps: int, cycles: int, ratio: float) -> float:
    """Fu et al. (2019): within each of `cycles` equal cycles, rise from 0 to 1 over `ratio` of it, then hold 1."""
    period = total_steps / cycles
    position = (step % period) / period
    return min(1.0, position / ratio)
