"""Tests of custom.metrics.surface against values computed independently (brute force numpy, no scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from custom.metrics.surface import (
    CASE_METRIC_NAMES,
    asd,
    assd,
    case_metrics,
    dice,
    hd95,
    iou,
    surface_distances,
    surface_mask,
)


# ----------------------------------------------------------------------------------------------------------------------
# independent reference implementation (pure numpy, brute force)
# ----------------------------------------------------------------------------------------------------------------------
def bf_surface_points(mask: np.ndarray) -> np.ndarray:
    """Coordinates of mask voxels having at least one face neighbour outside the mask (outside the volume counts
    as background)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = m[1:-1, 1:-1, 1:-1]
    all_neigh_in = np.ones_like(inner)
    for axis in range(3):
        for shift in (-1, 1):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(1 + shift, m.shape[axis] - 1 + shift)
            all_neigh_in &= m[tuple(sl)]
    return np.argwhere(inner & ~all_neigh_in)


def bf_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = bf_surface_points(a) * np.asarray(spacing, float)
    pb = bf_surface_points(b) * np.asarray(spacing, float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1)


def bf_percentile95(values: np.ndarray) -> float:
    """Linear-interpolation 95th percentile written out explicitly."""
    v = np.sort(values)
    pos = 0.95 * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def bf_hd95(a, b, spacing) -> float:
    return bf_percentile95(np.concatenate([bf_directed(a, b, spacing), bf_directed(b, a, spacing)]))


def bf_asd(a, b, spacing) -> float:
    return float(bf_directed(a, b, spacing).mean())


def cube(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return m


ANISO = (0.5, 1.0, 2.5)


# ----------------------------------------------------------------------------------------------------------------------
def test_surface_mask_matches_bruteforce():
    rng = np.random.default_rng(0)
    m = rng.random((9, 10, 11)) > 0.4  # touches the border everywhere
    got = np.argwhere(surface_mask(m))
    exp = bf_surface_points(m)
    np.testing.assert_array_equal(got, exp)
    # a solid 5^3 cube has 5^3 - 3^3 surface voxels
    assert surface_mask(cube((9, 9, 9), (2, 2, 2), (7, 7, 7))).sum() == 125 - 27


def test_single_voxel_vs_shifted_voxel_analytic():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[5, 5, 5] = True
    b[5, 5, 8] = True  # 3 voxels along axis 2
    assert hd95(a, b, ANISO, mode="mm") == pytest.approx(3 * 2.5)
    assert asd(a, b, ANISO, mode="mm") == pytest.approx(3 * 2.5)
    assert assd(a, b, ANISO, mode="mm") == pytest.approx(3 * 2.5)
    assert hd95(a, b, ANISO, mode="voxel") == pytest.approx(3.0)
    assert asd(a, b, ANISO, mode="voxel") == pytest.approx(3.0)
    # diagonal shift: sqrt((2*0.5)^2 + (1*1.0)^2 + (1*2.5)^2)
    c = np.zeros((10, 10, 10), bool)
    c[7, 6, 6] = True
    assert hd95(a, c, ANISO) == pytest.approx(math.sqrt(1.0 + 1.0 + 6.25))
    assert hd95(a, c, mode="voxel") == pytest.approx(math.sqrt(4 + 1 + 1))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("axis", [0, 2])
def test_offset_cubes_match_bruteforce(k, axis):
    shape = (16, 14, 12)
    lo = [3, 3, 2]
    hi = [9, 8, 7]
    a = cube(shape, lo, hi)
    lo2, hi2 = list(lo), list(hi)
    lo2[axis] += k
    hi2[axis] += k
    b = cube(shape, lo2, hi2)
    for sp in [(1.0, 1.0, 1.0), ANISO]:
        assert hd95(a, b, sp, mode="mm") == pytest.approx(bf_hd95(a, b, sp))
        assert asd(a, b, sp, mode="mm") == pytest.approx(bf_asd(a, b, sp))
        assert asd(b, a, sp, mode="mm") == pytest.approx(bf_asd(b, a, sp))
        assert assd(a, b, sp, mode="mm") == pytest.approx((bf_asd(a, b, sp) + bf_asd(b, a, sp)) / 2)
    assert hd95(a, b, ANISO, mode="voxel") == pytest.approx(bf_hd95(a, b, (1, 1, 1)))
    assert asd(a, b, ANISO, mode="voxel") == pytest.approx(bf_asd(a, b, (1, 1, 1)))
    # a shift of k voxels along `axis` can not give distances above k * spacing
    assert hd95(a, b, ANISO) <= k * ANISO[axis] + 1e-9


def test_random_blobs_match_bruteforce_including_border_and_crop():
    rng = np.random.default_rng(1)
    a = np.zeros((30, 28, 26), bool)
    b = np.zeros_like(a)
    a[2:14, 3:12, 0:9] = rng.random((12, 9, 9)) > 0.3  # touches the volume border (axis 2)
    b[5:16, 6:15, 2:10] = rng.random((11, 9, 8)) > 0.35
    sp = (0.7, 1.3, 3.0)
    d_ab, d_ba = surface_distances(a, b, sp)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(bf_directed(a, b, sp)))
    np.testing.assert_allclose(np.sort(d_ba), np.sort(bf_directed(b, a, sp)))
    assert hd95(a, b, sp) == pytest.approx(bf_hd95(a, b, sp))
    assert asd(a, b, sp) == pytest.approx(bf_asd(a, b, sp))
    assert hd95(a, b, sp, mode="voxel") == pytest.approx(bf_hd95(a, b, (1, 1, 1)))
    assert asd(a, b, sp, mode="voxel") == pytest.approx(bf_asd(a, b, (1, 1, 1)))


