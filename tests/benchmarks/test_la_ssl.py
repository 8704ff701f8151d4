"""benchmarks/la_ssl.py: the downsampling keeps the geometry exact and the arms differ only by their overrides (the
end-to-end run through the bundle is tested on its successor, benchmarks/la_protocol.py, which uses both)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.la_ssl import ARMS, MAIN_ARMS, arm_overrides, downsample
from custom.data.nifti import write_nifti

REPO = Path(__file__).resolve().parents[2]


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
    # 10 iterations validated every 5: the bundle's ids, 2 epochs of 5 iterations validated after each
    assert {k: base[k] for k in ("max_epochs", "epoch_length", "val_interval")} == {
        "max_epochs": 2, "epoch_length": 5, "val_interval": 1}
    assert "max_iterations" not in base
    assert ARMS["supcon"]["loss#fecl#gamma"] == 0.0 and ARMS["supcon"]["loss#fecl#use_hard_negatives"] is False
