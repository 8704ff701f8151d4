"""Lesion-wise detection metrics for one case, as the ISLES'22 challenge computes them.

Re-implemented (numpy / ``scipy.ndimage``, no ``cc3d``) from the challenge's published evaluation code
(``ezequieldlrosa/isles22``, ``utils/eval_utils.py``: ``compute_absolute_lesion_difference``,
``compute_lesion_f1_score``, ``compute_absolute_volume_difference``):

* a *lesion* is a connected component of a binary mask, with FULL connectivity: 26 neighbours in 3-D (the
  challenge calls ``cc3d.connected_components(..., connectivity=26)``; here ``scipy.ndimage.label`` with a
  ``3x3x3`` structure of ones, which gives the same components). Two voxels touching only by an edge or a corner
  belong to the same lesion;
* **lesion count difference** = ``|#components(pred) - #components(ref)|`` (an integer; 0 is best);
* lesion-wise detection, counted on components:

  - TP = reference lesions that overlap the prediction in at least one voxel,
  - FN = reference lesions with no voxel in the prediction,
  - FP = predicted components with no voxel in the reference;

  **lesion-wise F1** = ``TP / (TP + (FP + FN) / 2)``. One predicted component covering two reference lesions
  makes both of them TPs; a predicted component that touches a reference lesion is never an FP, however large;
* **absolute volume difference** = ``|sum(pred) - sum(ref)| * voxel volume``, in millilitres (``prod(spacing)``
  mm^3 / 1000).

Empty-mask rules (the challenge's ``empty_value=1.0`` and what its formula gives otherwise):

=====================  ===============  =======================  ====================
pred / ref             ``lesion_f1``    ``lesion_count_diff``    ``volume_diff_ml``
=====================  ===============  =======================  ====================
both empty             1.0 (perfect)    0                        0.0
pred empty, ref not    0.0 (all FN)     number of ref lesions    ref volume
ref empty, pred not    0.0 (all FP)     number of pred lesions   pred volume
=====================  ===============  =======================  ====================

So a case without any lesion that is predicted empty counts as a perfect detection (1.0), and ANY false-positive
component on a lesion-free case gives 0.0. No value is ever NaN, so a mean over cases includes the lesion-free
cases (the real ISLES'22 training set has 3 of them: ``volume`` 0 in the split files).

Inputs are numpy arrays or torch tensors (MetaTensor included) of identical shape; any non-zero value is
foreground. Leading singleton axes (a channel / batch axis of size 1, e.g. ``(1, X, Y, Z)``) are dropped first, so
connectivity and ``spacing`` refer to the spatial axes; 2-D masks use 8-connectivity by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .surface import _normalize_spacing, to_numpy_mask

__all__ = [
    "LESION_METRIC_NAMES",
    "count_lesions",
    "label_lesions",
    "lesion_count_difference",
    "lesion_detection",
    "lesion_f1",
    "lesion_metrics",
    "volume_difference_ml",
]

#: Keys of :func:`lesion_metrics`, in this order.
LESION_METRIC_NAMES = ("lesion_f1", "lesion_count_diff", "n_ref_lesions", "n_pred_lesions", "volume_diff_ml")


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def _spatial(mask: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes beyond the third: ``(1, X, Y, Z)`` -> ``(X, Y, Z)``."""
    while mask.ndim > 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim > 3:
        raise ValueError(
            f"expected a 2-D or 3-D mask (optionally with leading axes of size 1), got shape {mask.shape}."
        )
    return mask