def test_hd95_is_pooled_not_max_of_directed_and_asd_is_directed():
    # big cube vs a small cube plus a protrusion: the two directions differ a lot
    a = cube((14, 12, 12), (2, 2, 2), (9, 9, 9))
    b = cube((14, 12, 12), (2, 2, 2), (5, 5, 5))
    b[9:11, 6:8, 6:8] = True
    sp = (0.7, 1.3, 3.0)
    d_ab = bf_directed(a, b, sp)
    d_ba = bf_directed(b, a, sp)
    pooled = bf_percentile95(np.concatenate([d_ab, d_ba]))
    max_directed = max(bf_percentile95(d_ab), bf_percentile95(d_ba))  # MONAI's definition
    assert pooled != pytest.approx(max_directed)
    assert hd95(a, b, sp) == pytest.approx(pooled)
    assert hd95(b, a, sp) == pytest.approx(pooled)  # pooled hd95 is symmetric
    assert asd(a, b, sp) == pytest.approx(d_ab.mean())
    assert asd(b, a, sp) == pytest.approx(d_ba.mean())
    assert d_ab.mean() != pytest.approx(d_ba.mean())  # asd is directed
    assert assd(a, b, sp) == pytest.approx((d_ab.mean() + d_ba.mean()) / 2)
    # single voxel at the centre of a 7^3 cube: the directed pred->ref distance is 3 voxels
    ref = cube((11, 11, 11), (2, 2, 2), (9, 9, 9))
    pred = np.zeros_like(ref)
    pred[5, 5, 5] = True
    assert asd(pred, ref, mode="voxel") == pytest.approx(3.0)
    assert asd(pred, ref, (2.0, 1.0, 1.0), mode="mm") == pytest.approx(3.0)  # nearest face along axis 1 / 2


def test_anisotropic_spacing_changes_mm_not_voxel():
    a = cube((12, 12, 12), (2, 3, 3), (7, 8, 6))
    b = cube((12, 12, 12), (3, 3, 4), (8, 9, 8))
    iso = case_metrics(a, b, (1.0, 1.0, 1.0))
    ani = case_metrics(a, b, ANISO)
    assert ani["hd95_voxel"] == pytest.approx(iso["hd95_voxel"])
    assert ani["asd_voxel"] == pytest.approx(iso["asd_voxel"])
    assert iso["hd95_mm"] == pytest.approx(iso["hd95_voxel"])
    assert iso["asd_mm"] == pytest.approx(iso["asd_voxel"])
    assert ani["hd95_mm"] != pytest.approx(iso["hd95_mm"])
    assert ani["asd_mm"] != pytest.approx(iso["asd_mm"])
    assert ani["hd95_mm"] == pytest.approx(bf_hd95(a, b, ANISO))
    assert ani["asd_mm"] == pytest.approx(bf_asd(a, b, ANISO))
    assert ani["dice"] == iso["dice"] and ani["iou"] == iso["iou"]


