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


@dataclass
class KLTargetController:
    """A PI controller of the KL weight that holds the KL at `target` nats per sentence (ControlVAE, Shao et al.
    2020): with the error e = target - KL of the last batch,

        weight = min_weight + kp / (1 + exp(e)) + I,    I <- I - ki * e,

    clipped to [min_weight, max_weight], with the integral I kept within the range it can act on (no wind-up).
    A KL above the target raises the weight, one below lowers it, down to `min_weight` (0 by default: no penalty
    while the code carries less than the target). `update` takes each optimizer step's batch KL and returns the
    weight for the next step; `state_dict`/`load_state_dict` let a resumed run continue exactly."""

    target: float
    kp: float = 0.01
    ki: float = 1e-4
    min_weight: float = 0.0
    max_weight: float = 1.0
    integral: float = 0.0
    weight: float = 0.0

    def __post_init__(self):
        for name in ("target", "kp", "ki", "min_weight", "max_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"KLTargetController: {name} must be a finite number >= 0, got {value!r}")
        if self.max_weight < self.min_weight:
            raise ValueError(f"the KL weight range is empty: [{self.min_weight}, {self.max_weight}]")
        self.weight = min(max(self.weight, self.min_weight), self.max_weight)

    def update(self, kl: float) -> float:
        """Feed the KL (nats per sentence) measured at the current weight; returns the next weight."""
        if not math.isfinite(kl):
            return self.weight
        error = self.target - kl
        proportional = self.kp * sigmoid_weight(-error, 1.0, 0.0)  # kp / (1 + exp(error))
        span = self.max_weight - self.min_weight
        self.integral = min(max(self.integral - self.ki * error, -self.kp), span)
        self.weight = min(max(self.min_weight + proportional + self.integral, self.min_weight), self.max_weight)
        return self.weight

    def state_dict(self) -> dict[str, float]:
        return {"integral": self.integral, "weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.integral, self.weight = float(state["integral"]), float(state["weight"])
