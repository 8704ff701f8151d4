"""benchmarks/la_ssl.py: the downsampling keeps the geometry exact, and a tiny run of two arms goes through the LA
bundle end to end on the real shared LA cases (skipped when they are absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.la_ssl import ARMS, MAIN_ARMS, arm_overrides, downsample
from custom.data.nifti import write_nifti

REPO = Path(__file__).resolve().parents[2]
LA_H5 = REPO.parent / "shared" / "data" / "LA_h5"


def test_downsample_geometry_and_values(tmp_path: Path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(9, 8, 6)).astype(np.float32)
    lab = np.zeros((9, 8, 6), np.uint8)
    lab[2:6, 2:6, 0:4] = 1  # blocks [2:4] and [4:6] full, so majority keeps them; [0:2] empty
    lab[0, 0, 0] = 1  # a single voxel of a block of 8: majority drops it
    affine = np.array([[0.0, 0.7, 0, 10], [-0.6, 0, 0, 20], [0, 0, 1.5, -5], [0, 0, 0, 1]])
    write_nifti(img, tmp_path / "i.nii.gz", affine, np.float32)
    write_nifti(lab, tmp_path / "l.nii.gz", affine, np.uint8)
    assert downsample(tmp_path / "i.nii.gz", tmp_path / "i2.nii.gz", 2, label=False) == (4, 4, 3)
    downsample(tmp_path / "l.nii.gz", tmp_path / "l2.nii.gz", 2, label=True)
    i2, l2 = nib.load(tmp_path / "i2.nii.gz"), nib.load(tmp_path / "l2.nii.gz")
    np.testing.assert_allclose(i2.get_fdata()[1, 2, 0], img[2:4, 4:6, 0:2].mean(), rtol=1e-5)
    # the world position of a new voxel is the centre of its block of old voxels
    centre_old = affine @ np.array([2.5, 4.5, 0.5, 1.0])
    np.testing.assert_allclose(i2.affine @ np.array([1, 2, 0, 1.0]), centre_old, atol=1e-5)
    np.testing.assert_allclose(l2.affine, i2.affine)
    out = np.asarray(l2.dataobj)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[1:3, 1:3, 0:2].all() and out.sum() == 8


def test_arms_differ_only_by_their_overrides(tmp_path: Path):
    class A:
        patch, features, batch, iterations, val_interval, lr, seed = [48, 48, 32], [8, 16], [2, 2], 10, 5, 0.01, 1

    dl, sup = tmp_path / "datalist.json", tmp_path / "datalist_supervised.json"
    base = arm_overrides("dycon_official", A, dl, sup, tmp_path / "x")
    for name in ARMS:
        ov = arm_overrides(name, A, dl, sup, tmp_path / "x")
        own = ARMS[name](A) if callable(ARMS[name]) else ARMS[name]
        diff = {k for k in set(ov) | set(base) if ov.get(k) != base.get(k)}
        assert diff <= set(own) | {"datalist", "fecl_variant"}, (name, diff)
    assert arm_overrides("dycon_paper_eta_ramp", A, dl, sup, tmp_path / "x")["eta_rampup"] == 4  # 40 % of 10
    assert arm_overrides("supervised", A, dl, sup, tmp_path / "x")["datalist"] == str(sup)
    assert ARMS["supcon"]["loss#fecl#gamma"] == 0.0 and ARMS["supcon"]["loss#fecl#use_hard_negatives"] is False


@pytest.mark.timeout(600)
@pytest.mark.skipif(not (LA_H5 / "2018LA_Seg_Training Set").is_dir(), reason=f"real LA h5 cases not found at {LA_H5}")
def test_tiny_run_through_the_bundle(tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    cmd = [sys.executable, str(REPO / "benchmarks" / "la_ssl.py"), "--h5", str(LA_H5), "--workdir", str(tmp_path),
           "--labeled", "1", "--unlabeled", "1", "--test", "1", "--patch", "32", "32", "16", "--features", "4", "8",
           "16", "32", "64", "--iterations", "2", "--arms", "supervised", "dycon_paper", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [r["arm"] for r in report["results"]] == ["supervised", "dycon_paper"]
    for r in report["results"]:
        assert 0.0 <= r["metrics"]["dice"]["mean"] <= 1.0 and r["metrics"]["dice"]["count"] == 1
    datalist = json.loads((tmp_path / "data_ds2" / "datalist.json").read_text())
    assert len(datalist["training"]) == 1 and len(datalist["unlabeled"]) == 1 and len(datalist["test"]) == 1
    assert all("label" not in e for e in datalist["unlabeled"])
    assert json.loads((tmp_path / "data_ds2" / "datalist_supervised.json").read_text())["unlabeled"] == []
    # the supervised arm never computed an unsupervised term; the DyCON arm did
    sup_log = (tmp_path / "arms" / "supervised" / "train.log").read_text()
    dy_log = (tmp_path / "arms" / "dycon_paper" / "train.log").read_text()
    assert "uncl: 0.0000" in sup_log and "uncl: 0.0000" not in dy_log
    assert (tmp_path / "results.md").read_text().count("| supervised |") == 1
    assert report["dice_vs_supervised"]["dycon_paper"]["cases"] == 1
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert set(MAIN_ARMS) <= set(ARMS)
