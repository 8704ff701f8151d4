"""UnCL: the uncertainty-aware consistency loss of DyCON (method doc, section 1)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["UnCLLoss", "voxel_entropy"]

ENTROPY_EPS = 1e-6


def voxel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the channel axis, natural log, not normalised by log C.

    Args:
        probs: (B, C, *spatial) probabilities (softmax over dim 1).

    Returns:
        (B, *spatial) tensor ``-sum_c p_c * log(p_c + 1e-6)``.
    """
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=1)


class UnCLLoss(_Loss):
    """Uncertainty-aware consistency between student and teacher predictions.

    For student logits ``s`` and teacher logits ``t`` (both (B, C, *spatial)), with ``p = softmax(., dim=1)`` and
    ``H`` the voxel entropy of :func:`voxel_entropy`::

        w(v) = 1 / (exp(beta * H_s(v)) + exp(beta * H_t(v)))
        l(v) = w(v) * sum_c (p_s,c(v) - p_t,c(v))^2 + beta * (H_s(v) + H_t(v))
        L    = mean over all B * V voxels of l(v)

    The weight ``w`` is not detached (its gradient reaches the student through ``H_s``); the teacher carries no
    gradient (its logits are detached here). The value is computed per voxel: no (B, B, *spatial) temporary.

    Example::

        loss = UnCLLoss()
        value = loss(student_logits, teacher_logits, beta=1.0)  # scalar
    """

    def __init__(self) -> None:
        super().__init__(reduction="mean")

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
        """
        Args:
            student_logits: (B, C, *spatial) raw student outputs.
            teacher_logits: (B, C, *spatial) raw teacher outputs (no gradient flows into them).
            beta: uncertainty temperature (see :class:`custom.schedules.BetaSchedule`).

        Returns:
            scalar tensor.
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        if student_logits.ndim < 3:
            raise ValueError(f"expected (B, C, *spatial) logits, got shape {tuple(student_logits.shape)}")
        p_s = torch.softmax(student_logits, dim=1)
        p_t = torch.softmax(teacher_logits.detach(), dim=1)
        h_s = voxel_entropy(p_s)
        h_t = voxel_entropy(p_t)
        weight = 1.0 / (torch.exp(beta * h_s) + torch.exp(beta * h_t))
        squared_error = (p_s - p_t).pow(2).sum(dim=1)
        return (weight * squared_error + beta * (h_s + h_t)).mean()
