"""Voxel spacing of MONAI MetaTensors, read from their affine.

MONAI's Hausdorff / surface-distance handlers cannot be given a per-case spacing from the data; here the spacing
of axis ``i`` is the Euclidean norm of column ``i`` of the affine's rotation-zoom block (rows ``0..n-1`` of
an ``(n+1, n+1)`` affine), which is correct for any rotation / shear-free direction cosines and equals
``|diag|`` for axis-aligned affines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["spacing_from_affine", "spacing_from_meta", "spacings_from_batch"]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def spacing_from_affine(affine: Any, spatial_dims: int | None = None) -> tuple[float, ...]:
    """Spacing from one ``(n+1, n+1)`` affine (numpy / torch): norms of its first ``spatial_dims`` columns
    (rows ``0..n-1``). ``spatial_dims`` defaults to ``n``; a smaller value keeps the first axes (e.g. 2-D data
    carrying a 4x4 affine)."""
    a = _to_numpy(affine)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"expected a square (n+1, n+1) affine, got shape {a.shape}.")
    n = a.shape[0] - 1
    sd = n if spatial_dims is None else int(spatial_dims)
    if not 1 <= sd <= n:
        raise ValueError(f"spatial_dims must be in [1, {n}] for a {a.shape} affine, got {spatial_dims}.")
    return tuple(float(v) for v in np.linalg.norm(a[:n, :sd], axis=0))


def spacing_from_meta(tensor_or_meta: Any, spatial_dims: int | None = None) -> tuple[float, ...]:
    """Voxel spacing of ONE case.

    Args:
        tensor_or_meta: a MONAI ``MetaTensor`` (its ``.affine``), a meta dict (``"affine"`` key, else a
            ``"spacing"`` key as written by the ITK reader), or an affine array / tensor. A batched affine is
            accepted only with batch size 1 (use :func:`spacings_from_batch` for batches).
        spatial_dims: number of spatial axes to return (default: affine rank - 1).

    Returns:
        tuple of floats, one per spatial axis, in array-axis order.
    """
    x = tensor_or_meta
    if isinstance(x, torch.Tensor) and hasattr(x, "affine"):  # MetaTensor
        return spacing_from_affine(x.affine, spatial_dims)
    if isinstance(x, Mapping):
        if "affine" in x and x["affine"] is not None:
            return spacing_from_affine(x["affine"], spatial_dims)
        if "spacing" in x and x["spacing"] is not None:
            sp = tuple(float(v) for v in _to_numpy(x["spacing"]).ravel())
            return sp if spatial_dims is None else sp[:spatial_dims]
        raise ValueError("meta dict has neither an 'affine' nor a 'spacing' entry.")
    if isinstance(x, (np.ndarray, torch.Tensor, list, tuple)):
        return spacing_from_affine(x, spatial_dims)
    raise TypeError(f"cannot read a spacing from {type(x).__name__}.")


def spacings_from_batch(tensor: Any, batch_size: int | None = None, spatial_dims: int | None = None) -> list:
    """Per-case spacings of a batch-first MetaTensor ``(B, C, *spatial)``.

    Handles a batched affine ``(B, n+1, n+1)`` (collated batch) and a single affine ``(n+1, n+1)`` (a decollated
    item re-batched with ``unsqueeze(0)``, or a batch sharing one affine). ``spatial_dims`` defaults to
    ``tensor.ndim - 2``. Returns ``None`` if ``tensor`` carries no affine (plain tensor).
    """
    if not (isinstance(tensor, torch.Tensor) and hasattr(tensor, "affine")):
        return None  # type: ignore[return-value]
    b = int(tensor.shape[0]) if batch_size is None else int(batch_size)
    sd = tensor.ndim - 2 if spatial_dims is None else int(spatial_dims)
    aff = _to_numpy(tensor.affine)
    if aff.ndim == 2:
        return [spacing_from_affine(aff, sd)] * b
    if aff.ndim == 3:
        if aff.shape[0] == b:
            return [spacing_from_affine(a, sd) for a in aff]
        if aff.shape[0] == 1:
            return [spacing_from_affine(aff[0], sd)] * b
    raise ValueError(f"affine of shape {aff.shape} does not match batch size {b}.")
