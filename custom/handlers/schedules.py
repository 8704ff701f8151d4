"""Set a scheduled value (beta, eta, ...) on ``engine.state`` at the start of every iteration."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine, Events

from ..schedules import optimizer_step

__all__ = ["ScheduleHandler"]


class ScheduleHandler:
    """``engine.state.<name> = schedule(step)`` at ITERATION_STARTED, ``step`` = :func:`custom.schedules.optimizer_step`
    (``iteration - 1 - skipped_steps``: a skipped non-finite step does not advance the schedule, as released).

    The schedule is a function of the 0-based optimizer step (e.g. :class:`custom.schedules.BetaSchedule`,
    :class:`custom.schedules.SigmoidRampUp`), so a run resumed from a checkpoint continues it exactly.

    Args:
        name: attribute of ``engine.state`` to set (``"beta"`` and ``"eta"`` are read by the trainer).
        schedule: callable ``int -> float``.
    """

    def __init__(self, name: str, schedule: Callable[[int], float]) -> None:
        if not name.isidentifier():
            raise ValueError(f"name must be an identifier, got {name!r}")
        self.name = name
        self.schedule = schedule

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        setattr(engine.state, self.name, float(self.schedule(optimizer_step(engine.state))))
