"""The DyCON objective: ``L = DiceCE(labeled) + eta * (UnCL + FeCL)`` (method doc, sections 1-3)."""

from __future__ import annotations

from typing import Literal

import torch
from monai.losses import DiceCELoss
from torch import nn

from .fecl import FeCLLoss
from .patch_labels import mask_to_patch_labels, pooled_entropy, teacher_patch_labels
from .uncl import UnCLLoss

__all__ = ["DyCONLoss", "dycon_supervised_loss"]


def dycon_supervised_loss() -> DiceCELoss:
    """CE + Dice as in the released code: Dice with squared denominators, foreground only, over the labeled
    sub-batch jointly (``batch=True``), smoothing 1e-5."""
    return DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )


class DyCONLoss(nn.Module):
    """The full DyCON objective for a batch of ``L`` labeled volumes followed by ``U`` unlabeled volumes.

    ``total = supervised + eta * (uncl_weight * UnCL + fecl_weight * FeCL + mse_weight * MSE)``

    * supervised: :func:`dycon_supervised_loss` (MONAI DiceCELoss) on the labeled part only.
    * UnCL on every volume (student vs teacher logits).
    * FeCL on the volumes chosen by ``fecl_on``. Patch labels: ground truth for labeled volumes, the teacher's
      pooled argmax for unlabeled volumes with low-confidence cells ignored. Labels of unlabeled cases are never
      seen here: only ``L`` labels are passed.
    * MSE: the plain mean-teacher consistency (single softmax) on the ``U`` unlabeled volumes only, as the released
      loop computes it; weight 0 by default (not part of DyCON).

    Without teacher logits (no unlabeled data) only the supervised part is computed.

    Args:
        eta: weight of the unsupervised part (released code 0.5); can be overridden per call (ramp-up).
        fecl: the :class:`FeCLLoss` to use (default: ``FeCLLoss()``).
        uncl_weight, fecl_weight, mse_weight: weights inside the unsupervised part (ablations).
        fecl_on: which volumes enter FeCL: ``"all"``, ``"labeled"`` or ``"unlabeled"``.
        confidence_threshold: teacher confidence below which an unlabeled patch is ignored in FeCL.
        supervised: the supervised loss (default :func:`dycon_supervised_loss`).
        num_classes: C.
    """

    def __init__(
        self,
        eta: float = 0.5,
        fecl: FeCLLoss | None = None,
        uncl_weight: float = 1.0,
        fecl_weight: float = 1.0,
        mse_weight: float = 0.0,
        fecl_on: Literal["all", "labeled", "unlabeled"] = "all",
        confidence_threshold: float = 0.75,
        supervised: nn.Module | None = None,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        if fecl_on not in ("all", "labeled", "unlabeled"):
            raise ValueError(f"fecl_on must be 'all', 'labeled' or 'unlabeled', got {fecl_on!r}")
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.eta = float(eta)
        self.fecl = FeCLLoss() if fecl is None else fecl
        self.uncl = UnCLLoss()
        self.supervised = dycon_supervised_loss() if supervised is None else supervised
        self.uncl_weight = float(uncl_weight)
        self.fecl_weight = float(fecl_weight)
        self.mse_weight = float(mse_weight)
        self.fecl_on = fecl_on
        self.confidence_threshold = float(confidence_threshold)
        self.num_classes = int(num_classes)

    @property
    def needs_embeddings(self) -> bool:
        """Whether the student / teacher embeddings are used (FeCL active)."""
        return self.fecl_weight != 0.0

    def forward(
        self,
        student_logits: torch.Tensor,
        label: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        beta: float = 1.0,
        eta: float | None = None,
        student_embeddings: torch.Tensor | None = None,
        teacher_embeddings: torch.Tensor | None = None,
        step: float = 0,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            student_logits: (L + U, C, *spatial), labeled volumes first.
            label: (L, 1, *spatial) class indices of the labeled volumes only.
            teacher_logits: (L + U, C, *spatial) teacher logits on the noisy batch, or None (supervised only).
            beta: UnCL's beta at this iteration.
            eta: overrides ``self.eta`` (ramp-up).
            student_embeddings: (L + U, D, *grid) unit-norm, needed when ``fecl_weight != 0``.
            teacher_embeddings: (L + U, D, *grid) unit-norm, optional.
            step: iteration, for FeCL's cross threshold.

        Returns:
            dict with ``loss`` (the total, differentiable) and the parts ``supervised``, ``uncl``, ``fecl``, ``mse``
            (detached scalars, 0 when inactive).
        """
        n_lab = label.shape[0]
        if n_lab == 0 or n_lab > student_logits.shape[0]:
            raise ValueError(
                f"need 1..{student_logits.shape[0]} labeled volumes, got labels of shape {tuple(label.shape)}"
            )
        sup = self.supervised(student_logits[:n_lab], label)
        zero = sup.new_zeros(())
        parts = {"supervised": sup, "uncl": zero, "fecl": zero, "mse": zero}
        total = sup
        if teacher_logits is not None:
            eta = self.eta if eta is None else float(eta)
            unsup = zero
            if self.uncl_weight != 0:
                parts["uncl"] = self.uncl(student_logits, teacher_logits, beta)
                unsup = unsup + self.uncl_weight * parts["uncl"]
            if self.mse_weight != 0 and student_logits.shape[0] > n_lab:  # the unlabeled part only, as released
                diff = torch.softmax(student_logits[n_lab:], 1) - torch.softmax(teacher_logits[n_lab:].detach(), 1)
                parts["mse"] = diff.pow(2).mean()
                unsup = unsup + self.mse_weight * parts["mse"]
            if self.fecl_weight != 0:
                parts["fecl"] = self._fecl(
                    student_logits, label, teacher_logits, student_embeddings, teacher_embeddings, step
                )
                unsup = unsup + self.fecl_weight * parts["fecl"]
            total = total + eta * unsup
        out = {k: v.detach() for k, v in parts.items()}
        out["loss"] = total
        return out

    def _fecl(
        self,
        student_logits: torch.Tensor,
        label: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_embeddings: torch.Tensor | None,
        teacher_embeddings: torch.Tensor | None,
        step: float,
    ) -> torch.Tensor:
        if student_embeddings is None:
            raise ValueError("FeCL needs student embeddings: use a network with forward_with_embeddings")
        n_lab = label.shape[0]
        grid = student_embeddings.shape[2:]
        with torch.no_grad():
            lab_labels = mask_to_patch_labels(label, grid, self.num_classes)
            unl_labels = teacher_patch_labels(
                torch.softmax(teacher_logits[n_lab:].float(), 1), grid, self.confidence_threshold
            )
            labels = torch.cat([lab_labels, unl_labels], 0)
            entropy = pooled_entropy(torch.softmax(student_logits.detach(), 1), grid)
        rows = {"all": slice(None), "labeled": slice(0, n_lab), "unlabeled": slice(n_lab, None)}[self.fecl_on]
        z = student_embeddings.flatten(2).transpose(1, 2)[rows]
        zt = None if teacher_embeddings is None else teacher_embeddings.flatten(2).transpose(1, 2)[rows]
        if z.shape[0] == 0:
            return student_embeddings.sum() * 0.0
        return self.fecl(z, labels[rows], zt, entropy[rows], step=step)
