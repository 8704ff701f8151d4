"""``CaseMetrics``: per-case Dice / IoU / HD95 / ASD (mm and paper-compatible voxel) as a MONAI cumulative metric.

Each case yields one row of :data:`~custom.metrics.surface.CASE_METRIC_NAMES`
(``dice, iou, hd95_mm, asd_mm, hd95_voxel, asd_voxel``) computed by
:func:`custom.metrics.surface.case_metrics`; see that module for the definitions and the empty-mask rules
(``*_mm``: NaN when exactly one mask is empty; ``*_voxel``: paper rule, empty prediction -> 0).
The physical spacing of every case is read from the affine of the ``y_pred`` MetaTensor (falling back to
``y``), so the ``*_mm`` figures are in the units of the affine (millimetres for NIfTI / NRRD data).

With ``lesion_metrics=True`` every row also carries the ISLES'22 lesion-wise figures of
:func:`custom.metrics.lesion.lesion_metrics` (:data:`~custom.metrics.lesion.LESION_METRIC_NAMES`:
``lesion_f1, lesion_count_diff, n_ref_lesions, n_pred_lesions, volume_diff_ml``), computed with the same spacing
(26-connected lesions; empty-mask rules in that module: never NaN). The columns of a metric are
:attr:`CaseMetrics.names` (an instance attribute), and :data:`EMPTY_RULES` states every column's value for an
empty prediction and/or an empty reference.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from .lesion import LESION_METRIC_NAMES
from .lesion import lesion_metrics as _lesion_metrics
from .spacing import spacings_from_batch
from .surface import CASE_METRIC_NAMES, case_metrics

__all__ = [
    "CaseMetrics",
    "summarize_case_metrics",
    "metric_names",
    "METRIC_UNITS",
    "LESION_METRIC_UNITS",
    "EMPTY_RULES",
    "INTEGER_METRICS",
]

#: Human-readable unit / provenance of each column, written into summaries.
METRIC_UNITS = {
    "dice": "fraction (both empty = 1)",
    "iou": "fraction, Jaccard (both empty = 1)",
    "hd95_mm": "mm (physical spacing from the affine; NaN if exactly one mask is empty) - primary",
    "asd_mm": "mm (directed pred->ref; NaN if exactly one mask is empty) - primary",
    "hd95_voxel": "voxels, paper-compatible medpy definition without spacing (empty prediction = 0)",
    "asd_voxel": "voxels, paper-compatible medpy definition, directed pred->ref (empty prediction = 0)",
}

#: Units of the lesion-wise columns (``CaseMetrics(lesion_metrics=True)``), ISLES'22 definitions.
LESION_METRIC_UNITS = {
    "lesion_f1": "unitless, in [0, 1]: lesion-wise F1 = TP / (TP + (FP + FN) / 2) over 26-connected lesions "
    "(ISLES'22); both empty = 1, exactly one empty = 0",
    "lesion_count_diff": "count of lesions: |#pred lesions - #ref lesions| (26-connectivity); 0 is best",
    "n_ref_lesions": "count of reference lesions (26-connected components)",
    "n_pred_lesions": "count of predicted lesions (26-connected components)",
    "volume_diff_ml": "ml: |pred volume - ref volume| (voxel volume from the affine spacing)",
}

#: Columns holding whole numbers (written without a decimal point).
INTEGER_METRICS = ("lesion_count_diff", "n_ref_lesions", "n_pred_lesions")

#: Value of every column when the prediction and / or the reference is empty (from ``surface.py`` and
#: ``lesion.py``). ``"n_ref"`` / ``"n_pred"`` = the number of lesions of the non-empty mask, ``"ref volume"`` /
#: ``"pred volume"`` = its volume in ml.
EMPTY_RULES: dict[str, dict[str, Any]] = {
    "both empty": {
        "dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0, "hd95_voxel": 0.0, "asd_voxel": 0.0,
        "lesion_f1": 1.0, "lesion_count_diff": 0, "n_ref_lesions": 0, "n_pred_lesions": 0, "volume_diff_ml": 0.0,
    },
    "prediction empty, reference not": {
        "dice": 0.0, "iou": 0.0, "hd95_mm": "nan", "asd_mm": "nan", "hd95_voxel": 0.0, "asd_voxel": 0.0,
        "lesion_f1": 0.0, "lesion_count_diff": "n_ref", "n_ref_lesions": "n_ref", "n_pred_lesions": 0,
        "volume_diff_ml": "ref volume",
    },
    "reference empty, prediction not": {
        "dice": 0.0, "iou": 0.0, "hd95_mm": "nan", "asd_mm": "nan", "hd95_voxel": "nan", "asd_voxel": "nan",
        "lesion_f1": 0.0, "lesion_count_diff": "n_pred", "n_ref_lesions": 0, "n_pred_lesions": "n_pred",
        "volume_diff_ml": "pred volume",
    },
}  # fmt: skip


def metric_names(lesion_metrics: bool = False) -> tuple[str, ...]:
    """Column order of :class:`CaseMetrics`: the six overlap / surface figures, then (``lesion_metrics=True``) the
    five lesion-wise ones."""
    return CASE_METRIC_NAMES + (LESION_METRIC_NAMES if lesion_metrics else ())


def summarize_case_metrics(values: Any, names: Sequence[str] = CASE_METRIC_NAMES) -> dict[str, dict[str, Any]]:
    """Summary statistics per column of an ``(N, len(names))`` array of per-case values.

    For every metric: ``mean`` (nanmean), ``std`` (nanstd, population ddof=0 as ``numpy.std``), ``median``
    (nanmedian), ``count`` (number of non-NaN values used), ``nan_count``. Statistics of a column with no
    finite value are ``None``.
    """
    arr = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, len(names))
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise ValueError(f"expected an (N, {len(names)}) array, got shape {arr.shape}.")
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        col = arr[:, j]
        valid = col[~np.isnan(col)]
        has = valid.size > 0
        out[name] = {
            "mean": float(valid.mean()) if has else None,
            "std": float(valid.std()) if has else None,
            "median": float(np.median(valid)) if has else None,
            "count": int(valid.size),
            "nan_count": int(col.size - valid.size),
        }
    return out


class CaseMetrics(CumulativeIterationMetric):
    """Cumulative per-case binary segmentation metrics.

    ``__call__(y_pred, y)`` accepts what MONAI post-transforms produce: batch-first tensors ``(B, C, *spatial)``
    or lists of channel-first tensors ``(C, *spatial)``, one-hot (``C == 2``: channel 1 is the foreground) or
    label / binary maps (``C == 1``: channel 0). Values ``> threshold`` are foreground. Each call appends one row
    per case to the buffer and returns the ``(B, len(names))`` float32 tensor of
    ``dice, iou, hd95_mm, asd_mm, hd95_voxel, asd_voxel`` (``B x 6``), followed with ``lesion_metrics=True`` by
    ``lesion_f1, lesion_count_diff, n_ref_lesions, n_pred_lesions, volume_diff_ml`` (``B x 11``).

    Spacing per case, first match wins: the ``spacing`` keyword of ``__call__`` (one spacing for the whole
    call); the ``spacing`` given to the
    constructor; the affine of ``y_pred`` if it is a MetaTensor; the affine of ``y``; otherwise 1.0 per axis
    (with a warning, then ``*_mm`` figures are in voxels). A mismatch between the ``y_pred`` and ``y`` affine
    spacings triggers a warning (``y_pred`` is used).

    Args:
        spacing: fixed voxel spacing for all cases (overrides the affines), or ``None``.
        channel: foreground channel; ``None`` = 1 when ``C == 2``, 0 when ``C == 1`` (error otherwise).
        threshold: foreground threshold on the selected channel (default 0.5).
        lesion_metrics: also compute the ISLES'22 lesion-wise figures (:func:`custom.metrics.lesion.lesion_metrics`,
            26-connectivity, same spacing) as five more columns. Default False (six columns).
    """

    #: the default columns; an instance with ``lesion_metrics=True`` has the eleven of :func:`metric_names`.
    names: tuple[str, ...] = CASE_METRIC_NAMES

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        channel: int | None = None,
        threshold: float = 0.5,
        lesion_metrics: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(lesion_metrics, bool):
            raise ValueError(f"lesion_metrics must be True or False, got {lesion_metrics!r}.")
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.channel = channel
        self.threshold = float(threshold)
        self.lesion_metrics = lesion_metrics
        self.names = metric_names(lesion_metrics)

    # -- computation ---------------------------------------------------------------------------------------------
    def _select(self, x: torch.Tensor) -> np.ndarray:
        if x.ndim < 3:
            raise ValueError(f"expected a batch-first (B, C, *spatial) tensor, got shape {tuple(x.shape)}.")
        c = x.shape[1]
        ch = self.channel
        if ch is None:
            if c == 2:
                ch = 1
            elif c == 1:
                ch = 0
            else:
                raise ValueError(f"{c} channels: pass `channel=` to choose the foreground channel.")
        t = x.as_tensor() if hasattr(x, "as_tensor") else x
        return t[:, ch].detach().float().cpu().numpy() > self.threshold

    def _spacings(self, y_pred: torch.Tensor, y: torch.Tensor | None, kw_spacing: Any) -> list:
        b, sd = int(y_pred.shape[0]), y_pred.ndim - 2
        fixed = kw_spacing if kw_spacing is not None else self.spacing
        if fixed is not None:
            return [tuple(float(v) for v in np.asarray(fixed, dtype=float).ravel())] * b
        sp_pred = spacings_from_batch(y_pred, b, sd)
        sp_ref = spacings_from_batch(y, b, sd) if y is not None else None
        if sp_pred is not None and sp_ref is not None:
            if not np.allclose(np.asarray(sp_pred), np.asarray(sp_ref), rtol=1e-3, atol=1e-5):
                warnings.warn(
                    f"spacing of y_pred {sp_pred} differs from spacing of y {sp_ref}; using y_pred.", stacklevel=3
                )
        sp = sp_pred if sp_pred is not None else sp_ref
        if sp is None:
            warnings.warn("no MetaTensor affine and no spacing given: using spacing 1.0 (mm figures in voxels).")
            sp = [(1.0,) * sd] * b
        return sp

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-case metrics of a batch: ``(B, len(names))`` float32 tensor (column order :attr:`names`)."""
        if y is None:
            raise ValueError("CaseMetrics needs the ground truth `y`.")
        if y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[2:]:
            raise ValueError(f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} do not match.")
        pred, ref = self._select(y_pred), self._select(y)
        spacings = self._spacings(y_pred, y, kwargs.get("spacing"))
        rows = []
        for b in range(pred.shape[0]):
            m: dict[str, Any] = case_metrics(pred[b], ref[b], spacings[b])
            if self.lesion_metrics:
                m.update(_lesion_metrics(pred[b], ref[b], spacings[b]))
            rows.append([m[k] for k in self.names])
        return torch.as_tensor(np.asarray(rows, dtype=np.float32).reshape(-1, len(self.names)))

    # -- results ---------------------------------------------------------------------------------------------------
    def _values(self) -> np.ndarray:
        data = self.get_buffer()
        if data is None:
            return np.zeros((0, len(self.names)), dtype=np.float64)
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        return data.detach().cpu().numpy().astype(np.float64).reshape(-1, len(self.names))

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """Mean of each metric over the cases, ignoring NaN (``nanmean``); NaN when a column has no value."""
        summ = summarize_case_metrics(self._values(), self.names)
        return {k: (float("nan") if v["mean"] is None else v["mean"]) for k, v in summ.items()}

    @property
    def per_case_rows(self) -> list[dict[str, float]]:
        """One dict per accumulated case (buffer order), keys :attr:`names`; NaN where undefined."""
        return [dict(zip(self.names, map(float, row))) for row in self._values()]

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{metric: {mean, std, median, count, nan_count}}`` (see :func:`summarize_case_metrics`)."""
        return summarize_case_metrics(self._values(), self.names)
