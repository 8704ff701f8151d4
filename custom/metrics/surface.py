"""Binary overlap and surface-distance metrics for one case (numpy / scipy.ndimage).

Two families of surface-distance figures are provided (see ``docs/dycon_method.md`` section 4):

``mode="mm"`` (primary figures)
    Distances in physical units, using the voxel ``spacing`` of the image (normally millimetres).
    Undefined values are reported as ``NaN`` (see the empty-mask rules below); summaries should use
    ``nanmean`` and report how many cases were ``NaN``.

``mode="voxel"`` ("paper-compatible")
    Reproduces the figures of the DyCON / UA-MT family of papers, which call medpy's ``hd95`` / ``asd``
    WITHOUT voxel spacing (distances in voxel units, every axis of length 1) and score an empty prediction
    as HD95 = ASD = 0 (``calculate_metric_percase`` of the released code). The spacing argument is ignored.

Definitions (re-implemented from their published description; medpy itself is not used):

* surface of a mask ``M`` = ``M XOR binary_erosion(M, generate_binary_structure(ndim, 1))`` with
  ``border_value=0`` (so a mask touching the volume border has its border voxels on the surface);
* directed surface distances ``A -> B`` = for every surface voxel of ``A``, the Euclidean distance
  (``distance_transform_edt`` with ``sampling=spacing``) to the nearest surface voxel of ``B``;
* ``hd95`` = 95th percentile (``numpy.percentile``, linear interpolation) of the POOLED distances of both
  directions (``concatenate(pred->ref, ref->pred)``). Note: MONAI's ``HausdorffDistanceMetric(percentile=95)``
  instead takes the max of the two directed 95th percentiles, so its values differ;
* ``asd`` = mean of the DIRECTED distances prediction -> reference (not symmetric);
* ``assd`` = mean of ``asd(pred, ref)`` and ``asd(ref, pred)`` (symmetric).

Empty-mask rules for the surface distances (``hd95``, ``asd``, ``assd``):

=====================  ==============  =========================================
pred / ref             ``mode="mm"``   ``mode="voxel"`` (paper-compatible)
=====================  ==============  =========================================
both empty             0.0             0.0
pred empty, ref not    NaN             0.0  (paper rule; flatters missed objects)
ref empty, pred not    NaN             NaN  (undefined; medpy raises)
both non-empty         distance        distance (voxel units)
=====================  ==============  =========================================

Both empty counts as perfect agreement (0.0) in both modes, consistent with ``dice = iou = 1.0`` then.

Overlap: ``dice = 2|A∩B| / (|A| + |B|)``, ``iou = |A∩B| / |A∪B|``; both empty -> 1.0 (perfect
agreement). An empty prediction with a non-empty reference gives 0.0 as the formula says (as the papers).

Inputs are numpy arrays or torch tensors of identical shape (e.g. ``(X, Y, Z)``); any non-zero value is
foreground (the masks are cast with ``astype(bool)``). ``spacing`` is a sequence of one float per axis
(or a single float for all axes); ``None`` means 1.0 per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "MODES",
    "to_numpy_mask",
    "surface_mask",
    "surface_distances",
    "hd95",
    "asd",
    "assd",
    "dice",
    "iou",
    "case_metrics",
    "CASE_METRIC_NAMES",
]

MODES = ("mm", "voxel")

#: Keys of :func:`case_metrics`, in this order (also the column order of ``CaseMetrics``).
CASE_METRIC_NAMES = ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def to_numpy_mask(x: Any) -> np.ndarray:
    """Convert a numpy array / torch tensor (MetaTensor included) / array-like to a numpy bool mask."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            if hasattr(x, "as_tensor"):  # monai MetaTensor -> plain tensor
                x = x.as_tensor()
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        pass
    return np.atleast_1d(np.asarray(x)).astype(bool)


def _check_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p, r = to_numpy_mask(pred), to_numpy_mask(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    return p, r


def _normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        sp = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        sp = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(sp) != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {len(sp)}: {sp}.")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing values must be finite and > 0, got {sp}.")
    return sp


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    return mode


# ----------------------------------------------------------------------------------------------------------------------
# surfaces
# ----------------------------------------------------------------------------------------------------------------------
def surface_mask(mask: Any) -> np.ndarray:
    """Surface voxels of a binary mask: ``mask XOR erosion(mask)`` with a face-connected (connectivity 1)
    structuring element; voxels on the volume border count as surface (``border_value=0``)."""
    m = to_numpy_mask(mask)
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m ^ ndimage.binary_erosion(m, structure=structure, iterations=1, border_value=0)


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a 1-voxel margin (clipped to the volume).

    Exact for the surface distances: every surface voxel lies inside the box, Euclidean distances do not depend
    on the box, and the margin keeps the erosion identical (outside the box is background either way)."""
    union = p | r
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other)) if other else np.flatnonzero(union)
        lo, hi = max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])
        slices.append(slice(lo, hi))
    s = tuple(slices)
    return p[s], r[s]


def _surfaces(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface masks of two non-empty masks, cropped to their joint bounding box."""
    pc, rc = _crop_to_union(p, r)
    return surface_mask(pc), surface_mask(rc)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances from each surface voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    dt = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return np.asarray(dt[from_surface], dtype=np.float64)


