"""The mean teacher's exponential moving average update, with DyCON's warm-up."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.profiler import record_function

from ..schedules import ema_alpha, optimizer_step

__all__ = ["TeacherEMAHandler", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel and :class:`custom.networks.EmbeddingForward`
    wrappers (or the module itself)."""
    from ..networks.embedding_forward import EmbeddingForward

    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(module, EmbeddingForward):
            module = module.net
        else:
            return module


class TeacherEMAHandler:
    """After every optimizer step: ``teacher = alpha * teacher + (1 - alpha) * student`` for the parameters, with
    ``alpha(t) = min(1 - 1 / (t + 1), decay)`` and ``t`` = :func:`custom.schedules.optimizer_step` (the 0-based
    count of steps taken; so after the first step the teacher equals the student). An iteration whose step the
    trainer skipped (non-finite loss, ``engine.state.step_skipped``) leaves the teacher untouched, as the released
    loop does. Buffers (e.g. BatchNorm statistics of the projection head) are copied from the student,
    which keeps the teacher identical across data-parallel ranks.

    Ignite's ``EMAHandler`` has a linear warm-up instead, which is why this exists. The teacher is an ordinary
    module: put it in the ``save_dict`` of ``CheckpointSaver`` / ``CheckpointLoader`` and it is saved and restored;
    ``alpha`` is a function of the trainer's iteration and skipped-step count (both checkpointed), so a resumed run
    continues the same schedule.

    Args:
        teacher: the teacher network (same architecture as the student).
        decay: the EMA decay ceiling (released code 0.99).
        student: the student; default ``engine.network``.
    """

    def __init__(self, teacher: nn.Module, decay: float = 0.99, student: nn.Module | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.teacher = teacher
        self.decay = float(decay)
        self.student = student

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One EMA update after optimizer step ``step`` (0-based); returns the alpha used."""
        alpha = ema_alpha(step, self.decay)
        student, teacher = unwrap(student), unwrap(self.teacher)
        t_params = dict(teacher.named_parameters())
        s_params = dict(student.named_parameters())
        if t_params.keys() != s_params.keys():
            raise ValueError("teacher and student have different parameters: they must share the architecture")
        t_list = [t_params[k] for k in s_params]
        s_list = [s_params[k].detach().to(t_params[k].dtype) for k in s_params]
        torch._foreach_mul_(t_list, alpha)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - alpha)
        t_buffers = dict(teacher.named_buffers())
        for name, buf in student.named_buffers():
            if name in t_buffers:
                t_buffers[name].copy_(buf)
        return alpha

    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "step_skipped", False):
            return
        student = self.student if self.student is not None else engine.network  # type: ignore[attr-defined]
        with record_function("dycon.teacher_ema"):
            engine.state.ema_alpha = self.update(student, optimizer_step(engine.state))
