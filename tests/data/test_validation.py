"""custom.data.check_dataset: one test per bad-input case on tiny hand-made NIfTI datasets (in-process).

Preparation-side cases (corrupt h5 / nrrd, more labeled cases asked than exist, DICOM series with a missing slice,
label values of the raw releases) are covered by tests/data/test_{la,pancreas,brats19,isles22}.py.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.data import DatasetError, check_dataset

SHAPE = (8, 8, 6)


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _make(root: Path, n_labeled: int = 2, n_unlabeled: int = 1, n_test: int = 1) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "unlabeled": [], "validation": [], "test": []}
    names = [("training", n_labeled), ("unlabeled", n_unlabeled), ("test", n_test)]
    k = 0
    for key, n in names:
        for _ in range(n):
            img, lab = f"images/c{k}.nii.gz", f"labels/c{k}.nii.gz"
            _save(rng.normal(size=SHAPE).astype(np.float32), root / img)
            _save((rng.random(SHAPE) > 0.5).astype(np.uint8), root / lab)
            lists[key].append({"image": img, "label": lab} if key != "unlabeled" else {"image": img})
            k += 1
    (root / "datalist.json").write_text(json.dumps(lists))
    return root / "datalist.json"


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return _make(tmp_path / "ds")


def _err(datalist: Path, exc: type = DatasetError, **kwargs) -> str:
    with pytest.raises(exc) as info:
        check_dataset(datalist, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_valid_dataset_passes(ds: Path):
    check_dataset(ds, in_channels=1)
    check_dataset(ds, keys=("test",), in_channels=1)


def test_missing_dataset_dir(tmp_path: Path):
    msg = _err(tmp_path / "nope" / "datalist.json", FileNotFoundError)
    assert str(tmp_path / "nope") in msg and "not found" in msg


def test_missing_datalist(tmp_path: Path):
    msg = _err(tmp_path / "datalist.json", FileNotFoundError)
    assert "datalist.json" in msg


def test_entry_points_to_missing_file(ds: Path):
    (ds.parent / "labels" / "c1.nii.gz").unlink()
    msg = _err(ds)
    assert "missing file" in msg and "c1.nii.gz" in msg


def test_shape_mismatch(ds: Path):
    _save(np.zeros((8, 8, 5), np.uint8), ds.parent / "labels" / "c0.nii.gz")
    msg = _err(ds)
    assert "c0.nii.gz" in msg and "shape" in msg and "(8, 8, 5)" in msg


def test_affine_mismatch(ds: Path):
    aff = np.eye(4)
    aff[0, 3] = 0.01
    _save(np.zeros(SHAPE, np.uint8), ds.parent / "labels" / "c0.nii.gz", aff)
    msg = _err(ds)
    assert "labels/c0.nii.gz" in msg and "affine" in msg


def test_affine_within_tolerance_passes(ds: Path):
    aff = np.eye(4)
    aff[0, 3] = 1e-4
    _save(np.zeros(SHAPE, np.uint8), ds.parent / "labels" / "c0.nii.gz", aff)
    check_dataset(ds)


def test_wrong_channel_count(ds: Path):
    msg = _err(ds, in_channels=2)
    assert "c0.nii.gz" in msg and "1 channel" in msg and "in_channels=2" in msg
    _save(np.zeros((*SHAPE, 2), np.float32), ds.parent / "images" / "c0.nii.gz")
    check_dataset(ds, keys=("training",), in_channels=None)
    msg = _err(ds, in_channels=1)
    assert "2 channel" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(ds: Path, bad: float):
    a = np.zeros(SHAPE, np.float32)
    a[1, 2, 3] = bad
    _save(a, ds.parent / "images" / "c2.nii.gz")  # the unlabeled case
    msg = _err(ds)
    assert "images/c2.nii.gz" in msg and "non-finite" in msg


def test_label_values_outside_set(ds: Path):
    lab = np.zeros(SHAPE, np.uint8)
    lab[0, 0, 0] = 3
    _save(lab, ds.parent / "labels" / "c3.nii.gz")  # the test case
    msg = _err(ds)
    assert "labels/c3.nii.gz" in msg and "3" in msg and "{0, 1}" in msg
    check_dataset(ds, label_values=(0, 1, 3))


def test_empty_labeled_list(tmp_path: Path):
    ds = _make(tmp_path / "ds", n_labeled=0)
    msg = _err(ds)
    assert "'training' list is empty" in msg
    check_dataset(ds, keys=("test",))  # evaluation does not need it


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_nifti(ds: Path, how: str):
    path = ds.parent / "images" / "c1.nii.gz"
    if how == "garbage":
        path.write_bytes(b"not a nifti file at all" * 20)
    else:
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    msg = _err(ds)
    assert "images/c1.nii.gz" in msg and ("corrupt" in msg)


def test_check_inputs_of_inference(tmp_path: Path) -> None:
    """inference.yaml's start-up check: raw inputs of any format MONAI reads; a bad one is one DatasetError naming it."""
    import nrrd

    from custom.data import check_inputs

    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 6), np.int16), np.diag([-0.7, -0.7, 2.5, 1])), str(good))
    raw = tmp_path / "lgemri.nrrd"
    nrrd.write(
        str(raw),
        np.ones((8, 8, 6), np.uint8),
        {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)},
    )
    check_inputs([{"image": str(good)}, {"image": str(raw)}], in_channels=1)
    check_inputs([{"image": [str(good), str(good)]}], in_channels=2)  # one channel per 3-D file
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), str(flat))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 6, 2), np.float32), np.eye(4)), str(two))
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 6), np.nan, np.float32), np.eye(4)), str(nan))
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ngarbage")
    cases = {
        flat: r"flat\.nii\.gz: image must be 3-D .* got shape \(8, 8\)",
        empty: r"empty\.nii\.gz: unreadable or corrupt image file",
        two: r"two\.nii\.gz: input has 2 channel\(s\) but the bundle expects in_channels=1",
        nan: r"nan\.nii\.gz: image has non-finite voxels",
        broken: r"broken\.nrrd: unreadable or corrupt image file",
    }
    for path, pattern in cases.items():
        with pytest.raises(DatasetError, match=pattern):
            check_inputs([{"image": str(good)}, {"image": str(path)}], in_channels=1)
    with pytest.raises(FileNotFoundError, match="inference input not found: .*missing.nii.gz"):
        check_inputs([{"image": str(tmp_path / "missing.nii.gz")}], in_channels=1)
