"""FeCL: the focal entropy-aware contrastive loss of DyCON (method doc, section 2).

Two variants ship:

* ``"paper"``: the equations of the paper (focal positive / negative weights, entropy factor, top-K teacher hard
  negatives in the denominator), computed in log space.
* ``"official"``: the mathematics of the authors' released code (focal supervised contrastive term plus a
  hard cross-pair term against the teacher embeddings), without its per-column max-shift bug.

Contrast is within each volume only: every tensor of pairs is (B, N, N), never (B*N, B*N).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn.modules.loss import _Loss

from ..flags import as_bool
from ..schedules import cross_threshold

__all__ = ["FeCLLoss"]

# A finite stand-in for log(0): exp() of it is exactly 0 in float32/64, and it keeps gradients finite.
_LOG_ZERO = -1.0e4
# Below this temperature exp(S - 1/tau) >= exp(-2/tau) could underflow in float32: the paper variant then sums its
# denominator in log space instead.
_LINEAR_MIN_TAU = 0.05


class FeCLLoss(_Loss):
    """Focal entropy-aware contrastive loss over feature-grid patches.

    Notation (per volume): ``z`` (N, D) unit-norm student embeddings, ``zt`` the teacher's, ``y`` patch labels
    (-1 = ignored: neither anchor nor pair), ``S_ij = z_i . z_j / tau``, ``P(i) = {k != i: y_k = y_i}``,
    ``N(i) = {q: y_q != y_i}``.

    ``variant="paper"``::

        F+_ik  = (1 - clamp(cos_ik, 0, 1))^gamma * exp(H_i)        (detached)
        F-_iq  = clamp(cos_iq, 0, 1)^gamma                          (detached, 0^0 = 1)
        hard_i = mean of exp(z_i . zt_l / tau) over the top-K teacher negatives l in N(i)  (0 without teacher)
        D_ik   = exp(S_ik) + sum_{q in N(i)} F-_iq * (exp(S_iq) + hard_i)
        L_i    = 1/|P(i)| * sum_{k in P(i)} F+_ik * (log D_ik - S_ik)
        L      = mean of L_i over the anchors with at least one positive

    ``variant="official"``::

        P_ik  = exp(S_ik) / (exp(S_ik) + sum_{q in N(i)} exp(S_iq))
        L_i   = 1/|P(i)| * sum_{k in P(i)} (1 - P_ik)^gamma * (-log P_ik)
        L_stu = mean of L_i over all (non-ignored) anchors
        L_x   = mean over pairs {y_i != y_j, z_i . zt_j > thr(step)} of -log(1 - z_i . zt_j + 1e-18)
        L     = L_stu + cross_weight * L_x,   thr(e) = 0.3 + 0.2 exp(-5 (1 - min(e, R)/R)^2), R = cross_ramp

    When no anchor qualifies the result is a zero that is still connected to the graph.

    Args:
        variant: ``"paper"`` or ``"official"``.
        temperature: tau.
        gamma: focal exponent (0 gives the plain supervised contrastive loss).
        top_k: K, the number of teacher hard negatives per anchor (``"paper"``).
        cross_weight: lambda_cross of the ``"official"`` cross term.
        cross_ramp: R, the ramp length (in the unit of ``step``) of the cross threshold.
        use_entropy: multiply the positive weights by ``exp(H_i)`` when an entropy is given (``"paper"``).
        use_hard_negatives: add the teacher hard-negative term (``"paper"``) / the cross term (``"official"``)
            when teacher embeddings are given.
    """

    def __init__(
        self,
        variant: Literal["paper", "official"] = "official",
        temperature: float = 0.6,
        gamma: float = 2.0,
        top_k: int = 16,
        cross_weight: float = 1.0,
        cross_ramp: float = 1500.0,
        use_entropy: bool = True,
        use_hard_negatives: bool = True,
    ) -> None:
        super().__init__(reduction="mean")
        if variant not in ("paper", "official"):
            raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.variant = variant
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.top_k = int(top_k)
        self.cross_weight = float(cross_weight)
        self.cross_ramp = float(cross_ramp)
        self.use_entropy = as_bool(use_entropy, "use_entropy")
        self.use_hard_negatives = as_bool(use_hard_negatives, "use_hard_negatives")

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        teacher_embeddings: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        step: float = 0,
    ) -> torch.Tensor:
        """
        Args:
            embeddings: (B, N, D) unit-norm student embeddings.
            labels: (B, N) integer patch labels, -1 = ignored.
            teacher_embeddings: (B, N, D) unit-norm teacher embeddings (no gradient), optional.
            entropy: (B, N) mean student voxel entropy per patch (detached), optional (``"paper"`` only).
            step: training progress for the ``"official"`` cross threshold.

        Returns:
            scalar tensor.
        """
        if embeddings.ndim != 3:
            raise ValueError(f"embeddings must be (B, N, D), got shape {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:2]:
            raise ValueError(f"labels must be (B, N) = {tuple(embeddings.shape[:2])}, got {tuple(labels.shape)}")
        if teacher_embeddings is not None and teacher_embeddings.shape != embeddings.shape:
            raise ValueError(
                f"teacher_embeddings must match embeddings {tuple(embeddings.shape)}, "
                f"got {tuple(teacher_embeddings.shape)}"
            )
        if entropy is not None and entropy.shape != labels.shape:
            raise ValueError(f"entropy must be (B, N) = {tuple(labels.shape)}, got {tuple(entropy.shape)}")
        z = embeddings if embeddings.dtype in (torch.float32, torch.float64) else embeddings.float()
        zt = None
        if teacher_embeddings is not None and self.use_hard_negatives:
            zt = teacher_embeddings.detach().to(z.dtype)

        valid = labels >= 0
        n = labels.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=labels.device)
        pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)
        same = labels.unsqueeze(2) == labels.unsqueeze(1)
        pos = pair_valid & same & ~eye
        neg = pair_valid & ~same

        cos = torch.bmm(z, z.transpose(1, 2))  # (B, N, N)
        if self.variant == "paper":
            return self._paper(z, cos, pos, neg, zt, entropy)
        return self._official(z, cos, pos, neg, valid, zt, step)

    # ---------------------------------------------------------------- paper
    def _paper(
        self,
        z: torch.Tensor,
        cos: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        zt: torch.Tensor | None,
        entropy: torch.Tensor | None,
    ) -> torch.Tensor:
        sim = cos / self.temperature
        cos_d = cos.detach().clamp(0.0, 1.0)
        w_pos = (1.0 - cos_d).pow(self.gamma) if self.gamma != 0 else torch.ones_like(cos_d)
        if entropy is not None and self.use_entropy:
            w_pos = w_pos * torch.exp(entropy.detach().to(w_pos.dtype)).unsqueeze(2)

        # hard_i = mean of the top-K exp(z_i . zt_l / tau) over teacher negatives, kept as log_hard_i
        log_hard = None
        if zt is not None:
            cross = torch.bmm(z, zt.transpose(1, 2)).masked_fill(~neg, _LOG_ZERO * self.temperature)
            k = min(self.top_k, cross.shape[2])
            top = torch.topk(cross, k, dim=2).values / self.temperature  # (B, N, k)
            n_neg = neg.sum(dim=2, keepdim=True).clamp_max(k).clamp_min(1)
            log_hard = torch.logsumexp(top, dim=2, keepdim=True) - torch.log(n_neg.to(top.dtype))
        if self.temperature >= _LINEAR_MIN_TAU:
            # A_i = log sum_{q in N(i)} F-_iq (exp(S_iq) + hard_i), with the constant shift m = 1/tau >= S, log hard:
            # every exp() below is <= 1 (bounded, no overflow), and no N x N log / logaddexp is needed
            shift = 1.0 / self.temperature
            w_neg = (cos_d.pow(self.gamma) if self.gamma != 0 else torch.ones_like(cos_d)) * neg
            term = torch.exp(sim - shift)
            if log_hard is not None:
                term = term + torch.exp(log_hard - shift)
            neg_sum = (w_neg * term).sum(dim=2, keepdim=True)
            log_neg = shift + torch.log(neg_sum.clamp_min(torch.finfo(neg_sum.dtype).tiny))
        else:  # very small tau: exp(S - 1/tau) could underflow, stay in log space
            log_w_neg = (self.gamma * torch.log(cos_d)).clamp_min(_LOG_ZERO) if self.gamma != 0 else 0.0
            neg_term = sim if log_hard is None else torch.logaddexp(sim, log_hard)
            log_neg = torch.logsumexp((log_w_neg + neg_term).masked_fill(~neg, _LOG_ZERO), dim=2, keepdim=True)
        # log D_ik - S_ik = log(1 + exp(log_neg_i - S_ik))
        n_pos = pos.sum(dim=2)
        per_pair = (w_pos * torch.nn.functional.softplus(log_neg - sim)).masked_fill(~pos, 0.0)
        anchors = n_pos > 0
        per_anchor = per_pair.sum(dim=2) / n_pos.clamp_min(1)
        if not bool(anchors.any()):
            return z.sum() * 0.0
        return per_anchor[anchors].mean()

    # ------------------------------------------------------------- official
    def _official(
        self,
        z: torch.Tensor,
        cos: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        valid: torch.Tensor,
        zt: torch.Tensor | None,
        step: float,
    ) -> torch.Tensor:
        sim = cos / self.temperature
        if self.temperature >= _LINEAR_MIN_TAU:  # constant shift 1/tau >= S: bounded exps (see _paper)
            shift = 1.0 / self.temperature
            neg_sum = (torch.exp(sim - shift) * neg).sum(dim=2, keepdim=True)
            log_neg = shift + torch.log(neg_sum.clamp_min(torch.finfo(neg_sum.dtype).tiny))
        else:
            log_neg = torch.logsumexp(sim.masked_fill(~neg, _LOG_ZERO), dim=2, keepdim=True)
        # -log P_ik = softplus(A_i - S_ik) and 1 - P_ik = sigmoid(A_i - S_ik), A_i = log sum_{q in N(i)} exp(S_iq)
        margin = log_neg - sim
        nll = torch.nn.functional.softplus(margin)
        if self.gamma != 0:
            nll = torch.sigmoid(margin).pow(self.gamma) * nll
        n_pos = pos.sum(dim=2)
        per_anchor = nll.masked_fill(~pos, 0.0).sum(dim=2) / n_pos.clamp_min(1)
        if not bool(valid.any()):
            return z.sum() * 0.0
        loss = per_anchor[valid].mean()
        if zt is not None and self.cross_weight != 0:
            loss = loss + self.cross_weight * self.cross_term(z, zt, neg, step)
        return loss

    def cross_term(self, z: torch.Tensor, zt: torch.Tensor, neg: torch.Tensor, step: float) -> torch.Tensor:
        """``L_x`` of the ``"official"`` variant: mean of ``-log(1 - z_i . zt_j + 1e-18)`` over the hard cross pairs.

        Args:
            z: (B, N, D) student embeddings; zt: (B, N, D) teacher embeddings; neg: (B, N, N) pairs of different
            labels; step: progress for the threshold.
        """
        cross = torch.bmm(z, zt.transpose(1, 2))
        hard = neg & (cross > cross_threshold(step, self.cross_ramp))
        if not bool(hard.any()):
            return z.sum() * 0.0
        # fp32 rounding can put a dot product of unit vectors above 1: clamp, or the log of a negative is NaN
        return -torch.log(1.0 - cross[hard].clamp(max=1.0) + 1e-18).mean()

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, temperature={self.temperature}, gamma={self.gamma}, top_k={self.top_k}, "
            f"cross_weight={self.cross_weight}, cross_ramp={self.cross_ramp}"
        )
