"""Tests of spacing_from_meta and the CaseMetrics cumulative metric (MetaTensors with anisotropic affines)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate

from custom.metrics import CaseMetrics, spacing_from_meta, spacings_from_batch, summarize_case_metrics
from custom.metrics.spacing import spacing_from_affine

SHAPE = (10, 10, 10)


def affine_for(spacing, rotate=False):
    a = np.diag([*spacing, 1.0])
    if rotate:  # rotation about axis 2 by 30 degrees, plus a translation
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        a[:3, :3] = r @ np.diag(spacing)
        a[:3, 3] = (10.0, -4.0, 7.5)
    return torch.as_tensor(a, dtype=torch.float64)


def voxel(idx):
    m = np.zeros(SHAPE, dtype=np.float32)
    m[idx] = 1.0
    return m


def onehot(mask):
    return np.stack([1.0 - mask, mask]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
def test_spacing_from_meta_variants():
    sp = (0.5, 1.25, 3.0)
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine_for(sp))) == pytest.approx(sp)
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine_for(sp, True))) == pytest.approx(sp)
    assert spacing_from_meta({"affine": affine_for(sp, True).numpy()}) == pytest.approx(sp)
    assert spacing_from_meta({"spacing": np.array(sp)}) == pytest.approx(sp)
    assert spacing_from_meta(affine_for(sp)) == pytest.approx(sp)
    assert spacing_from_meta(affine_for(sp), spatial_dims=2) == pytest.approx(sp[:2])
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 4, 4, 4))) == (1.0, 1.0, 1.0)  # default identity affine
    assert spacing_from_affine(np.diag([-0.8, 0.8, 2.0, 1.0])) == pytest.approx((0.8, 0.8, 2.0))  # flipped axis
    with pytest.raises(ValueError):
        spacing_from_meta({"foo": 1})
    with pytest.raises(ValueError):
        spacing_from_affine(np.zeros((2, 4, 4)))


def test_spacings_from_batch():
    items = [
        MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine_for((0.5, 1.0, 2.0))),
        MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine_for((1.0, 1.0, 4.0), True)),
    ]
    batch = list_data_collate([{"x": i} for i in items])["x"]
    assert batch.affine.shape == (2, 4, 4)
    got = spacings_from_batch(batch)
    assert got[0] == pytest.approx((0.5, 1.0, 2.0)) and got[1] == pytest.approx((1.0, 1.0, 4.0))
    assert spacings_from_batch(items[0].unsqueeze(0)) == [pytest.approx((0.5, 1.0, 2.0))]
    assert spacings_from_batch(torch.zeros(2, 1, 4, 4, 4)) is None


def _batch(preds, refs, spacings, rotate=False):
    data = [
        {
            "pred": MetaTensor(torch.from_numpy(onehot(p)), affine=affine_for(sp, rotate)),
            "label": MetaTensor(torch.from_numpy(onehot(r)), affine=affine_for(sp, rotate)),
        }
        for p, r, sp in zip(preds, refs, spacings)
    ]
    return list_data_collate(data)


def test_case_metrics_batch_with_anisotropic_affines():
    # case 0: voxel shifted by 3 along axis 2, spacing z = 2.5 -> 7.5 mm, 3 voxels
    # case 1: voxel shifted by 2 along axis 0, spacing x = 0.5 (rotated affine) -> 1.0 mm, 2 voxels
    preds = [voxel((5, 5, 2)), voxel((3, 5, 5))]
    refs = [voxel((5, 5, 5)), voxel((5, 5, 5))]
    b = _batch(preds, refs, [(1.0, 1.0, 2.5), (0.5, 1.0, 1.0)], rotate=True)
    metric = CaseMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback / mismatch warning expected
        out = metric(b["pred"], b["label"])
    assert out.shape == (2, 6)
    expected = torch.tensor([[0.0, 0.0, 7.5, 7.5, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]])
    torch.testing.assert_close(out, expected)
    agg = metric.aggregate()
    assert list(agg) == list(CaseMetrics.names)
    assert agg["hd95_mm"] == pytest.approx(4.25) and agg["hd95_voxel"] == pytest.approx(2.5)
    rows = metric.per_case_rows
    assert len(rows) == 2 and rows[0]["asd_mm"] == pytest.approx(7.5) and rows[1]["asd_voxel"] == pytest.approx(2.0)


def test_case_metrics_list_of_channel_first_and_label_maps():
    # decollated list input (as from_engine gives with decollate=True), one-channel label maps
    sp = (2.0, 1.0, 1.0)
    p = voxel((2, 4, 4))
    r = voxel((4, 4, 4))
    y_pred = [MetaTensor(torch.from_numpy(p[None]), affine=affine_for(sp))]
    y = [MetaTensor(torch.from_numpy(r[None] * 1), affine=affine_for(sp))]
    metric = CaseMetrics()
    out = metric(y_pred, y)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 4.0, 4.0, 2.0, 2.0]]))
    # a decollated collated batch works the same
    b = _batch([p], [r], [sp])
    metric.reset()
    out2 = metric(decollate_batch(b["pred"]), decollate_batch(b["label"]))
    torch.testing.assert_close(out2, out)


def test_case_metrics_overlap_and_empty_rules_and_nanmean():
    cube = np.zeros(SHAPE, np.float32)
    cube[2:6, 2:6, 2:6] = 1
    half = np.zeros(SHAPE, np.float32)
    half[2:6, 2:6, 2:4] = 1  # 32 of the 64 voxels
    empty = np.zeros(SHAPE, np.float32)
    sp = (1.0, 1.0, 2.0)
    b = _batch([cube, half, empty, empty], [cube, cube, cube, empty], [sp] * 4)
    metric = CaseMetrics()
    out = metric(b["pred"], b["label"]).numpy()
    np.testing.assert_allclose(out[0], [1, 1, 0, 0, 0, 0])
    assert out[1, 0] == pytest.approx(2 * 32 / 96) and out[1, 1] == pytest.approx(0.5)
    # empty prediction: dice 0, mm NaN, voxel 0 (paper rule)
    assert out[2, 0] == 0 and out[2, 1] == 0
    assert np.isnan(out[2, 2]) and np.isnan(out[2, 3])
    assert out[2, 4] == 0 and out[2, 5] == 0
    # both empty: perfect
    np.testing.assert_allclose(out[3], [1, 1, 0, 0, 0, 0])
    agg = metric.aggregate()
    assert agg["dice"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert agg["hd95_mm"] == pytest.approx((0 + out[1, 2] + 0) / 3)  # NaN ignored
    summ = metric.summary()
    assert summ["hd95_mm"]["count"] == 3 and summ["hd95_mm"]["nan_count"] == 1
    assert summ["hd95_voxel"]["count"] == 4 and summ["hd95_voxel"]["nan_count"] == 0
    metric.reset()
    assert metric.per_case_rows == []
    assert math.isnan(metric.aggregate()["dice"])


def test_case_metrics_spacing_sources():
    p, r = voxel((5, 5, 2)), voxel((5, 5, 5))
    pt = torch.from_numpy(onehot(p))[None]
    rt = torch.from_numpy(onehot(r))[None]
    # plain tensors: warning, spacing 1
    with pytest.warns(UserWarning, match="spacing 1.0"):
        out = CaseMetrics()(pt, rt)
    assert out[0, 2].item() == pytest.approx(3.0)
    # constructor spacing overrides, call keyword overrides the constructor
    assert CaseMetrics(spacing=(1, 1, 4))(pt, rt)[0, 2].item() == pytest.approx(12.0)
    assert CaseMetrics(spacing=(1, 1, 4))(pt, rt, spacing=(1, 1, 0.5))[0, 2].item() == pytest.approx(1.5)
    # only y is a MetaTensor: its affine is used
    y_meta = MetaTensor(rt, affine=affine_for((1, 1, 2)))
    assert CaseMetrics()(pt, y_meta)[0, 2].item() == pytest.approx(6.0)
    # mismatching affines: warning, y_pred wins
    p_meta = MetaTensor(pt, affine=affine_for((1, 1, 3)))
    with pytest.warns(UserWarning, match="differs"):
        assert CaseMetrics()(p_meta, y_meta)[0, 2].item() == pytest.approx(9.0)


def test_case_metrics_channel_selection_and_errors():
    p = voxel((5, 5, 2))
    three = torch.from_numpy(np.stack([1 - p, p, np.zeros_like(p)]))[None]
    with pytest.raises(ValueError, match="channel"):
        CaseMetrics(spacing=(1, 1, 1))(three, three)
    out = CaseMetrics(spacing=(1, 1, 1), channel=1)(three, three)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        CaseMetrics(spacing=(1, 1, 1))(three[:, :2], three[:, :2, :5])


def test_summarize_case_metrics():
    vals = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, np.nan]])
    s = summarize_case_metrics(vals, ("a", "b"))
    assert s["a"] == {"mean": 3.0, "std": pytest.approx(math.sqrt(8 / 3)), "median": 3.0, "count": 3, "nan_count": 0}
    assert s["b"] == {"mean": 2.0, "std": 0.0, "median": 2.0, "count": 1, "nan_count": 2}
    s = summarize_case_metrics(np.array([[np.nan]]), ("c",))
    assert s["c"] == {"mean": None, "std": None, "median": None, "count": 0, "nan_count": 1}


# ----------------------------------------------------------------------------------------------------------------------
# lesion-wise columns (CaseMetrics(lesion_metrics=True))
# ----------------------------------------------------------------------------------------------------------------------
LESION_NAMES = ("lesion_f1", "lesion_count_diff", "n_ref_lesions", "n_pred_lesions", "volume_diff_ml")


def _lesion_masks():
    """Five hand-made cases (spacing (1, 1, 2): one voxel = 2 mm^3 = 0.002 ml) and their lesion-wise values, worked
    out by hand: (pred, ref, [lesion_f1, count_diff, n_ref, n_pred, volume_diff_ml])."""
    e = np.zeros(SHAPE, np.float32)
    two = e.copy()
    two[2:4, 2:4, 2:4] = 1  # lesion 1 (8 voxels)
    two[6:8, 6:8, 6:8] = 1  # lesion 2 (8 voxels), 2 voxels away from lesion 1: separate
    one_plus_fp = e.copy()
    one_plus_fp[2:4, 2:4, 2:4] = 1  # hits lesion 1
    one_plus_fp[9, 0, 9] = 1  # a false-positive component
    corner = e.copy()
    corner[2, 2, 2] = corner[3, 3, 3] = 1  # touching by a corner only: ONE lesion under 26-connectivity
    single = voxel((3, 3, 3))
    return [
        # TP 1, FN 1, FP 1 -> 1 / (1 + 1) = 0.5; 2 vs 2 lesions; |9 - 16| voxels = 14 mm^3
        (one_plus_fp, two, [0.5, 0, 2, 2, 0.014]),
        # the single voxel hits the corner-connected lesion: F1 1; |1 - 2| voxels = 2 mm^3
        (single, corner, [1.0, 0, 1, 1, 0.002]),
        # empty prediction: every reference lesion missed
        (e, two, [0.0, 2, 2, 0, 0.032]),
        # both empty: perfect detection
        (e, e, [1.0, 0, 0, 0, 0.0]),
        # empty reference, one predicted voxel: all false positive
        (single, e, [0.0, 1, 0, 1, 0.002]),
    ]


def test_case_metrics_lesion_columns_hand_made():
    cases = _lesion_masks()
    sp = (1.0, 1.0, 2.0)
    b = _batch([c[0] for c in cases], [c[1] for c in cases], [sp] * len(cases), rotate=True)
    default = CaseMetrics()
    with_lesions = CaseMetrics(lesion_metrics=True)
    assert default.names == CaseMetrics.names == METRIC_NAMES_6
    assert with_lesions.names == METRIC_NAMES_6 + LESION_NAMES
    base = default(b["pred"], b["label"])
    out = with_lesions(b["pred"], b["label"])
    assert base.shape == (5, 6) and out.shape == (5, 11)
    # the first six columns are exactly the default ones (default behaviour unchanged)
    torch.testing.assert_close(out[:, :6], base, equal_nan=True)
    np.testing.assert_allclose(out[:, 6:].numpy(), np.array([c[2] for c in cases]), rtol=1e-6, atol=1e-7)
    # lesion-wise values are never NaN, so the means include lesion-free cases
    agg = with_lesions.aggregate()
    assert list(agg) == list(METRIC_NAMES_6 + LESION_NAMES)
    assert agg["lesion_f1"] == pytest.approx((0.5 + 1 + 0 + 1 + 0) / 5)
    assert agg["lesion_count_diff"] == pytest.approx(3 / 5)
    assert agg["volume_diff_ml"] == pytest.approx((0.014 + 0.002 + 0.032 + 0.0 + 0.002) / 5)
    summ = with_lesions.summary()
    assert all(summ[k]["nan_count"] == 0 and summ[k]["count"] == 5 for k in LESION_NAMES)
    rows = with_lesions.per_case_rows
    assert rows[2]["n_ref_lesions"] == 2.0 and rows[2]["n_pred_lesions"] == 0.0


def test_case_metrics_lesion_columns_use_the_same_spacing():
    pred, ref = voxel((5, 5, 5)), np.zeros(SHAPE, np.float32)
    ref[4:6, 5, 5] = 1  # 2 voxels -> volume difference 1 voxel
    pt, rt = torch.from_numpy(onehot(pred))[None], torch.from_numpy(onehot(ref))[None]
    out = CaseMetrics(spacing=(0.5, 2.0, 3.0), lesion_metrics=True)(pt, rt)
    assert out[0, 10].item() == pytest.approx(0.5 * 2.0 * 3.0 / 1000)
    meta = MetaTensor(pt, affine=affine_for((2.0, 2.0, 4.0), rotate=True))
    out = CaseMetrics(lesion_metrics=True)(meta, MetaTensor(rt, affine=affine_for((2.0, 2.0, 4.0), rotate=True)))
    assert out[0, 10].item() == pytest.approx(16.0 / 1000)
    with pytest.raises(ValueError, match="lesion_metrics"):
        CaseMetrics(lesion_metrics="yes")


def test_metric_names_and_units():
    from custom.metrics import EMPTY_RULES, LESION_METRIC_UNITS, METRIC_UNITS, metric_names

    assert metric_names() == METRIC_NAMES_6
    assert metric_names(True) == METRIC_NAMES_6 + LESION_NAMES
    assert set(LESION_METRIC_UNITS) == set(LESION_NAMES) and set(METRIC_UNITS) == set(METRIC_NAMES_6)
    assert "ml" in LESION_METRIC_UNITS["volume_diff_ml"] and "unitless" in LESION_METRIC_UNITS["lesion_f1"]
    for rule in EMPTY_RULES.values():  # every column has a rule for every empty case
        assert set(rule) == set(METRIC_NAMES_6 + LESION_NAMES)
    # the rules agree with what the metrics compute on empty masks
    e = np.zeros(SHAPE, np.float32)
    two = e.copy()
    two[1:3, 1:3, 1:3] = 1
    two[6:8, 6:8, 6:8] = 1
    b = _batch([e, e, two], [e, two, e], [(1.0, 1.0, 1.0)] * 3)
    out = CaseMetrics(lesion_metrics=True)(b["pred"], b["label"]).numpy()
    substitutes = {"n_ref": 2, "n_pred": 2, "ref volume": 0.016, "pred volume": 0.016, "nan": math.nan}
    for row, case in zip(out, ("both empty", "prediction empty, reference not", "reference empty, prediction not")):
        for j, name in enumerate(metric_names(True)):
            want = EMPTY_RULES[case][name]
            want = substitutes.get(want, want) if isinstance(want, str) else want
            if math.isnan(want):
                assert math.isnan(row[j]), (case, name)
            else:
                assert row[j] == pytest.approx(want), (case, name)


METRIC_NAMES_6 = ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")