def test_empty_mask_rules():
    full = cube((8, 8, 8), (2, 2, 2), (5, 5, 5))
    empty = np.zeros((8, 8, 8), bool)
    for f in (hd95, asd, assd):
        # both empty: perfect agreement in both modes
        assert f(empty, empty, ANISO, mode="mm") == 0.0
        assert f(empty, empty, ANISO, mode="voxel") == 0.0
        # empty prediction: NaN in mm, 0 (paper rule) in voxel mode
        assert math.isnan(f(empty, full, ANISO, mode="mm"))
        assert f(empty, full, ANISO, mode="voxel") == 0.0
        # empty reference with a prediction: undefined in both modes
        assert math.isnan(f(full, empty, ANISO, mode="mm"))
        assert math.isnan(f(full, empty, ANISO, mode="voxel"))
    m = case_metrics(empty, full, ANISO)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["asd_mm"])
    assert m["hd95_voxel"] == 0.0 and m["asd_voxel"] == 0.0
    m = case_metrics(full, empty, ANISO)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert all(math.isnan(m[k]) for k in ("hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"))
    m = case_metrics(empty, empty, ANISO)
    assert m == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0, "hd95_voxel": 0.0, "asd_voxel": 0.0}
    with pytest.raises(ValueError):
        surface_distances(empty, full)


def test_dice_iou_known_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0:2, 0:4] = True  # 8 voxels
    b[0, 1:3, 0:4] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert iou(a, b) == pytest.approx(4 / 12)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, a) == 0.0 and iou(a, empty) == 0.0
    # integer label input: any non-zero value is foreground
    assert dice(a.astype(np.int64) * 3, b.astype(np.uint8)) == pytest.approx(0.5)


def test_case_metrics_keys_and_torch_inputs():
    a = cube((10, 10, 10), (2, 2, 2), (6, 6, 6))
    b = cube((10, 10, 10), (3, 2, 2), (7, 6, 7))
    m_np = case_metrics(a, b, ANISO)
    m_t = case_metrics(torch.from_numpy(a), torch.from_numpy(b.astype(np.float32)), torch.tensor(ANISO))
    assert tuple(m_np) == CASE_METRIC_NAMES == ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")
    for k in CASE_METRIC_NAMES:
        assert m_np[k] == pytest.approx(m_t[k])
    assert m_np["hd95_mm"] == pytest.approx(hd95(a, b, ANISO))
    assert m_np["asd_mm"] == pytest.approx(asd(a, b, ANISO))
    assert m_np["hd95_voxel"] == pytest.approx(hd95(a, b, mode="voxel"))
    assert m_np["asd_voxel"] == pytest.approx(asd(a, b, mode="voxel"))
    assert m_np["dice"] == pytest.approx(dice(a, b))
    # spacing None = 1.0 per axis
    m_none = case_metrics(a, b)
    assert m_none["hd95_mm"] == pytest.approx(m_none["hd95_voxel"])


def test_input_validation():
    a = np.zeros((4, 4, 4), bool)
    a[1, 1, 1] = True
    with pytest.raises(ValueError):
        hd95(a, np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError):
        hd95(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError):
        hd95(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        asd(a, a, mode="mm2")
    assert hd95(a, a, spacing=2.0) == 0.0  # scalar spacing broadcast


def test_2d_masks():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[2, 2] = True
    b[2, 6] = True
    assert hd95(a, b, (1.0, 0.5)) == pytest.approx(2.0)
    assert asd(a, b, mode="voxel") == pytest.approx(4.0)
