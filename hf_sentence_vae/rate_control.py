"""Rate control: how much the KL term weighs at each training step, and what keeps the latent code in use.

- KL-weight schedules (the paper's Section 3.1 "KL cost annealing"), pure functions of the step:
  - ``sigmoid``: w(t) = 1 / (1 + exp(-kl_sigmoid_slope * (t - kl_sigmoid_midpoint))), the paper's Figure 2 (that
    figure's values fit a slope of ~0.0024 and a midpoint of ~3200; 0.0025 and 2500 are the common defaults);
  - ``linear``: w(t) = min(1, kl_start + (1 - kl_start) * t / kl_warmup_steps);
  - ``cyclical`` (Fu et al., 2019): the run is cut into `kl_cycles` cycles; within each, w rises linearly from 0
    to 1 over the first `kl_cycle_ratio` of the cycle and stays at 1 for the rest;
  - ``constant``: w(t) = kl_constant.
- A target rate (ControlVAE, Shao et al. 2020): [`KLTargetController`], a PI controller of the weight that holds
  the KL at `kl_target` nats per sentence.
- The encoder warm start (Li et al., 2019): `encoder_warmup_steps` steps as an autoencoder (weight 0), after which
  the decoder is drawn afresh.
- Free bits (Kingma et al., 2016): `free_bits`, a floor on the batch-averaged KL of each latent dimension in the
  loss (applied by the model's `forward`).

[`RateControl`] puts them together for the training loop. Every name is the training option's (`--kl_schedule`,
`--kl_sigmoid_slope`, ...): the same name from the command line to the logs and the model card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

SCHEDULES = ("sigmoid", "linear", "cyclical", "constant")
# The options that shape each schedule (the others have no effect on it).
SCHEDULE_OPTIONS = {
    "sigmoid": ("kl_sigmoid_slope", "kl_sigmoid_midpoint"),
    "linear": ("kl_warmup_steps", "kl_start"),
    "cyclical": ("kl_cycles", "kl_cycle_ratio"),
    "constant": ("kl_constant",),
}


@dataclass(frozen=True)
class KLSchedule:
    """A KL-weight schedule; call it with the (0-based) optimizer step to get the weight. `total_steps` (the run's
    length) is needed by the cyclical schedule only."""

    kl_schedule: str = "sigmoid"
    kl_sigmoid_slope: float = 0.0025
    kl_sigmoid_midpoint: float = 2500.0
    kl_warmup_steps: int = 10000
    kl_start: float = 0.0
    kl_cycles: int = 4
    kl_cycle_ratio: float = 0.5
    kl_constant: float = 1.0
    total_steps: int | None = None

    def __post_init__(self):
        if self.kl_schedule not in SCHEDULES:
            raise ValueError(f"kl_schedule must be one of {SCHEDULES}, got {self.kl_schedule!r}")
        if self.kl_schedule == "sigmoid" and self.kl_sigmoid_slope <= 0:
            raise ValueError(f"kl_sigmoid_slope must be > 0, got {self.kl_sigmoid_slope}")
        if self.kl_schedule == "linear" and self.kl_warmup_steps < 1:
            raise ValueError(f"kl_warmup_steps must be >= 1, got {self.kl_warmup_steps}")
        if self.kl_schedule == "cyclical":
            if self.kl_cycles < 1:
                raise ValueError(f"kl_cycles must be >= 1, got {self.kl_cycles}")
            if not 0.0 < self.kl_cycle_ratio <= 1.0:
                raise ValueError(f"kl_cycle_ratio must be in (0, 1], got {self.kl_cycle_ratio}")
            if not self.total_steps or self.total_steps < self.kl_cycles:
                raise ValueError(f"the cyclical schedule needs total_steps >= kl_cycles, got {self.total_steps}")
        if not 0.0 <= self.kl_start <= 1.0:
            raise ValueError(f"kl_start must be in [0, 1], got {self.kl_start}")
        if self.kl_constant < 0:
            raise ValueError(f"kl_constant must be >= 0, got {self.kl_constant}")

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The training options a schedule is built from (every field but `total_steps`)."""
        return tuple(f.name for f in fields(cls) if f.name != "total_steps")

    def __call__(self, step: int) -> float:
        if self.kl_schedule == "sigmoid":
            return sigmoid_weight(step, self.kl_sigmoid_slope, self.kl_sigmoid_midpoint)
        if self.kl_schedule == "linear":
            return linear_weight(step, self.kl_warmup_steps, self.kl_start)
        if self.kl_schedule == "cyclical":
            return cyclical_weight(step, self.total_steps, self.kl_cycles, self.kl_cycle_ratio)
        return self.kl_constant


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


class RateControl:
    """The KL side of the training objective at each optimizer step: the weight (0 during the encoder warm start,
    then the target-rate controller's weight, or the schedule counted from the end of the warm start), the free-bits
    floor, and when the warm start's decoder re-initialisation is due.

    Args:
        schedule: the KL-weight schedule.
        free_bits: minimum batch-averaged KL per latent dimension in the loss (0: off).
        kl_target: hold the KL at this many nats per sentence instead of following the schedule (None: off).
        kl_target_kp, kl_target_ki: the controller's gains.
        encoder_warmup_steps: steps trained as an autoencoder before the decoder is re-initialised (0: off).
    """

    def __init__(
        self,
        schedule: KLSchedule,
        free_bits: float = 0.0,
        kl_target: float | None = None,
        kl_target_kp: float = 0.01,
        kl_target_ki: float = 1e-4,
        encoder_warmup_steps: int = 0,
    ):
        self.schedule = schedule
        self.free_bits = free_bits
        self.encoder_warmup_steps = encoder_warmup_steps
        self.controller = None if kl_target is None else KLTargetController(kl_target, kp=kl_target_kp, ki=kl_target_ki)

    def kl_weight(self, step: int) -> float:
        """The KL weight of optimizer step `step` (0-based)."""
        if step < self.encoder_warmup_steps:
            return 0.0
        if self.controller is not None:
            return self.controller.weight
        return self.schedule(step - self.encoder_warmup_steps)

    def reinitialization_due(self, step: int, done: bool) -> bool:
        """Whether the warm start's decoder re-initialisation must happen before optimizer step `step` (`done`: it
        already has)."""
        return 0 < self.encoder_warmup_steps <= step and not done

    def observe(self, step: int, kl: float) -> None:
        """Feed the controller the KL (nats per sentence) measured at optimizer step `step`; ignored during the
        warm start and without a target."""
        if self.controller is not None and step >= self.encoder_warmup_steps:
            self.controller.update(kl)

    def state_dict(self) -> dict[str, float]:
        return {} if self.controller is None else self.controller.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        if self.controller is not None and state:
            self.controller.load_state_dict(state)


__all__ = [
    "SCHEDULES",
    "SCHEDULE_OPTIONS",
    "KLSchedule",
    "KLTargetController",
    "RateControl",
    "cyclical_weight",
    "linear_weight",
    "sigmoid_weight",
]