def surface_distances(
    pred: Any, ref: Any, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(pred -> ref, ref -> pred)`` as 1-D float64 arrays (physical units of
    ``spacing``; ``None`` = voxel units). Raises ``ValueError`` if either mask is empty."""
    p, r = _check_pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        raise ValueError("surface distances are undefined for an empty mask.")
    sp_, sr = _surfaces(p, r)
    return _directed(sp_, sr, sp), _directed(sr, sp_, sp)


def _empty_rule(p_any: bool, r_any: bool, mode: str) -> float | None:
    """Value dictated by the empty-mask rules, or ``None`` when both masks are non-empty."""
    if p_any and r_any:
        return None
    if not p_any and not r_any:
        return 0.0
    if not p_any:  # empty prediction, non-empty reference
        return 0.0 if mode == "voxel" else float("nan")
    return float("nan")  # empty reference, non-empty prediction: undefined in both modes


def _pair_distances(pred: Any, ref: Any, spacing: Any, mode: str) -> tuple[float | None, Any, Any]:
    _check_mode(mode)
    p, r = _check_pair(pred, ref)
    sp = (1.0,) * p.ndim if mode == "voxel" else _normalize_spacing(spacing, p.ndim)
    rule = _empty_rule(bool(p.any()), bool(r.any()), mode)
    if rule is not None:
        return rule, None, None
    s_p, s_r = _surfaces(p, r)
    return None, (s_p, s_r), sp


def hd95(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None, mode: str = "mm") -> float:
    """95th percentile of the pooled symmetric surface distances (medpy definition).

    Args:
        pred: predicted binary mask, numpy array or torch tensor, e.g. ``(X, Y, Z)``.
        ref: reference binary mask, same shape.
        spacing: voxel size per axis (``mode="mm"`` only; ``None`` = 1.0 per axis). Ignored in voxel mode.
        mode: ``"mm"`` (physical distances, NaN when exactly one mask is empty) or ``"voxel"``
            (paper-compatible: voxel units, empty prediction -> 0.0, empty reference with a prediction -> NaN).
            Both masks empty -> 0.0 in both modes.
    """
    rule, surfs, sp = _pair_distances(pred, ref, spacing, mode)
    if rule is not None:
        return rule
    s_p, s_r = surfs
    pooled = np.concatenate([_directed(s_p, s_r, sp), _directed(s_r, s_p, sp)])
    return float(np.percentile(pooled, 95))


def asd(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None, mode: str = "mm") -> float:
    """Average surface distance, DIRECTED from the prediction surface to the reference surface (medpy ``asd``).

    Arguments and empty-mask rules as :func:`hd95`.
    """
    rule, surfs, sp = _pair_distances(pred, ref, spacing, mode)
    if rule is not None:
        return rule
    s_p, s_r = surfs
    return float(_directed(s_p, s_r, sp).mean())


def assd(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None, mode: str = "mm") -> float:
    """Average symmetric surface distance: mean of ``asd(pred, ref)`` and ``asd(ref, pred)`` (medpy ``assd``).

    Arguments and empty-mask rules as :func:`hd95`.
    """
    rule, surfs, sp = _pair_distances(pred, ref, spacing, mode)
    if rule is not None:
        return rule
    s_p, s_r = surfs
    return float((_directed(s_p, s_r, sp).mean() + _directed(s_r, s_p, sp).mean()) / 2.0)


def dice(pred: Any, ref: Any) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)``; both masks empty -> 1.0 (an empty prediction with a non-empty
    reference gives 0.0)."""
    p, r = _check_pair(pred, ref)
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, r).sum() / denom)


def iou(pred: Any, ref: Any) -> float:
    """Intersection over union (Jaccard) ``|A∩B| / |A∪B|``; both masks empty -> 1.0."""
    p, r = _check_pair(pred, ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(p, r).sum() / union)


def case_metrics(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None) -> dict[str, float]:
    """All per-case figures at once (surfaces computed once).

    Returns a dict with keys ``dice, iou, hd95_mm, asd_mm, hd95_voxel, asd_voxel`` (see :data:`CASE_METRIC_NAMES`):
    ``*_mm`` use ``spacing`` (``None`` = 1.0 per axis, then they equal the voxel figures except for the
    empty-prediction rule) and ``*_voxel`` are the paper-compatible medpy figures without spacing. The empty-mask
    rules are those of :func:`hd95` / :func:`asd` (module docstring).
    """
    p, r = _check_pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    out = {"dice": dice(p, r), "iou": iou(p, r)}
    p_any, r_any = bool(p.any()), bool(r.any())
    if p_any and r_any:
        s_p, s_r = _surfaces(p, r)
        ones = (1.0,) * p.ndim
        for suffix, sampling in (("mm", sp), ("voxel", ones)):
            if suffix == "voxel" and sampling == sp:  # identical spacing: reuse the mm figures
                out["hd95_voxel"], out["asd_voxel"] = out["hd95_mm"], out["asd_mm"]
                continue
            d_pr = _directed(s_p, s_r, sampling)
            d_rp = _directed(s_r, s_p, sampling)
            out[f"hd95_{suffix}"] = float(np.percentile(np.concatenate([d_pr, d_rp]), 95))
            out[f"asd_{suffix}"] = float(d_pr.mean())
    else:
        for mode in MODES:
            v = _empty_rule(p_any, r_any, mode)
            out[f"hd95_{mode}"] = v  # type: ignore[assignment]
            out[f"asd_{mode}"] = v  # type: ignore[assignment]
    return {k: out[k] for k in CASE_METRIC_NAMES}
