"""Voxels -> feature-grid patches: ground-truth patch labels, teacher pseudo-labels, pooled entropy."""

from __future__ import annotations

import math

import pytest
import torch

from custom.losses import IGNORE_INDEX, mask_to_patch_labels, pool_to_grid, pooled_entropy, teacher_patch_labels


def _cells(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, X, Y, Z) -> (B, N, cell voxels): the voxels of each grid cell, cells in C order (reference pooling)."""
    b, sx, sy, sz = x.shape
    gx, gy, gz = grid
    cx, cy, cz = sx // gx, sy // gy, sz // gz
    v = x.reshape(b, gx, cx, gy, cy, gz, cz).permute(0, 1, 3, 5, 2, 4, 6)
    return v.reshape(b, gx * gy * gz, cx * cy * cz)


def test_mask_to_patch_labels_threshold_and_tie():
    """A 4^3 mask on a 2^3 grid: each cell has 8 voxels; fraction > 0.5 -> 1, exactly 0.5 -> 0."""
    counts = [0, 3, 4, 5, 8, 4, 7, 1]  # foreground voxels per cell, cells in C order of the grid
    mask = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    for cell, c in enumerate(counts):
        i, j, k = cell // 4, (cell // 2) % 2, cell % 2
        block = torch.zeros(8, dtype=torch.long)
        block[:c] = 1
        mask[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2] = block.reshape(2, 2, 2)
    labels = mask_to_patch_labels(mask, (2, 2, 2))
    assert labels.dtype == torch.int64 and labels.shape == (1, 8)
    assert labels.tolist() == [[0, 0, 0, 1, 1, 0, 1, 0]]
    # (B, *spatial) without the channel axis gives the same, and float masks too
    assert torch.equal(mask_to_patch_labels(mask[:, 0], (2, 2, 2)), labels)
    assert torch.equal(mask_to_patch_labels(mask.float(), (2, 2, 2)), labels)


@pytest.mark.parametrize("spatial, grid", [((8, 12, 4), (2, 3, 1)), ((6, 6, 6), (3, 3, 3)), ((16, 8, 8), (4, 2, 2))])
def test_mask_to_patch_labels_matches_block_mean(spatial, grid):
    g = torch.Generator().manual_seed(sum(spatial))
    mask = (torch.rand(3, 1, *spatial, generator=g) < 0.5).long()
    labels = mask_to_patch_labels(mask, grid)
    expected = (_cells(mask[:, 0].double(), grid).mean(-1) > 0.5).long()
    assert labels.shape == (3, math.prod(grid))
    assert torch.equal(labels, expected)


def test_mask_with_two_channels_is_refused():
    with pytest.raises(ValueError):
        mask_to_patch_labels(torch.zeros(1, 2, 4, 4, 4), (2, 2, 2))


def test_pool_to_grid_shapes_and_errors():
    x = torch.arange(2 * 3 * 4 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4, 4)
    out = pool_to_grid(x, (2, 2, 2))
    assert out.shape == (2, 3, 2, 2, 2)
    assert out[1, 2, 1, 0, 1].item() == pytest.approx(x[1, 2, 2:4, 0:2, 2:4].mean().item())
    assert pool_to_grid(torch.ones(1, 1, 6, 4), (3, 2)).shape == (1, 1, 3, 2)
    with pytest.raises(ValueError):
        pool_to_grid(x, (2, 2))
    with pytest.raises(ValueError):
        pool_to_grid(torch.ones(1, 1, 2, 2, 2, 2), (1, 1, 1, 1))


def _probs_from_fg(fg: torch.Tensor) -> torch.Tensor:
    """(B, *spatial) foreground probability -> (B, 2, *spatial)."""
    return torch.stack([1.0 - fg, fg], 1)


def test_teacher_patch_labels_argmax_pooling_and_threshold():
    # a 4x2x2 volume, grid (2, 1, 1): two cells of 8 voxels
    fg = torch.empty(1, 4, 2, 2, dtype=torch.float64)
    # cell 0: 6 voxels predicted foreground with p = 0.9, 2 background with p(bg) = 0.7 -> label 1, conf 0.85
    fg[0, :2] = 0.9
    fg[0, 0, 0, :] = 0.3
    # cell 1: 4 foreground (p 0.55) and 4 background (p(bg) 0.6) -> tie -> label 0, conf 0.575
    fg[0, 2:] = 0.55
    fg[0, 2] = 0.4
    probs = _probs_from_fg(fg)
    assert teacher_patch_labels(probs, (2, 1, 1)).tolist() == [[1, 0]]
    assert teacher_patch_labels(probs, (2, 1, 1), threshold=0.0).tolist() == [[1, 0]]
    assert teacher_patch_labels(probs, (2, 1, 1), threshold=0.57).tolist() == [[1, 0]]
    assert teacher_patch_labels(probs, (2, 1, 1), threshold=0.6).tolist() == [[1, IGNORE_INDEX]]
    assert teacher_patch_labels(probs, (2, 1, 1), threshold=0.86).tolist() == [[IGNORE_INDEX, IGNORE_INDEX]]
    assert IGNORE_INDEX == -1


def test_teacher_patch_labels_equal_mask_labels_of_the_argmax():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 2, 8, 8, 8, generator=g)
    probs = torch.softmax(logits, 1)
    labels = teacher_patch_labels(probs, (2, 2, 2))
    assert labels.shape == (2, 8) and labels.dtype == torch.int64
    assert torch.equal(labels, mask_to_patch_labels(probs.argmax(1, keepdim=True), (2, 2, 2)))
    conf = _cells(probs.max(1).values.double(), (2, 2, 2)).mean(-1)
    thr = float(conf.median())
    masked = teacher_patch_labels(probs, (2, 2, 2), threshold=thr)
    assert torch.equal(masked == IGNORE_INDEX, conf < thr)
    assert torch.equal(masked[conf >= thr], labels[conf >= thr])


def test_pooled_entropy_values():
    # cell 0: all voxels uniform (H = -log(0.5 + 1e-6)); cell 1: half certain (H ~ -1e-6), half uniform
    fg = torch.full((1, 4, 2, 2), 0.5, dtype=torch.float64)
    fg[0, 2:3] = 1.0
    probs = _probs_from_fg(fg)
    h = pooled_entropy(probs, (2, 1, 1))
    h_uniform = -math.log(0.5 + 1e-6)
    h_certain = -(1.0 * math.log(1.0 + 1e-6) + 0.0)
    assert h.shape == (1, 2)
    assert h[0, 0].item() == pytest.approx(h_uniform, rel=1e-6)
    assert h[0, 1].item() == pytest.approx((h_uniform + h_certain) / 2, rel=1e-6)


def test_pooled_entropy_detached_and_matches_reference():
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 3, 4, 6, 2, generator=g, requires_grad=True)
    probs = torch.softmax(logits, 1)
    h = pooled_entropy(probs, (2, 3, 1))
    assert h.shape == (2, 6) and not h.requires_grad
    p = probs.detach()
    voxel = -(p * torch.log(p + 1e-6)).sum(1)
    torch.testing.assert_close(h, _cells(voxel, (2, 3, 1)).mean(-1), rtol=1e-6, atol=1e-7)
