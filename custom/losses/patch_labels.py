"""From voxels to the feature grid of the projection head: patch labels and pooled entropy for FeCL.

A "patch" is one cell of the embedding grid (1/8 resolution for :class:`custom.networks.UNet3D`). Cells are the
adaptive average pooling cells from the voxel grid to the embedding grid, so any backbone's grid works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .uncl import voxel_entropy

__all__ = ["pool_to_grid", "mask_to_patch_labels", "teacher_patch_labels", "pooled_entropy", "IGNORE_INDEX"]

IGNORE_INDEX = -1


def pool_to_grid(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Mean of ``x`` over each grid cell.

    Args:
        x: (B, C, *spatial) float tensor with 1, 2 or 3 spatial dims.
        grid: target spatial shape (len == number of spatial dims).

    Returns:
        (B, C, *grid).
    """
    grid = tuple(int(g) for g in grid)
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    nd = x.ndim - 2
    if nd not in pools or len(grid) != nd:
        raise ValueError(f"cannot pool a tensor of shape {tuple(x.shape)} to grid {grid}")
    return pools[nd](x, grid)


def _fractions_to_labels(fractions: torch.Tensor) -> torch.Tensor:
    """(B, C, *grid) class fractions -> (B, N) labels: the class covering more than half of the cell.

    For two classes this is exactly "foreground fraction > 0.5" (a tie goes to the background, index 0).
    """
    return fractions.argmax(dim=1).flatten(1)


def mask_to_patch_labels(mask: torch.Tensor, grid: Sequence[int], num_classes: int = 2) -> torch.Tensor:
    """Ground-truth mask -> patch labels: each class's voxel fraction per cell, the class above 0.5 wins.

    Args:
        mask: (B, 1, *spatial) or (B, *spatial) integer class indices.
        grid: the embedding grid's spatial shape.
        num_classes: C.

    Returns:
        (B, N) int64 labels, N = prod(grid).
    """
    if mask.ndim == len(grid) + 1:
        mask = mask.unsqueeze(1)
    if mask.shape[1] != 1:
        raise ValueError(f"mask must have one channel of class indices, got shape {tuple(mask.shape)}")
    onehot = F.one_hot(mask[:, 0].long().clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
    return _fractions_to_labels(pool_to_grid(onehot, grid))


def teacher_patch_labels(teacher_probs: torch.Tensor, grid: Sequence[int], threshold: float = 0.0) -> torch.Tensor:
    """Teacher pseudo-labels per patch: the teacher's argmax pooled like the ground truth, with cells whose mean
    maximum probability is below ``threshold`` set to ``IGNORE_INDEX`` (neither anchor nor pair in FeCL).

    Args:
        teacher_probs: (B, C, *spatial) teacher softmax probabilities.
        grid: the embedding grid's spatial shape.
        threshold: confidence threshold in [0, 1]; 0 keeps every cell.

    Returns:
        (B, N) int64 labels with -1 for low-confidence cells.
    """
    num_classes = teacher_probs.shape[1]
    confidence, hard = teacher_probs.max(dim=1, keepdim=True)
    labels = mask_to_patch_labels(hard, grid, num_classes)
    if threshold > 0:
        cell_conf = pool_to_grid(confidence.float(), grid).flatten(1)
        labels = labels.masked_fill(cell_conf < threshold, IGNORE_INDEX)
    return labels


def pooled_entropy(probs: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Mean voxel entropy (natural log, not normalised) of the student per patch, detached.

    Args:
        probs: (B, C, *spatial) softmax probabilities.
        grid: the embedding grid's spatial shape.

    Returns:
        (B, N).
    """
    with torch.no_grad():
        return pool_to_grid(voxel_entropy(probs.float()).unsqueeze(1), grid).flatten(1)
