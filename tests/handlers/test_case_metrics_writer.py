"""CaseMetricsHandler + CaseMetricsWriter on a tiny SupervisedEvaluator run (identity network, in-memory cases)."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.inferers import SimpleInferer

from custom.handlers import CaseMetricsHandler, CaseMetricsWriter

SHAPE = (8, 8, 8)
SPACING = (1.0, 1.0, 1.5)
AFFINE = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))


def _cases():
    """Three cases with values known by hand:

    a: pred == ref (cube)                          -> dice 1, iou 1, all distances 0
    b: single voxel vs voxel shifted 2 along axis 2 -> dice 0, iou 0, mm 2 * 1.5 = 3.0, voxel 2.0
    c: empty prediction, cube reference             -> dice 0, iou 0, mm NaN, voxel 0 (paper rule)
    """
    cube = np.zeros(SHAPE, np.float32)
    cube[2:5, 2:5, 2:5] = 1
    v1 = np.zeros(SHAPE, np.float32)
    v1[4, 4, 2] = 1
    v2 = np.zeros(SHAPE, np.float32)
    v2[4, 4, 4] = 1
    pairs = {"case_a.nii.gz": (cube, cube), "case_b.nii.gz": (v1, v2), "case_c.nii.gz": (np.zeros_like(cube), cube)}
    data = []
    for name, (pred, ref) in pairs.items():
        meta = {"filename_or_obj": f"/data/imagesTs/{name}"}
        data.append(
            {
                # the identity network returns the "image", i.e. the prediction
                "image": MetaTensor(torch.from_numpy(pred[None]), affine=AFFINE, meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(ref[None]), affine=AFFINE, meta=dict(meta)),
            }
        )
    return data


EXPECTED = {
    "case_a.nii.gz": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    "case_b.nii.gz": [0.0, 0.0, 3.0, 3.0, 2.0, 2.0],
    "case_c.nii.gz": [0.0, 0.0, math.nan, math.nan, 0.0, 0.0],
}
NAMES = ["dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"]


def _run(tmp_path, batch_size, decollate=True, **writer_kw):
    loader = DataLoader(Dataset(_cases()), batch_size=batch_size, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        inferer=SimpleInferer(),
        key_val_metric={"case": CaseMetricsHandler(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[CaseMetricsWriter(tmp_path, metric_name="case", **writer_kw)],
        decollate=decollate,
    )
    evaluator.run()
    return evaluator


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _assert_close(a, b):
    if math.isnan(b):
        assert math.isnan(a)
    else:
        assert a == pytest.approx(b)


@pytest.mark.parametrize("batch_size,decollate", [(2, True), (1, True), (2, False)])
def test_writer_on_evaluator(tmp_path, caplog, batch_size, decollate):
    with caplog.at_level(logging.INFO, logger="CaseMetricsWriter"):
        evaluator = _run(tmp_path, batch_size, decollate=decollate, filename_prefix="val_")

    # engine state: key metric = mean dice, flattened means, per-case details
    m = evaluator.state.metrics
    assert m["case"] == pytest.approx(1 / 3)
    assert m["case_hd95_mm"] == pytest.approx(1.5)  # nanmean over (0, 3)
    assert m["case_hd95_voxel"] == pytest.approx(2 / 3)
    assert evaluator.state.metric_details["case"].shape == (3, 6)

    rows = _read_csv(tmp_path / "val_metrics_per_case.csv")
    assert rows[0] == ["filename", *NAMES]
    assert [r[0] for r in rows[1:]] == [f"/data/imagesTs/{n}" for n in EXPECTED]
    for r in rows[1:]:
        exp = EXPECTED[r[0].rsplit("/", 1)[-1]]
        for got, e in zip(map(float, r[1:]), exp):
            _assert_close(got, e)

    summary = json.loads((tmp_path / "val_metrics_summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["metric_name"] == "case"
    s = summary["metrics"]
    assert s["dice"]["mean"] == pytest.approx(1 / 3)
    assert s["dice"]["std"] == pytest.approx(math.sqrt(2 / 9))
    assert s["dice"]["median"] == 0.0
    assert s["iou"]["count"] == 3 and s["iou"]["nan_count"] == 0
    assert s["hd95_mm"] == {"mean": 1.5, "std": 1.5, "median": 1.5, "count": 2, "nan_count": 1}
    assert s["asd_mm"]["nan_count"] == 1
    assert s["hd95_voxel"]["mean"] == pytest.approx(2 / 3) and s["hd95_voxel"]["count"] == 3
    assert s["asd_voxel"]["median"] == 0.0
    assert summary["primary"] == ["dice", "iou", "hd95_mm", "asd_mm"]
    assert summary["paper_compatible"] == ["hd95_voxel", "asd_voxel"]
    assert "mm" in summary["units"]["hd95_mm"] and "paper-compatible" in summary["units"]["hd95_voxel"]

    table = "\n".join(r.getMessage() for r in caplog.records if r.name == "CaseMetricsWriter")
    assert "paper-compatible" in table and "hd95_mm" in table and "asd_voxel" in table


def test_writer_overwrites_per_run_and_falls_back_to_indices(tmp_path):
    data = _cases()
    for d in data:  # in-memory cases without a file name
        d["image"].meta.pop("filename_or_obj")
    loader = DataLoader(Dataset(data), batch_size=2, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        key_val_metric={"case": CaseMetricsHandler(key="hd95_mm", output_transform=from_engine(["pred", "label"]))},
        val_handlers=[CaseMetricsWriter(tmp_path, metric_name="case")],
    )
    evaluator.run()
    evaluator.run()  # a second run must not accumulate cases or names
    rows = _read_csv(tmp_path / "metrics_per_case.csv")
    assert [r[0] for r in rows[1:]] == ["case_0000", "case_0001", "case_0002"]
    assert evaluator.state.metrics["case"] == pytest.approx(1.5)


def test_writer_without_details_warns(tmp_path, caplog):
    loader = DataLoader(Dataset(_cases()), batch_size=3, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        val_handlers=[CaseMetricsWriter(tmp_path, metric_name="missing")],
    )
    with caplog.at_level(logging.WARNING, logger="CaseMetricsWriter"):
        evaluator.run()
    assert "nothing written" in caplog.text
    assert not (tmp_path / "metrics_per_case.csv").exists()


def test_handler_rejects_unknown_key():
    with pytest.raises(ValueError):
        CaseMetricsHandler(key="hd")


def test_bundle_config_wiring(tmp_path):
    """The YAML snippet documented for bundles instantiates and runs."""
    config = {
        "output_dir": str(tmp_path),
        "val_key_metric": {
            "val_case": {
                "_target_": "custom.handlers.CaseMetricsHandler",
                "key": "dice",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "val_handlers": [
            {
                "_target_": "custom.handlers.CaseMetricsWriter",
                "output_dir": "@output_dir",
                "metric_name": "val_case",
            }
        ],
    }
    parser = ConfigParser(config)
    key_metric = parser.get_parsed_content("val_key_metric")
    handlers = parser.get_parsed_content("val_handlers")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_cases()), batch_size=2, num_workers=0),
        network=torch.nn.Identity(),
        key_val_metric=key_metric,
        val_handlers=handlers,
    )
    evaluator.run()
    assert evaluator.state.best_metric == pytest.approx(1 / 3)
    assert len(_read_csv(tmp_path / "metrics_per_case.csv")) == 4


# ----------------------------------------------------------------------------------------------------------------------
# lesion-wise columns (CaseMetricsHandler(lesion_metrics=True))
# ----------------------------------------------------------------------------------------------------------------------
LESION_NAMES = ["lesion_f1", "lesion_count_diff", "n_ref_lesions", "n_pred_lesions", "volume_diff_ml"]
VOXEL_ML = 1.0 * 1.0 * 1.5 / 1000  # one voxel of SPACING in millilitres


def _lesion_cases():
    """The three cases of ``_cases`` plus two:

    d: both empty                                             -> lesion F1 1, counts 0, volume 0
    e: two reference lesions (a 2x2x2 cube and a voxel), the prediction hits the cube and adds one false-positive
       voxel elsewhere                                         -> TP 1, FN 1, FP 1: F1 0.5; 2 vs 2 lesions;
                                                                  volume |9 - 9| = 0
    """
    data = _cases()
    e = np.zeros(SHAPE, np.float32)
    ref = e.copy()
    ref[1:3, 1:3, 1:3] = 1
    ref[6, 6, 6] = 1
    pred = e.copy()
    pred[1:3, 1:3, 1:3] = 1
    pred[6, 0, 6] = 1
    for name, (p, r) in {"case_d.nii.gz": (e, e), "case_e.nii.gz": (pred, ref)}.items():
        meta = {"filename_or_obj": f"/data/imagesTs/{name}"}
        data.append(
            {
                "image": MetaTensor(torch.from_numpy(p[None]), affine=AFFINE, meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(r[None]), affine=AFFINE, meta=dict(meta)),
            }
        )
    return data


# (lesion_f1, lesion_count_diff, n_ref, n_pred, volume_diff_ml), by hand
LESION_EXPECTED = {
    "case_a.nii.gz": [1.0, 0, 1, 1, 0.0],  # identical cubes
    "case_b.nii.gz": [0.0, 0, 1, 1, 0.0],  # two single voxels 2 apart along z: no overlap -> TP 0, FN 1, FP 1
    "case_c.nii.gz": [0.0, 1, 1, 0, 27 * VOXEL_ML],  # empty prediction, 3x3x3 cube reference
    "case_d.nii.gz": [1.0, 0, 0, 0, 0.0],
    "case_e.nii.gz": [0.5, 0, 2, 2, 0.0],
}


def _run_lesion(tmp_path, batch_size=2, key="lesion_f1", **writer_kw):
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_lesion_cases()), batch_size=batch_size, num_workers=0),
        network=torch.nn.Identity(),
        key_val_metric={
            "test": CaseMetricsHandler(
                key=key, lesion_metrics=True, output_transform=from_engine(["pred", "label"])
            )
        },
        val_handlers=[CaseMetricsWriter(tmp_path, metric_name="test", **writer_kw)],
    )
    evaluator.run()
    return evaluator


@pytest.mark.parametrize("batch_size", [1, 2])
def test_writer_with_lesion_columns(tmp_path, caplog, batch_size):
    with caplog.at_level(logging.INFO, logger="CaseMetricsWriter"):
        evaluator = _run_lesion(tmp_path, batch_size)
    m = evaluator.state.metrics
    assert m["test"] == pytest.approx((1 + 0 + 0 + 1 + 0.5) / 5)  # key = lesion_f1
    assert m["test_lesion_count_diff"] == pytest.approx(1 / 5)
    assert m["test_dice"] == pytest.approx((1 + 0 + 0 + 1 + 2 * 8 / 18) / 5)
    assert evaluator.state.metric_details["test"].shape == (5, 11)
    assert evaluator.state.case_metric_columns["test"] == tuple(NAMES + LESION_NAMES)

    rows = _read_csv(tmp_path / "metrics_per_case.csv")
    assert rows[0] == ["filename", *NAMES, *LESION_NAMES]
    assert len(rows) == 6
    for r in rows[1:]:
        name = r[0].rsplit("/", 1)[-1]
        got = dict(zip(NAMES + LESION_NAMES, r[1:]))
        exp = LESION_EXPECTED[name]
        assert float(got["lesion_f1"]) == pytest.approx(exp[0])
        for col, e in zip(("lesion_count_diff", "n_ref_lesions", "n_pred_lesions"), exp[1:4]):
            assert got[col] == str(e)  # counts are written as integers
        assert float(got["volume_diff_ml"]) == pytest.approx(exp[4], rel=1e-6, abs=1e-9)
        if name in EXPECTED:  # the six default columns are unchanged
            for col, e in zip(NAMES, EXPECTED[name]):
                _assert_close(float(got[col]), e)

    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    s = summary["metrics"]
    assert list(s) == NAMES + LESION_NAMES
    assert s["lesion_f1"] == {
        "mean": pytest.approx(0.5),
        "std": pytest.approx(float(np.std([1, 0, 0, 1, 0.5]))),
        "median": 0.5,
        "count": 5,
        "nan_count": 0,
    }
    assert s["n_ref_lesions"]["mean"] == pytest.approx(1.0) and s["n_pred_lesions"]["mean"] == pytest.approx(0.8)
    assert s["volume_diff_ml"]["mean"] == pytest.approx(27 * VOXEL_ML / 5, rel=1e-6)
    assert list(summary["units"]) == NAMES + LESION_NAMES
    assert "unitless" in summary["units"]["lesion_f1"] and "ml" in summary["units"]["volume_diff_ml"]
    assert "count" in summary["units"]["lesion_count_diff"] and "count" in summary["units"]["n_ref_lesions"]
    assert summary["lesion_wise"] == LESION_NAMES
    assert summary["primary"] == ["dice", "iou", "hd95_mm", "asd_mm"]
    rules = summary["empty_rules"]
    assert set(rules) == {"both empty", "prediction empty, reference not", "reference empty, prediction not"}
    assert rules["both empty"]["lesion_f1"] == 1.0 and rules["both empty"]["dice"] == 1.0
    assert rules["prediction empty, reference not"]["lesion_f1"] == 0.0
    assert rules["prediction empty, reference not"]["hd95_mm"] == "nan"
    assert rules["prediction empty, reference not"]["hd95_voxel"] == 0.0
    assert rules["reference empty, prediction not"]["lesion_f1"] == 0.0
    assert all(list(r) == NAMES + LESION_NAMES for r in rules.values())
    assert "26-connectivity" in summary["notes"] and "lesion_f1 = 1" in summary["notes"]

    table = "\n".join(r.getMessage() for r in caplog.records if r.name == "CaseMetricsWriter")
    assert "lesion_count_diff" in table and "volume_diff_ml" in table


def test_default_summary_has_no_lesion_entries(tmp_path):
    _run(tmp_path, 2)
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert set(summary) == {"metric_name", "num_cases", "metrics", "units", "primary", "paper_compatible", "notes"}
    assert list(summary["units"]) == NAMES and list(summary["metrics"]) == NAMES


def test_writer_columns_from_width_and_argument(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(size=(2, 11))
    w = CaseMetricsWriter(tmp_path / "a")
    w.write(values, ["x", "y"])  # 11 columns: the default + lesion names
    assert _read_csv(tmp_path / "a" / "metrics_per_case.csv")[0] == ["filename", *NAMES, *LESION_NAMES]
    w = CaseMetricsWriter(tmp_path / "b", columns=["p", "q"])
    w.write(values[:, :2], ["x", "y"])
    rows = _read_csv(tmp_path / "b" / "metrics_per_case.csv")
    assert rows[0] == ["filename", "p", "q"] and float(rows[1][2]) == pytest.approx(values[0, 1])
    summary = json.loads((tmp_path / "b" / "metrics_summary.json").read_text())
    assert summary["units"] == {"p": "unknown", "q": "unknown"} and "empty_rules" not in summary
    with pytest.raises(ValueError, match="columns"):
        CaseMetricsWriter(tmp_path / "c").write(values[:, :4], ["x", "y"])


def test_handler_lesion_keys():
    with pytest.raises(ValueError):
        CaseMetricsHandler(key="lesion_f1")  # not without lesion_metrics=True
    h = CaseMetricsHandler(key="lesion_f1", lesion_metrics=True)
    assert h.metric_fn.names == tuple(NAMES + LESION_NAMES)


def test_bundle_config_wiring_with_lesion_metrics(tmp_path):
    """The evaluate.yaml snippet of the ISLES bundle (``lesion_metrics: true``) instantiates and runs."""
    parser = ConfigParser(
        {
            "output_dir": str(tmp_path),
            "key_metric": {
                "test": {
                    "_target_": "custom.handlers.CaseMetricsHandler",
                    "key": "dice",
                    "lesion_metrics": True,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "handlers": [
                {"_target_": "custom.handlers.CaseMetricsWriter", "output_dir": "@output_dir", "metric_name": "test"}
            ],
        }
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_lesion_cases()), batch_size=2, num_workers=0),
        network=torch.nn.Identity(),
        key_val_metric=parser.get_parsed_content("key_metric"),
        val_handlers=parser.get_parsed_content("handlers"),
    )
    evaluator.run()
    assert _read_csv(tmp_path / "metrics_per_case.csv")[0][-5:] == LESION_NAMES


def test_writer_labels_the_protocol(tmp_path):
    """A run whose inputs were cropped around the ground-truth label says so in every row and in the summary."""
    from custom.transforms import LABEL_CROP_NOTE, protocol_name

    loader = DataLoader(Dataset(_cases()), batch_size=3, num_workers=0)
    for label_crop, sub in ((True, "crop"), (False, "free")):
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=loader,
            network=torch.nn.Identity(),
            key_val_metric={"case": CaseMetricsHandler(key="dice", output_transform=from_engine(["pred", "label"]))},
            val_handlers=[CaseMetricsWriter(tmp_path / sub, metric_name="case", protocol=protocol_name(label_crop))],
        )
        evaluator.run()
    rows = _read_csv(tmp_path / "crop" / "metrics_per_case.csv")
    assert rows[0][-1] == "protocol" and len(rows) == 4 and all(r[-1] == LABEL_CROP_NOTE for r in rows[1:])
    assert json.loads((tmp_path / "crop" / "metrics_summary.json").read_text())["protocol"] == LABEL_CROP_NOTE
    free = _read_csv(tmp_path / "free" / "metrics_per_case.csv")
    assert all(r[-1] == "label_free" for r in free[1:])
    assert json.loads((tmp_path / "free" / "metrics_summary.json").read_text())["protocol"] == "label_free"
