"""Schedules of the DyCON training: beta for UnCL, the EMA decay of the teacher, FeCL's cross threshold and a
sigmoid ramp-up. Each is a pure function of the (0-based) optimizer step (:func:`optimizer_step`), so a resumed run
continues them exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["optimizer_step", "BetaSchedule", "ema_alpha", "cross_threshold", "sigmoid_rampup", "SigmoidRampUp"]


@dataclass(frozen=True)
class BetaSchedule:
    """UnCL's beta: ``beta(t) = max(beta_min, beta_max * exp(-lambda * t / T))``.

    ``lambda`` defaults to ``ln(beta_max / beta_min)``, so beta falls smoothly from ``beta_max`` at ``t = 0`` to
    ``beta_min`` at ``t = T``. ``constant`` (if given) fixes beta for ablations.

    Args:
        beta_max: value at t = 0 (released code 5.0).
        beta_min: floor and value at t = T (released code 0.5).
        total_steps: T, the total number of training iterations.
        decay_rate: lambda; ``None`` -> ``ln(beta_max / beta_min)``.
        constant: a constant beta, overriding the schedule.
    """

    beta_max: float = 5.0
    beta_min: float = 0.5
    total_steps: int = 20000
    decay_rate: float | None = None
    constant: float | None = None

    def __post_init__(self) -> None:
        if self.constant is None:
            if not (self.beta_max > 0 and self.beta_min > 0):
                raise ValueError(f"beta_max and beta_min must be > 0, got {self.beta_max}, {self.beta_min}")
            if self.beta_min > self.beta_max:
                raise ValueError(f"beta_min ({self.beta_min}) must not exceed beta_max ({self.beta_max})")
            if self.total_steps <= 0:
                raise ValueError(f"total_steps must be > 0, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        if self.constant is not None:
            return float(self.constant)
        lam = math.log(self.beta_max / self.beta_min) if self.decay_rate is None else self.decay_rate
        return max(self.beta_min, self.beta_max * math.exp(-lam * step / self.total_steps))


def ema_alpha(step: int, decay: float = 0.99) -> float:
    """Teacher EMA coefficient after optimizer step ``step`` (0-based): ``min(1 - 1 / (step + 1), decay)``.

    At step 0 it is 0, i.e. the teacher is set to the student.
    """
    return min(1.0 - 1.0 / (step + 1), decay)


def optimizer_step(state: Any) -> int:
    """The 0-based index of the optimizer step of the current iteration: ``iteration - 1 - skipped_steps``.

    Every schedule of the training loop (beta, eta, the EMA decay, FeCL's cross threshold) is a function of this
    count, not of the raw iteration: a skipped (non-finite) step does not advance them, as in the released loop.
    ``state`` is an Ignite ``State`` (``skipped_steps`` is 0 when the trainer does not count skips).
    """
    return int(state.iteration) - 1 - int(getattr(state, "skipped_steps", 0))


def cross_threshold(step: float, ramp: float = 1500.0) -> float:
    """FeCL "official" hard cross-pair threshold ``0.3 + 0.2 * exp(-5 * (1 - min(e, R) / R)^2)``."""
    if ramp <= 0:
        return 0.5
    phase = 1.0 - min(float(step), ramp) / ramp
    return 0.3 + 0.2 * math.exp(-5.0 * phase * phase)


def sigmoid_rampup(step: float, length: float) -> float:
    """The mean-teacher ramp-up ``exp(-5 * (1 - t / length)^2)`` clipped to [0, 1]; 1 when ``length`` is 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(step), 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


@dataclass(frozen=True)
class SigmoidRampUp:
    """``value * sigmoid_rampup(step, length)``: e.g. a ramped eta; ``length = 0`` keeps ``value`` constant."""

    value: float = 0.5
    length: float = 0.0

    def __call__(self, step: int) -> float:
        return self.value * sigmoid_rampup(step, self.length)
