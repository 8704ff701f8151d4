"""The mean teacher: a copy of the student that is only ever updated by EMA."""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["make_teacher"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` (unwrapped from DDP / EmbeddingForward if needed) with ``requires_grad`` off on every parameter.

    Args:
        student: the student network (any ``nn.Module``, e.g. :class:`custom.networks.UNet3D`).
    """
    from ..handlers.ema import unwrap

    teacher = copy.deepcopy(unwrap(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