def _as_mask(x: Any) -> np.ndarray:
    return _spatial(to_numpy_mask(x))


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p, r = to_numpy_mask(pred), to_numpy_mask(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    return _spatial(p), _spatial(r)


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """Structuring element for ``ndimage.label``: ``connectivity`` is a neighbour count (6/18/26 in 3-D, 4/8 in 2-D);
    ``None`` is full connectivity (26 in 3-D, the challenge's choice)."""
    if connectivity is None:
        return ndimage.generate_binary_structure(ndim, ndim)
    options = {}
    for rank in range(1, ndim + 1):
        s = ndimage.generate_binary_structure(ndim, rank)
        options[int(s.sum()) - 1] = s
    if isinstance(connectivity, bool) or connectivity not in options:
        raise ValueError(f"connectivity for {ndim}-D masks must be one of {sorted(options)}, got {connectivity!r}.")
    return options[connectivity]


# ----------------------------------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------------------------------
def label_lesions(mask: Any, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: ``(labels int32 array, number of lesions)`` (full connectivity by
    default: 26 in 3-D)."""
    m = _as_mask(mask)
    if not m.any():
        return np.zeros(m.shape, dtype=np.int32), 0
    labels, n = ndimage.label(m, structure=_structure(m.ndim, connectivity))
    return labels, int(n)


def count_lesions(mask: Any, connectivity: int | None = None) -> int:
    """Number of connected components (lesions) of a binary mask (full connectivity by default: 26 in 3-D)."""
    return label_lesions(mask, connectivity)[1]


def lesion_count_difference(pred: Any, ref: Any, connectivity: int | None = None) -> int:
    """Absolute difference of the numbers of lesions (connected components) of ``pred`` and ``ref``; 0 when both are
    empty (ISLES'22 ``compute_absolute_lesion_difference``)."""
    p, r = _pair(pred, ref)
    return abs(count_lesions(p, connectivity) - count_lesions(r, connectivity))


def _detection(p: np.ndarray, r: np.ndarray, connectivity: int | None) -> dict[str, int]:
    lab_r, n_r = label_lesions(r, connectivity)
    lab_p, n_p = label_lesions(p, connectivity)
    overlap = p & r
    hit_r = np.unique(lab_r[overlap])
    hit_p = np.unique(lab_p[overlap])
    tp = int(np.count_nonzero(hit_r))  # labels > 0 only (overlap voxels are foreground, so never 0 anyway)
    return {"tp": tp, "fn": n_r - tp, "fp": n_p - int(np.count_nonzero(hit_p)), "n_ref": n_r, "n_pred": n_p}


def lesion_detection(pred: Any, ref: Any, connectivity: int | None = None) -> dict[str, int]:
    """Lesion-wise counts ``{"tp", "fp", "fn", "n_ref", "n_pred"}``.

    TP: reference lesions overlapping the prediction in >= 1 voxel; FN: the other reference lesions; FP: predicted
    components with no voxel in the reference (so ``tp + fn == n_ref`` and ``fp <= n_pred``).
    """
    p, r = _pair(pred, ref)
    return _detection(p, r, connectivity)


def _f1(counts: dict[str, int], empty_value: float) -> float:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    if tp + fp + fn == 0:  # only when both masks are empty
        return float(empty_value)
    return float(tp / (tp + (fp + fn) / 2.0))


def lesion_f1(pred: Any, ref: Any, empty_value: float = 1.0, connectivity: int | None = None) -> float:
    """Lesion-wise F1 ``TP / (TP + (FP + FN) / 2)`` (ISLES'22 ``compute_lesion_f1_score``).

    Both masks empty -> ``empty_value`` (1.0, the challenge's default: a perfect detection); exactly one empty ->
    0.0 (what the formula gives: all reference lesions missed, or all predicted components false positives).
    """
    p, r = _pair(pred, ref)
    return _f1(_detection(p, r, connectivity), empty_value)


def volume_difference_ml(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None) -> float:
    """Absolute volume difference in millilitres: ``|sum(pred) - sum(ref)| * prod(spacing) / 1000`` (``spacing`` in
    mm per spatial axis; ``None`` = 1 mm per axis)."""
    p, r = _pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    return float(abs(int(p.sum()) - int(r.sum())) * float(np.prod(sp)) / 1000.0)


def lesion_metrics(
    pred: Any,
    ref: Any,
    spacing: float | Sequence[float] | None = None,
    connectivity: int | None = None,
    empty_value: float = 1.0,
) -> dict[str, float | int]:
    """All lesion-wise figures of one case at once (components labelled once).

    Returns ``{"lesion_f1": float, "lesion_count_diff": int, "n_ref_lesions": int, "n_pred_lesions": int,
    "volume_diff_ml": float}`` (:data:`LESION_METRIC_NAMES`). ``spacing`` is the voxel size in mm of the spatial axes
    (``None`` = 1 mm each, then ``volume_diff_ml`` is in units of 1000 voxels); empty-mask rules in the module
    docstring (never NaN).
    """
    p, r = _pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    counts = _detection(p, r, connectivity)
    return {
        "lesion_f1": _f1(counts, empty_value),
        "lesion_count_diff": abs(counts["n_pred"] - counts["n_ref"]),
        "n_ref_lesions": counts["n_ref"],
        "n_pred_lesions": counts["n_pred"],
        "volume_diff_ml": float(abs(int(p.sum()) - int(r.sum())) * float(np.prod(sp)) / 1000.0),
    }
