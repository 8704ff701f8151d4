"""benchmarks/la_protocol.py: the statistics (exact values), and a tiny run of the protocol through the LA bundle on
real shared LA cases with a held-out list (skipped when they are absent)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.la_protocol import _write_once, bootstrap_ci, comparisons, paired, sign_test, summarise
from custom.demo import shared_la_h5

REPO = Path(__file__).resolve().parents[2]
LA_H5 = shared_la_h5() or REPO.parent / "shared" / "data" / "LA_h5"  # $DYCON_LA_H5 or ../shared/data/LA_h5


def test_sign_test_exact():
    assert sign_test([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)  # 5 of 5 positive
    assert sign_test([1, -1, 1, -1]) == 1.0
    assert sign_test([0.2, 0.1, -0.3, 0.0, 0.4, 0.5]) == pytest.approx(2 * (1 + 5) / 32)  # the tie is dropped
    assert sign_test([0.0, 0.0]) == 1.0


def test_bootstrap_interval():
    lo, hi = bootstrap_ci([0.01 * i for i in range(20)], n=4000, seed=1)
    mean = 0.095
    assert lo < mean < hi and hi - lo < 0.08 and lo > 0.05
    assert bootstrap_ci([0.3] * 5, n=100) == [0.3, 0.3]
    assert bootstrap_ci([1.0, 2.0], n=500, seed=3) == bootstrap_ci([1.0, 2.0], n=500, seed=3)  # seeded


def _run(arm, seed, dice):
    return {"arm": arm, "seed": seed, "per_case": {"validation_last_bundle": {
        f"c{i}": {"dice": d} for i, d in enumerate(dice)}}}


def test_paired_and_summary():
    runs = [_run("supervised", 1, [0.5, 0.6, 0.7]), _run("supervised", 2, [0.6, 0.6, 0.5]),
            _run("dycon_paper", 1, [0.7, 0.6, 0.9]), _run("dycon_paper", 2, [0.8, 0.5, 0.7])]
    p = paired(runs, "dycon_paper", "supervised", "validation_last_bundle", n_boot=500)
    # seed-averaged cases: supervised [0.55, 0.6, 0.6], dycon [0.75, 0.55, 0.8] -> differences [0.2, -0.05, 0.2]
    assert p["mean_diff"] == pytest.approx((0.2 - 0.05 + 0.2) / 3)
    assert p["improved"] == 2 and p["cases"] == 3 and p["sign_test_p"] == pytest.approx(1.0)
    assert p["seed_matched"] == pytest.approx([0.4 / 3, 0.3 / 3])
    s = summarise(runs)["dycon_paper"]["validation_last_bundle"]
    assert s["mean"] == pytest.approx(0.7) and s["seed_means"] == pytest.approx([2.2 / 3, 2.0 / 3])
    assert s["std_seeds"] == pytest.approx(math.sqrt(2) * 0.1 / 3)
    assert paired(runs, "mean_teacher", "supervised", "validation_last_bundle") is None


def test_write_once_leaves_identical_files_alone(tmp_path: Path):
    f = tmp_path / "datalist.json"
    _write_once(f, "a")
    os.utime(f, (1, 1))
    _write_once(f, "a")  # same text: not rewritten (another runner may be reading it)
    assert f.stat().st_mtime == 1 and f.read_text() == "a"
    _write_once(f, "b")
    assert f.read_text() == "b" and list(tmp_path.iterdir()) == [f]  # replaced atomically, no temporary left


def test_bf16_arms_are_compared_with_their_fp32_arm():
    def run(arm, seed, dice):
        return {"arm": arm, "seed": seed, "per_case": {"validation_last_bundle": {"c1": {"dice": dice}, "c2": {"dice": dice}}}}

    runs = [run(a, s, d) for s in (1, 2) for a, d in (("supervised", 0.5), ("dycon_paper", 0.6), ("dycon_paper_bf16", 0.65))]
    pairs = {(p["a"], p["b"]) for p in comparisons(runs, n_boot=100)}
    assert pairs == {("dycon_paper", "supervised"), ("dycon_paper_bf16", "supervised"),
                     ("dycon_paper_bf16", "dycon_paper")}  # each pair once


@pytest.mark.timeout(600)
@pytest.mark.skipif(not (LA_H5 / "2018LA_Seg_Training Set").is_dir(), reason=f"real LA h5 cases not found at {LA_H5}")
def test_tiny_protocol_with_a_held_out_list(tmp_path: Path):
    # a 5-case release: train.list = 4 ids (1 labeled, 2 unlabeled, the last one validation), test.list = 1 id
    ids = (LA_H5 / "train.list").read_text().split()[:5]
    rel = tmp_path / "release"
    (rel / "2018LA_Seg_Training Set").mkdir(parents=True)
    for i in ids:
        (rel / "2018LA_Seg_Training Set" / i).symlink_to(LA_H5 / "2018LA_Seg_Training Set" / i, target_is_directory=True)
    (rel / "train.list").write_text("\n".join(ids[:4]) + "\n")
    (rel / "held_out.list").write_text(ids[4] + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    cmd = [sys.executable, str(REPO / "benchmarks" / "la_protocol.py"), "--h5", str(rel), "--workdir",
           str(tmp_path / "work"), "--test-list", str(rel / "held_out.list"), "--labeled", "1", "--val", "1",
           "--patch", "32", "32", "16", "--features", "4", "8", "16", "32", "64", "--iterations", "2",
           "--val-interval", "1", "--seeds", "3", "--arms", "dycon_paper", "dycon_paper_label_crop", "--windows", "bundle",
           "--threads", "1", "--bootstrap", "100"]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "results.json").read_text())
    datalist = json.loads((tmp_path / "work" / "data_ds2" / "datalist.json").read_text())
    name = lambda e: Path(e["image"]).name.split(".")[0]  # noqa: E731
    assert [name(e) for e in datalist["training"]] == ids[:1]
    assert sorted(name(e) for e in datalist["unlabeled"]) == sorted(ids[1:3])
    assert [name(e) for e in datalist["validation"]] == ids[3:4] and [name(e) for e in datalist["test"]] == ids[4:]
    assert all("label" not in e for e in datalist["unlabeled"])
    for run in report["runs"]:
        assert set(run["per_case"]) == {f"{s}_{m}_bundle" for s in ("validation", "test") for m in ("last", "selected")}
        assert list(run["per_case"]["test_last_bundle"]) == ids[4:]  # the held-out case, scored
        assert list(run["per_case"]["validation_selected_bundle"]) == ids[3:4]
        case = run["per_case"]["test_last_bundle"][ids[4]]
        assert 0.0 <= case["dice"] <= 1.0 and case["hd95_mm"] >= 0 and case["hd95_voxel"] >= 0
        assert run["best_validation"]["epoch"] in (1, 2)
        # --iterations 2 --val-interval 1: 2 epochs of 1 iteration, a validation after each
        assert {k: run["overrides"][k] for k in ("max_epochs", "epoch_length", "val_interval")} == {
            "max_epochs": 2, "epoch_length": 1, "val_interval": 1}
        train_log = (tmp_path / "work" / "arms" / run["arm"] / "seed3" / "train.log").read_text()
        assert "Epoch: 2/2, Iter: 1/1" in train_log and "Epoch: 3/" not in train_log
    # the label-crop arm crops around the label in training and evaluation, and its outputs say so
    crop = [r for r in report["runs"] if r["arm"] == "dycon_paper_label_crop"][0]["overrides"]
    assert crop["label_crop"] is True and crop["label_crop_margin"] == 8  # 15 voxels of the full grid / downsample 2
    for arm, protocol in (("dycon_paper", "label_free"), ("dycon_paper_label_crop", "label_crop")):
        evaluation = tmp_path / "work" / "arms" / arm / "seed3" / "eval" / "test_last_bundle"
        with open(evaluation / "metrics_per_case.csv") as f:
            assert all(row["protocol"].startswith(protocol) for row in csv.DictReader(f))
        postfix = "seg_labelcrop" if arm.endswith("label_crop") else "seg"
        assert [p.name for p in (evaluation / "predictions").iterdir()] == [f"{ids[4]}_{postfix}.nii.gz"]
    (p,) = [p for p in report["paired"] if p["evaluation"] == "test_selected_bundle"]
    assert p["a"] == "dycon_paper_label_crop" and p["b"] == "dycon_paper" and p["cases"] == 1
    md = (tmp_path / "work" / "results.md").read_text()
    assert "dycon_paper_label_crop - dycon_paper" in md and "test_last_bundle" in md
