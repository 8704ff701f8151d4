"""Tests of custom.metrics.lesion: hand-made masks with values worked out by hand, and a brute-force reference
(pure Python flood fill over the 26 neighbours, no scipy) on random masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from custom.metrics.lesion import (
    LESION_METRIC_NAMES,
    count_lesions,
    label_lesions,
    lesion_count_difference,
    lesion_detection,
    lesion_f1,
    lesion_metrics,
    volume_difference_ml,
)

SHAPE = (20, 20, 12)


def box(mask: np.ndarray, lo, hi) -> np.ndarray:
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return mask


def empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# independent reference (brute force)
# ----------------------------------------------------------------------------------------------------------------------
OFFSETS_26 = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]


def bf_components(mask: np.ndarray) -> list[set[tuple[int, int, int]]]:
    """Connected components (26-neighbourhood) as sets of voxel coordinates, by iterative flood fill."""
    fg = {tuple(int(v) for v in p) for p in np.argwhere(mask)}
    comps: list[set[tuple[int, int, int]]] = []
    while fg:
        seed = fg.pop()
        comp, stack = {seed}, [seed]
        while stack:
            x, y, z = stack.pop()
            for dx, dy, dz in OFFSETS_26:
                q = (x + dx, y + dy, z + dz)
                if q in fg:
                    fg.remove(q)
                    comp.add(q)
                    stack.append(q)
        comps.append(comp)
    return comps


def bf_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    pc, rc = bf_components(pred), bf_components(ref)
    pv = {tuple(int(v) for v in p) for p in np.argwhere(pred)}
    rv = {tuple(int(v) for v in p) for p in np.argwhere(ref)}
    tp = sum(1 for c in rc if c & pv)
    fn = len(rc) - tp
    fp = sum(1 for c in pc if not c & rv)
    if tp + fp + fn == 0:
        return 1.0
    return tp / (tp + (fp + fn) / 2)


# ----------------------------------------------------------------------------------------------------------------------
# hand-made cases
# ----------------------------------------------------------------------------------------------------------------------
def three_ref_lesions() -> np.ndarray:
    ref = empty()
    box(ref, (1, 1, 1), (4, 4, 3))  # 18 voxels
    box(ref, (10, 10, 5), (12, 12, 7))  # 8 voxels
    box(ref, (15, 2, 8), (18, 5, 11))  # 27 voxels
    return ref


def test_two_detected_one_missed_one_false_positive():
    ref = three_ref_lesions()
    pred = empty()
    box(pred, (2, 2, 1), (5, 5, 2))  # overlaps lesion 1 partially
    box(pred, (11, 11, 6), (13, 13, 8))  # overlaps lesion 2 in one voxel (11, 11, 6)
    box(pred, (5, 15, 1), (7, 17, 3))  # far from every lesion: FP
    # lesion 3 missed: TP = 2, FN = 1, FP = 1 -> F1 = 2 / (2 + (1 + 1) / 2) = 2 / 3
    assert lesion_detection(pred, ref) == {"tp": 2, "fp": 1, "fn": 1, "n_ref": 3, "n_pred": 3}
    assert lesion_f1(pred, ref) == pytest.approx(2 / 3)
    assert lesion_count_difference(pred, ref) == 0
    m = lesion_metrics(pred, ref, spacing=(2.0, 2.0, 5.0))
    assert tuple(m) == LESION_METRIC_NAMES
    assert m["lesion_f1"] == pytest.approx(2 / 3)
    assert (m["n_ref_lesions"], m["n_pred_lesions"], m["lesion_count_diff"]) == (3, 3, 0)
    # |(9 + 8 + 8) - (18 + 8 + 27)| = 28 voxels of 20 mm^3 = 560 mm^3 = 0.56 ml
    assert m["volume_diff_ml"] == pytest.approx(0.56)
    assert isinstance(m["lesion_count_diff"], int) and isinstance(m["n_ref_lesions"], int)
    assert bf_f1(pred, ref) == pytest.approx(2 / 3)


def test_all_detected_plus_false_positives():
    ref = three_ref_lesions()
    pred = ref.copy()
    box(pred, (8, 1, 1), (9, 2, 2))  # 1-voxel FP
    box(pred, (1, 15, 9), (2, 16, 10))  # another 1-voxel FP
    # TP 3, FP 2, FN 0 -> 3 / (3 + 1) = 0.75; count difference 2
    assert lesion_f1(pred, ref) == pytest.approx(0.75)
    assert lesion_count_difference(pred, ref) == 2
    assert lesion_metrics(pred, ref)["volume_diff_ml"] == pytest.approx(2 / 1000)  # 1 mm voxels by default


def test_one_prediction_covering_two_lesions():
    ref = empty()
    box(ref, (2, 2, 2), (4, 4, 4))
    box(ref, (8, 2, 2), (10, 4, 4))
    pred = box(empty(), (2, 2, 2), (10, 4, 4))  # one bar over both
    # both reference lesions are TPs, the bar touches the reference so it is no FP: F1 = 1, count diff = 1
    assert lesion_detection(pred, ref) == {"tp": 2, "fp": 0, "fn": 0, "n_ref": 2, "n_pred": 1}
    assert lesion_f1(pred, ref) == 1.0
    assert lesion_count_difference(pred, ref) == 1


def test_diagonal_voxels_are_one_lesion_with_26_connectivity():
    ref = empty()
    ref[5, 5, 5] = ref[6, 6, 6] = 1  # corner contact only
    ref[10, 10, 5] = ref[11, 11, 5] = 1  # edge contact only
    assert count_lesions(ref) == 2
    assert count_lesions(ref, connectivity=26) == 2
    assert count_lesions(ref, connectivity=18) == 3  # the corner pair splits
    assert count_lesions(ref, connectivity=6) == 4
    # hitting one voxel of a corner-connected pair detects the whole lesion
    pred = empty()
    pred[6, 6, 6] = 1
    assert lesion_detection(pred, ref) == {"tp": 1, "fp": 0, "fn": 1, "n_ref": 2, "n_pred": 1}
    assert lesion_f1(pred, ref) == pytest.approx(1 / (1 + 0.5))
    labels, n = label_lesions(ref)
    assert n == 2 and labels[5, 5, 5] == labels[6, 6, 6] != labels[10, 10, 5]


@pytest.mark.parametrize(
    ("pred_lesions", "ref_lesions", "f1", "diff"),
    [
        (0, 0, 1.0, 0),  # both empty: perfect detection (the challenge's empty_value = 1.0)
        (0, 2, 0.0, 2),  # empty prediction: every reference lesion is a FN
        (3, 0, 0.0, 3),  # lesion-free case with false positives
    ],
)
def test_empty_rules(pred_lesions: int, ref_lesions: int, f1: float, diff: int):
    def blobs(n: int) -> np.ndarray:
        m = empty()
        for k in range(n):
            box(m, (2 + 5 * k, 2, 2), (4 + 5 * k, 4, 4))  # 8 voxels each
        return m

    pred, ref = blobs(pred_lesions), blobs(ref_lesions)
    m = lesion_metrics(pred, ref, spacing=1.5)
    assert m["lesion_f1"] == f1 and lesion_f1(pred, ref) == f1
    assert m["lesion_count_diff"] == diff == lesion_count_difference(pred, ref)
    assert (m["n_pred_lesions"], m["n_ref_lesions"]) == (pred_lesions, ref_lesions)
    assert m["volume_diff_ml"] == pytest.approx(abs(pred_lesions - ref_lesions) * 8 * 1.5**3 / 1000)
    assert not any(isinstance(v, float) and np.isnan(v) for v in m.values())
    assert lesion_f1(pred, ref, empty_value=0.0) == (0.0 if pred_lesions == ref_lesions == 0 else f1)


def test_volume_difference_is_symmetric_and_uses_spacing():
    a = box(empty(), (0, 0, 0), (10, 10, 10))  # 1000 voxels
    b = box(empty(), (0, 0, 0), (5, 10, 10))  # 500 voxels
    assert volume_difference_ml(a, b, spacing=(1, 1, 2)) == pytest.approx(1.0)  # 500 voxels * 2 mm^3
    assert volume_difference_ml(b, a, spacing=(1, 1, 2)) == pytest.approx(1.0)
    assert volume_difference_ml(a, a) == 0.0


def test_torch_channel_axis_and_shape_checks():
    ref = three_ref_lesions()
    pred = ref.copy()
    pred[0, 19, 11] = 1
    expected = lesion_metrics(pred, ref, spacing=(1, 2, 3))
    got = lesion_metrics(torch.as_tensor(pred[None]), torch.as_tensor(ref[None].astype(np.float32)), spacing=(1, 2, 3))
    assert got == expected
    with pytest.raises(ValueError, match="same shape"):
        lesion_f1(pred, ref[:-1])
    with pytest.raises(ValueError, match="connectivity"):
        lesion_f1(pred, ref, connectivity=8)
    with pytest.raises(ValueError, match="one value per axis"):
        lesion_metrics(pred, ref, spacing=(1, 1))


def test_2d_masks_use_8_connectivity():
    m = np.zeros((6, 6), dtype=bool)
    m[1, 1] = m[2, 2] = True
    assert count_lesions(m) == 1
    assert count_lesions(m, connectivity=4) == 2


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    shape = (9, 8, 7)
    ref = rng.random(shape) < 0.06
    pred = rng.random(shape) < 0.06
    if seed % 2:
        pred |= ref & (rng.random(shape) < 0.5)  # partial overlap
    rc, pc = bf_components(ref), bf_components(pred)
    assert count_lesions(ref) == len(rc) and count_lesions(pred) == len(pc)
    assert lesion_count_difference(pred, ref) == abs(len(pc) - len(rc))
    assert lesion_f1(pred, ref) == pytest.approx(bf_f1(pred, ref))
    assert lesion_metrics(pred, ref)["lesion_f1"] == pytest.approx(bf_f1(pred, ref))
