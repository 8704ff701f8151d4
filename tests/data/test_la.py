"""LA preparation (custom.data.la): synthetic raw and h5 releases, the real 24-case h5 subset, CLI, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch

from custom.data.datalist import DatasetError, assert_disjoint, read_datalist, read_id_list
from custom.data.la import (
    H5_FOLDER,
    h5_affine,
    load_h5_case,
    nrrd_affine,
    prepare_la,
    synth_la,
    synth_la_h5,
    ua_mt_preprocess,
)
from entry_points import check_exported_bundle, check_help_from_bundle_folder, check_matches_cli

REPO = Path(__file__).resolve().parents[2]
REAL_LA = REPO.parent / "shared" / "data" / "LA_h5"
real_data = pytest.mark.skipif(
    not (REAL_LA / H5_FOLDER).is_dir(),
    reason=f"real LA h5 subset not found at {REAL_LA} (shared data not mounted in this checkout)",
)


def _nii(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def _case_ids(src: Path, name: str) -> list[str]:
    return read_id_list(src / name)


# ------------------------------------------------------------------------------------- synthetic raw


def test_synth_la_layout_and_headers(raw_release: Path):
    train, test = _case_ids(raw_release, "train.list"), _case_ids(raw_release, "test.list")
    assert len(train) == 8 and len(test) == 4 and not set(train) & set(test)
    for case_id in train + test:
        assert len(case_id) == 20 and case_id.isalnum() and case_id == case_id.upper()
        image, ih = nrrd.read(str(raw_release / case_id / "lgemri.nrrd"))
        label, lh = nrrd.read(str(raw_release / case_id / "laendo.nrrd"))
        assert image.dtype == np.uint8 and label.dtype == np.uint8
        assert image.shape == label.shape == (48, 44, 20)
        assert set(np.unique(label).tolist()) == {0, 255}
        for h in (ih, lh):
            assert h["dimension"] == 3 and h["space"] == "left-posterior-superior"
            np.testing.assert_array_equal(h["space directions"], np.eye(3))  # 1 mm, as the real headers read
        # the atrium is brighter than the rest
        assert image[label == 255].mean() > image[label == 0].mean() + 40


def test_synth_is_deterministic(tmp_path: Path, tree_checksums):
    a = synth_la(tmp_path / "a", n_train=2, n_test=1, shape=(24, 24, 12), seed=5)
    b = synth_la(tmp_path / "b", n_train=2, n_test=1, shape=(24, 24, 12), seed=5)
    c = synth_la(tmp_path / "c", n_train=2, n_test=1, shape=(24, 24, 12), seed=6)
    assert tree_checksums(a) == tree_checksums(b)
    assert _case_ids(a, "train.list") != _case_ids(c, "train.list")
    with pytest.raises(DatasetError, match="not empty"):
        synth_la(a)


def test_cli_prepare_raw(raw_release: Path, tmp_path: Path):
    dst = tmp_path / "LA"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "la", "--src", str(raw_release), "--dst", str(dst),
         "--labeled", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dst / "datalist.json")
    assert time.perf_counter() - t0 < 60
    dl = read_datalist(dst)
    train, test = _case_ids(raw_release, "train.list"), _case_ids(raw_release, "test.list")
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert [e["id"] for e in dl["unlabeled"]] == train[2:]
    assert dl["validation"] == []
    assert [e["id"] for e in dl["test"]] == test


def test_cli_error_is_one_line_exit_2(raw_release: Path, tmp_path: Path, leftovers):
    dst = tmp_path / "LA"
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "la", "--src", str(raw_release), "--dst", str(dst),
         "--labeled", "2", "--fraction", "0.5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "dycon: error: give either labeled (a count) or fraction" in proc.stderr
    assert leftovers(dst) == []


def test_prepare_raw_contents(raw_release: Path, tmp_path: Path):
    dst = tmp_path / "LA"
    out = prepare_la(raw_release, dst, labeled=3, val=2)
    assert out == dst / "datalist.json"
    dl = read_datalist(out)
    assert set(dl) == {"training", "unlabeled", "validation", "test", "dycon"}
    train, test = _case_ids(raw_release, "train.list"), _case_ids(raw_release, "test.list")
    assert [e["id"] for e in dl["training"]] == train[:3]
    assert [e["id"] for e in dl["validation"]] == train[-2:]
    assert [e["id"] for e in dl["unlabeled"]] == train[3:-2]
    assert all("label" not in e for e in dl["unlabeled"])
    assert_disjoint(dl)
    meta = dl["dycon"]
    assert meta["source"]["layout"] == "raw" and meta["labeled_ids"] == train[:3]
    assert meta["counts"] == {"training": 3, "unlabeled": 3, "validation": 2, "test": 4}
    assert meta["missing"] == {"training": [], "test": []}
    assert "0.625" in meta["spacing_note"] and "not trusted" in meta["spacing_note"]
    assert meta["arguments"]["labeled"] == 3 and meta["arguments"]["val"] == 2
    assert meta["preprocessing"].startswith("none: the nrrd arrays are written unchanged")
    assert meta["crop_uses_label"] == "no" and meta["header_spacings"] == [[1.0, 1.0, 1.0]]
    assert meta["skipped"] == {}
    for key in ("training", "unlabeled", "validation", "test"):
        for e in dl[key]:
            raw_img, _ = nrrd.read(str(raw_release / e["id"] / "lgemri.nrrd"))
            raw_lab, _ = nrrd.read(str(raw_release / e["id"] / "laendo.nrrd"))
            img, image = _nii(dst / e["image"])
            lab, label = _nii(dst / f"labels/{e['id']}.nii.gz")  # exists on disk for unlabeled cases too
            # the header's LPS axes as RAS (x and y negated), the challenge's 0.625 mm instead of the header's 1 mm
            np.testing.assert_allclose(img.affine, np.diag([-0.625, -0.625, 0.625, 1.0]))
            np.testing.assert_allclose(lab.affine, img.affine)
            np.testing.assert_allclose(img.header["pixdim"][1:4], 0.625)
            assert img.get_data_dtype() == np.uint8 and lab.get_data_dtype() == np.uint8  # as stored: no z-score
            np.testing.assert_array_equal(image, raw_img)  # unchanged: no crop, no intensity change
            np.testing.assert_array_equal(label, (raw_lab == 255).astype(np.uint8))


def test_raw_crop_mirrors_ua_mt(tmp_path: Path):
    """On an in-plane size larger than UA-MT's 112 minimum, the crop really crops, within UA-MT's bounds."""
    src = synth_la(tmp_path / "big", n_train=2, n_test=0, shape=(200, 190, 10), seed=3)
    for case_id in _case_ids(src, "train.list"):
        raw_img, _ = nrrd.read(str(src / case_id / "lgemri.nrrd"))
        raw_lab, _ = nrrd.read(str(src / case_id / "laendo.nrrd"))
        image, label = ua_mt_preprocess(raw_img, raw_lab, case_id)
        image2, label2 = ua_mt_preprocess(raw_img, raw_lab, case_id)
        np.testing.assert_array_equal(image, image2)  # seeded per case
        nz = np.nonzero(raw_lab == 255)
        for axis in (0, 1):
            ext = int(nz[axis].max() - nz[axis].min())
            pad = max(112 - ext, 0) // 2
            # UA-MT: [min - m1 - pad, max + m2 + pad) with m1, m2 in [10, 20), clipped to the volume
            assert ext + 20 + 2 * pad <= label.shape[axis] <= min(ext + 38 + 2 * pad, raw_lab.shape[axis])
            assert label.shape[axis] < raw_lab.shape[axis]
        assert label.shape[2] == raw_lab.shape[2]
        assert int(label.sum()) == int((raw_lab == 255).sum())
        assert image.dtype == np.float32 and label.dtype == np.uint8


def test_raw_without_lists_uses_documented_rule(raw_copy: Path, tmp_path: Path):
    (raw_copy / "train.list").unlink()
    (raw_copy / "test.list").unlink()
    dl = read_datalist(prepare_la(raw_copy, tmp_path / "LA", labeled=2))
    ids = sorted(p.name for p in raw_copy.iterdir() if p.is_dir())
    assert [e["id"] for e in dl["test"]] == ids[-2:]  # floor(20 % of 12) = 2, the last sorted ids
    assert [e["id"] for e in dl["training"]] == ids[:2]
    assert "no train.list/test.list found" in dl["dycon"]["source"]["split_rule"]


def test_raw_release_in_training_subfolder(raw_release: Path, tmp_path: Path):
    """UA-MT's script reads the raw data from '2018LA_Seg_Training Set/<id>/lgemri.nrrd'."""
    root = tmp_path / "release"
    shutil.copytree(raw_release, root / H5_FOLDER)
    dl = read_datalist(prepare_la(root, tmp_path / "LA", labeled=1))
    assert dl["dycon"]["source"]["layout"] == "raw"
    assert [e["id"] for e in dl["training"]] == _case_ids(raw_release, "train.list")[:1]


# -------------------------------------------------------------------------------------- synthetic h5


def test_prepare_h5_values_identical(h5_release: Path, tmp_path: Path):
    dl = read_datalist(prepare_la(h5_release, tmp_path / "LA", labeled=2, val=1))
    train = _case_ids(h5_release, "train.list")
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert dl["dycon"]["source"]["layout"] == "h5"
    for key in ("training", "unlabeled", "validation", "test"):
        for e in dl[key]:
            with h5py.File(h5_release / H5_FOLDER / e["id"] / "mri_norm2.h5", "r") as f:
                h5_image, h5_label = f["image"][()], f["label"][()]
            _, image = _nii(tmp_path / "LA" / e["image"])
            _, label = _nii(tmp_path / "LA" / f"labels/{e['id']}.nii.gz")
            np.testing.assert_array_equal(image, h5_image)
            np.testing.assert_array_equal(label, h5_label)
            assert image.dtype == np.float32 and label.dtype == np.uint8


def test_synth_h5_matches_ua_mt_preprocessing(tmp_path: Path):
    raw = synth_la(tmp_path / "raw", n_train=2, n_test=1, shape=(30, 28, 12), seed=9)
    h5 = synth_la_h5(tmp_path / "h5", n_train=2, n_test=1, shape=(30, 28, 12), seed=9)
    for case_id in _case_ids(raw, "train.list") + _case_ids(raw, "test.list"):
        image, label = load_h5_case(h5 / H5_FOLDER / case_id / "mri_norm2.h5")
        raw_img, _ = nrrd.read(str(raw / case_id / "lgemri.nrrd"))
        raw_lab, _ = nrrd.read(str(raw / case_id / "laendo.nrrd"))
        ref_image, ref_label = ua_mt_preprocess(raw_img, raw_lab, case_id)
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(label, ref_label)


def test_src_pointing_at_training_folder(h5_release: Path, tmp_path: Path):
    dl = read_datalist(prepare_la(h5_release / H5_FOLDER, tmp_path / "a", labeled=1))
    assert dl["dycon"]["source"]["train_list"] == str(h5_release / "train.list")
    # lists inside the training folder also work
    src = tmp_path / "inside"
    shutil.copytree(h5_release / H5_FOLDER, src)
    shutil.copy(h5_release / "train.list", src)
    shutil.copy(h5_release / "test.list", src)
    dl2 = read_datalist(prepare_la(src, tmp_path / "b", labeled=1))
    assert [e["id"] for e in dl2["training"]] == [e["id"] for e in dl["training"]]


def test_missing_cases_reported_and_empty_test(tmp_path: Path, capsys):
    src = synth_la_h5(tmp_path / "h5", n_train=5, n_test=2, shape=(24, 24, 10), seed=2, write_test=False)
    train = _case_ids(src, "train.list")
    shutil.rmtree(src / H5_FOLDER / train[1])  # a training case absent from the release
    with pytest.warns(UserWarning, match="'test' is empty"):
        dl = read_datalist(prepare_la(src, tmp_path / "LA", labeled=2))
    assert dl["test"] == []
    assert dl["dycon"]["missing"] == {"training": [train[1]], "test": _case_ids(src, "test.list")}
    assert [e["id"] for e in dl["training"]] == [train[0], train[2]]  # first 2 PRESENT ids
    err = capsys.readouterr().err
    assert "1 of 5 train.list ids are not in" in err and "2 of 2 test.list ids" in err


def test_default_labeled_is_8_and_never_clipped(tmp_path: Path, h5_release: Path, leftovers):
    with pytest.raises(DatasetError, match="8 labeled cases asked but only 6"):
        prepare_la(h5_release, tmp_path / "LA")
    assert leftovers(tmp_path / "LA") == []
    src = synth_la_h5(tmp_path / "h5", n_train=9, n_test=0, shape=(20, 20, 8), seed=4)
    with pytest.warns(UserWarning):
        dl = read_datalist(prepare_la(src, tmp_path / "LA9"))
    assert len(dl["training"]) == 8 and len(dl["unlabeled"]) == 1
    assert "default N = 8" in dl["dycon"]["labeled_rule"]


# ----------------------------------------------------------------------------------------- idempotency


def test_idempotent_rerun_and_overwrite(h5_release: Path, tmp_path: Path, tree_checksums, leftovers, capsys):
    dst = tmp_path / "LA"
    prepare_la(h5_release, dst, labeled=2, val=1)
    first = tree_checksums(dst)
    assert prepare_la(h5_release, dst, labeled=2, val=1) == dst / "datalist.json"  # same arguments: no-op
    assert "nothing to do" in capsys.readouterr().err
    assert tree_checksums(dst) == first
    prepare_la(h5_release, dst, labeled=2, val=1, overwrite=True)  # rebuilt from scratch: identical bytes
    assert tree_checksums(dst) == first
    with pytest.raises(DatasetError, match="other arguments"):
        prepare_la(h5_release, dst, labeled=3)
    assert tree_checksums(dst) == first
    prepare_la(h5_release, dst, labeled=3, overwrite=True)
    assert read_datalist(dst)["dycon"]["counts"]["training"] == 3
    assert leftovers(dst) == ["LA"]


def test_raw_rerun_is_byte_identical(raw_release: Path, tmp_path: Path, tree_checksums):
    a = prepare_la(raw_release, tmp_path / "a", labeled=2).parent
    b = prepare_la(raw_release, tmp_path / "b", labeled=2).parent
    assert tree_checksums(a) == tree_checksums(b)  # datalist.json included: no timestamp, no dst path in it


def test_foreign_dst_refused(h5_release: Path, tmp_path: Path):
    dst = tmp_path / "LA"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset written by dycon prepare"):
        prepare_la(h5_release, dst, labeled=1, overwrite=True)
    assert sorted(os.listdir(dst)) == ["notes.txt"]


def test_dst_inside_src_refused(h5_copy: Path, leftovers):
    with pytest.raises(DatasetError, match="must be outside src"):
        prepare_la(h5_copy, h5_copy / "prepared", labeled=1)
    assert leftovers(h5_copy / "prepared") == []


# ---------------------------------------------------------------------------------------------- errors


def _first_train(src: Path) -> str:
    return _case_ids(src, "train.list")[0]


def _rewrite_h5(path: Path, image=None, label=None) -> None:
    with h5py.File(path, "r") as f:
        old_image, old_label = f["image"][()], f["label"][()]
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=old_image if image is None else image(old_image))
        f.create_dataset("label", data=old_label if label is None else label(old_label))


def _set_first(a: np.ndarray, value) -> np.ndarray:
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("garbage", "cannot read h5 file"),
        ("label3", "label values [3] outside"),
        ("nan", "NaN/Inf voxel"),
        ("shape", "image shape"),
        ("nokey", "lacks dataset(s) ['label']"),
    ],
)
def test_h5_errors_leave_no_dst(h5_copy: Path, tmp_path: Path, leftovers, corrupt: str, message: str):
    case = h5_copy / H5_FOLDER / _first_train(h5_copy) / "mri_norm2.h5"
    if corrupt == "garbage":
        case.write_bytes(os.urandom(4096))
    elif corrupt == "label3":
        _rewrite_h5(case, label=lambda a: _set_first(a, 3))
    elif corrupt == "nan":
        _rewrite_h5(case, image=lambda a: _set_first(a, np.nan))
    elif corrupt == "shape":
        _rewrite_h5(case, label=lambda a: a[:-1])
    elif corrupt == "nokey":
        with h5py.File(case, "a") as f:
            del f["label"]
    dst = tmp_path / "LA"
    with pytest.raises(DatasetError) as err:
        prepare_la(h5_copy, dst, labeled=2)
    assert message in str(err.value)
    assert str(case) in str(err.value)  # names the file
    assert leftovers(dst) == []


def _defect(case: Path, corrupt: str) -> None:
    """Make one case of a writable raw release defective (headers kept unless the defect is in them)."""
    image, ih = nrrd.read(str(case / "lgemri.nrrd"))
    label, lh = nrrd.read(str(case / "laendo.nrrd"))
    if corrupt == "garbage":
        (case / "lgemri.nrrd").write_bytes(b"NRRD0004\ntype: what\n\n" + os.urandom(100))
    elif corrupt == "zero_bytes":
        (case / "laendo.nrrd").write_bytes(b"")
    elif corrupt == "missing_label":
        (case / "laendo.nrrd").unlink()
    elif corrupt == "missing_image":
        (case / "lgemri.nrrd").unlink()
    elif corrupt == "empty_folder":
        for p in case.iterdir():
            p.unlink()
    elif corrupt == "label7":
        nrrd.write(str(case / "laendo.nrrd"), _set_first(label, 7), lh)
    elif corrupt == "empty_label":
        nrrd.write(str(case / "laendo.nrrd"), np.zeros_like(label), lh)
    elif corrupt == "nan":
        ih = {**ih, "type": "float"}
        nrrd.write(str(case / "lgemri.nrrd"), _set_first(image.astype(np.float32), np.inf), ih)
    elif corrupt == "constant":
        nrrd.write(str(case / "lgemri.nrrd"), np.full_like(image, 7), ih)
    elif corrupt == "shape":
        nrrd.write(str(case / "laendo.nrrd"), label[:, :, :-1].copy(), {**lh, "sizes": np.array(label[:, :, :-1].shape)})
    elif corrupt == "label_directions":  # same array, the label's header says x is flipped
        nrrd.write(str(case / "laendo.nrrd"), label, {**lh, "space directions": np.diag([-1.0, 1.0, 1.0])})
    elif corrupt == "label_spacing":
        nrrd.write(str(case / "laendo.nrrd"), label, {**lh, "space directions": np.diag([1.0, 1.0, 2.5])})
    elif corrupt == "label_origin":
        nrrd.write(str(case / "laendo.nrrd"), label, {**lh, "space origin": np.array([0.0, 12.0, 0.0])})
    elif corrupt == "label_space":
        nrrd.write(str(case / "laendo.nrrd"), label, {**lh, "space": "right-anterior-superior"})
    elif corrupt == "no_geometry":
        nrrd.write(str(case / "lgemri.nrrd"), image)  # no space directions / origin
    elif corrupt == "odd_space":
        nrrd.write(str(case / "lgemri.nrrd"), image, {**ih, "space": "scanner-xyz"})
    else:
        raise AssertionError(corrupt)


RAW_DEFECTS = [
    ("garbage", "cannot read nrrd file", "lgemri.nrrd"),
    ("zero_bytes", "cannot read nrrd file", "laendo.nrrd"),
    ("missing_label", "missing label nrrd file", "laendo.nrrd"),
    ("missing_image", "missing image nrrd file", "lgemri.nrrd"),
    ("empty_folder", "empty case folder", ""),
    ("label7", "label values [7] outside", "laendo.nrrd"),
    ("empty_label", "label is empty", "laendo.nrrd"),
    ("nan", "NaN/Inf voxel", "lgemri.nrrd"),
    ("constant", "image is constant", "lgemri.nrrd"),
    ("shape", "label shape", "laendo.nrrd"),
    ("label_directions", "label geometry disagrees with its image", "laendo.nrrd"),
    ("label_spacing", "label geometry disagrees with its image", "laendo.nrrd"),
    ("label_origin", "label geometry disagrees with its image", "laendo.nrrd"),
    ("label_space", "label geometry disagrees with its image", "laendo.nrrd"),
    ("no_geometry", "no geometry", "lgemri.nrrd"),
    ("odd_space", "is not supported", "lgemri.nrrd"),
]


@pytest.mark.parametrize(("corrupt", "message", "which"), RAW_DEFECTS)
def test_raw_defects_fail_naming_the_case(raw_copy: Path, tmp_path: Path, leftovers, corrupt, message, which):
    """Every defect of a listed case fails the preparation naming the case, its file and the reason; nothing is
    written."""
    case_id = _case_ids(raw_copy, "test.list")[0]  # a test case: defects anywhere in the lists count
    case = raw_copy / case_id
    _defect(case, corrupt)
    dst = tmp_path / "LA"
    with pytest.raises(DatasetError) as err:
        prepare_la(raw_copy, dst, labeled=2)
    text = str(err.value)
    assert message in text and str(case / which) in text and f"1 case(s) cannot be prepared ({case_id}:" in text
    assert "--skip-incomplete" in text
    assert leftovers(dst) == []


def test_raw_skip_incomplete_lists_skipped_cases(raw_copy: Path, tmp_path: Path, capsys):
    """With skip_incomplete, defective cases (a labeled one, an unlabeled one, a test one) are left out, the split is
    made of the remaining cases, and the datalist and the summary list them with their reasons."""
    train, test = _case_ids(raw_copy, "train.list"), _case_ids(raw_copy, "test.list")
    defects = {train[0]: "label_origin", train[4]: "missing_label", test[1]: "empty_folder"}
    for case_id, corrupt in defects.items():
        _defect(raw_copy / case_id, corrupt)
    with pytest.raises(DatasetError, match="3 case"):
        prepare_la(raw_copy, tmp_path / "strict", labeled=2)
    capsys.readouterr()
    dl = read_datalist(prepare_la(raw_copy, tmp_path / "LA", labeled=2, val=1, skip_incomplete=True))
    kept = [i for i in train if i not in defects]
    assert [e["id"] for e in dl["training"]] == kept[:2]
    assert [e["id"] for e in dl["validation"]] == kept[-1:]
    assert [e["id"] for e in dl["unlabeled"]] == kept[2:-1]
    assert [e["id"] for e in dl["test"]] == [i for i in test if i not in defects]
    skipped = dl["dycon"]["skipped"]
    assert sorted(skipped) == sorted(defects)
    assert "label geometry disagrees" in skipped[train[0]] and "missing label nrrd file" in skipped[train[4]]
    assert "empty case folder" in skipped[test[1]]
    assert dl["dycon"]["arguments"]["skip_incomplete"] is True
    err = capsys.readouterr().err
    for case_id in defects:
        assert f"skipped (--skip-incomplete) {case_id}: " in err
    assert not (tmp_path / "LA" / "images" / f"{train[0]}.nii.gz").exists()


def test_cli_skip_incomplete(raw_copy: Path, tmp_path: Path, leftovers):
    """``dycon prepare la``: a defective case is one error line naming it (exit 2, nothing written);
    ``--skip-incomplete`` prepares the rest and prints the skipped case."""
    case_id = _case_ids(raw_copy, "train.list")[3]
    _defect(raw_copy / case_id, "label_directions")
    cmd = [sys.executable, "-m", "custom", "prepare", "la", "--src", str(raw_copy), "--dst", str(tmp_path / "LA"),
           "--labeled", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and leftovers(tmp_path / "LA") == []
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dycon: error: ") and case_id in lines[0], proc.stderr
    proc = subprocess.run(cmd + ["--skip-incomplete"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"skipped (--skip-incomplete) {case_id}: " in proc.stderr
    assert list(read_datalist(tmp_path / "LA")["dycon"]["skipped"]) == [case_id]


def test_h5_empty_case_folder(h5_copy: Path, tmp_path: Path, leftovers):
    case_id = _first_train(h5_copy)
    (h5_copy / H5_FOLDER / case_id / "mri_norm2.h5").unlink()
    with pytest.raises(DatasetError, match=f"{case_id}: .*case folder without mri_norm2.h5"):
        prepare_la(h5_copy, tmp_path / "LA", labeled=2)
    assert leftovers(tmp_path / "LA") == []
    dl = read_datalist(prepare_la(h5_copy, tmp_path / "LA", labeled=2, skip_incomplete=True))
    assert list(dl["dycon"]["skipped"]) == [case_id] and case_id not in [e["id"] for e in dl["training"]]


# ------------------------------------------------------------------------------------------------ geometry


def _monai_ras(path: Path, key: str = "image"):
    """What the bundle's chain makes of a file up to its orientation step: LoadImage, channel first, RAS."""
    from monai.transforms import EnsureChannelFirst, LoadImage, Orientation

    img = Orientation(axcodes="RAS", labels=None)(EnsureChannelFirst()(LoadImage(image_only=True)(str(path))))
    return np.asarray(img), np.asarray(img.affine)


def test_raw_geometry_from_the_header_as_monai_reads_it(raw_release: Path, tmp_path: Path):
    """A raw case with a non-trivial header (permuted, flipped, anisotropic axes, an origin): the prepared NIfTI
    carries the header's orientation and origin (LPS -> RAS as MONAI's NrrdReader), so MONAI's LoadImage +
    Orientationd(RAS) of the raw nrrd and of the prepared NIfTI give identical arrays and direction signs; only the
    voxel size differs (the challenge's 0.625 mm, or the override)."""
    case_id = _case_ids(raw_release, "train.list")[0]
    image, header = nrrd.read(str(raw_release / case_id / "lgemri.nrrd"))
    label, _ = nrrd.read(str(raw_release / case_id / "laendo.nrrd"))
    src = tmp_path / "raw"
    (src / case_id).mkdir(parents=True)
    header = {**header, "space directions": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
              "space origin": np.array([10.0, -20.0, 5.5])}  # fmt: skip
    nrrd.write(str(src / case_id / "lgemri.nrrd"), image, header)
    nrrd.write(str(src / case_id / "laendo.nrrd"), label, header)
    (src / "train.list").write_text(case_id + "\n")
    (src / "test.list").write_text("")
    with pytest.warns(UserWarning, match="'test' is empty"):
        dl = read_datalist(prepare_la(src, tmp_path / "LA", labeled=1))
    from monai.data import NrrdReader

    reader = NrrdReader()
    monai_affine = reader.get_data(reader.read(str(src / case_id / "lgemri.nrrd")))[1]["affine"]
    np.testing.assert_allclose(nrrd_affine(header, spacing=None), monai_affine)  # MONAI's rule, exactly
    prepared = nib.load(tmp_path / "LA" / dl["training"][0]["image"]).affine
    np.testing.assert_allclose(prepared[:3, 3], monai_affine[:3, 3])  # the header's origin, as RAS
    np.testing.assert_allclose(np.linalg.norm(prepared[:3, :3], axis=0), 0.625)
    np.testing.assert_allclose(np.sign(prepared), np.sign(monai_affine))
    for key, raw_name, rel in (("image", "lgemri.nrrd", dl["training"][0]["image"]),
                               ("label", "laendo.nrrd", dl["training"][0]["label"])):  # fmt: skip
        raw_arr, raw_aff = _monai_ras(src / case_id / raw_name)
        prep_arr, prep_aff = _monai_ras(tmp_path / "LA" / rel)
        if key == "label":
            raw_arr = (raw_arr == 255).astype(np.uint8)
        np.testing.assert_array_equal(prep_arr, raw_arr)
        np.testing.assert_array_equal(np.sign(prep_aff[:3, :3]), np.sign(raw_aff[:3, :3]))
        assert nib.aff2axcodes(prep_aff) == nib.aff2axcodes(raw_aff) == ("R", "A", "S")
    # the spacing override changes the voxel size only
    with pytest.warns(UserWarning, match="'test' is empty"):
        dl2 = read_datalist(prepare_la(src, tmp_path / "LA2", labeled=1, spacing=[0.5, 0.5, 1.25]))
    aff2 = nib.load(tmp_path / "LA2" / dl2["training"][0]["image"]).affine
    np.testing.assert_allclose(sorted(np.linalg.norm(aff2[:3, :3], axis=0)), [0.5, 0.5, 1.25])
    np.testing.assert_allclose(np.sign(aff2), np.sign(monai_affine))


def test_nrrd_and_h5_reach_the_network_identically(tmp_path: Path):
    """The same synthetic raw case as the raw nrrd release and as an h5 written from the same arrays (index order,
    as UA-MT's nrrd.read gives them): after prepare and the bundle's preprocessing chain (train.yaml's
    preprocessing_transforms, Orientationd RAS included) the network gets identical image and label arrays."""
    from monai.bundle import ConfigParser

    from custom.export import bundle_code

    raw = synth_la(tmp_path / "raw", n_train=1, n_test=0, shape=(28, 26, 12), seed=4)
    case_id = _case_ids(raw, "train.list")[0]
    image, _ = nrrd.read(str(raw / case_id / "lgemri.nrrd"))
    label, _ = nrrd.read(str(raw / case_id / "laendo.nrrd"))
    h5 = tmp_path / "h5"
    (h5 / H5_FOLDER / case_id).mkdir(parents=True)
    with h5py.File(h5 / H5_FOLDER / case_id / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("label", data=(label == 255).astype(np.uint8))
    shutil.copy(raw / "train.list", h5)
    shutil.copy(raw / "test.list", h5)
    items = {}
    for name, src in (("raw", raw), ("h5", h5)):
        with pytest.warns(UserWarning, match="'test' is empty"):
            out = prepare_la(src, tmp_path / f"LA_{name}", labeled=1)
        e = read_datalist(out)["training"][0]
        items[name] = {k: str(out.parent / e[k]) for k in ("image", "label")}
    np.testing.assert_allclose(nib.load(items["h5"]["image"]).affine, h5_affine())
    np.testing.assert_allclose(nib.load(items["h5"]["image"]).affine, nib.load(items["raw"]["image"]).affine)
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "dycon_la"
    with bundle_code(bundle):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.yaml"))
        chain = parser.get_parsed_content("validate#preprocessing")
        out = {name: chain(item) for name, item in items.items()}
    for key in ("image", "label"):
        a, b = out["raw"][key], out["h5"][key]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine))
    assert out["raw"]["image"].dtype == torch.float32
    # the network's x and y run opposite to the stored index order (LPS -> RAS)
    np.testing.assert_array_equal(np.asarray(out["raw"]["label"])[0], (label == 255)[::-1, ::-1, :])


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"labeled": 7}, DatasetError, "7 labeled cases asked but only 6"),
        ({"labeled": 2, "val": 5}, DatasetError, "2 labeled cases asked but only 1"),
        ({"labeled": 2, "fraction": 0.5}, DatasetError, "not both"),
        ({"labeled": 1, "spacing": -1}, DatasetError, "spacing must be positive"),
        ({"labeled": 1, "layout": "dicom"}, DatasetError, "layout must be"),
    ],
)
def test_argument_errors_leave_no_dst(h5_release: Path, tmp_path: Path, leftovers, kwargs, exc, message):
    dst = tmp_path / "LA"
    with pytest.raises(exc, match=None) as err:
        prepare_la(h5_release, dst, **kwargs)
    assert message in str(err.value)
    assert leftovers(dst) == []


def test_missing_src(tmp_path: Path, leftovers):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_la(tmp_path / "nope", tmp_path / "LA", labeled=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no LA case found"):
        prepare_la(tmp_path / "empty", tmp_path / "LA", labeled=1)
    assert leftovers(tmp_path / "LA") == []


def test_spacing_override(h5_release: Path, tmp_path: Path):
    dl = read_datalist(prepare_la(h5_release, tmp_path / "LA", labeled=1, spacing=[0.625, 0.625, 2.5]))
    img, _ = _nii(tmp_path / "LA" / dl["training"][0]["image"])
    np.testing.assert_allclose(img.header.get_zooms(), (0.625, 0.625, 2.5))
    assert "overridden by the user" in dl["dycon"]["spacing_note"]


def test_monai_resolves_datalist(h5_release: Path, tmp_path: Path):
    monai_data = pytest.importorskip("monai.data")
    out = prepare_la(h5_release, tmp_path / "LA", labeled=2, val=1)
    for key in ("training", "unlabeled", "validation", "test"):
        items = monai_data.load_decathlon_datalist(str(out), is_segmentation=True, data_list_key=key)
        assert items
        for item in items:
            assert Path(item["image"]).is_file()
            assert ("label" in item) == (key != "unlabeled")
            if "label" in item:
                assert Path(item["label"]).is_file()


# ------------------------------------------------------------------------------------------- real data


@real_data
def test_real_h5_subset(tmp_path: Path, tree_checksums, capsys):
    """The shared 24 real cases (first 24 of train.list): prepare 6 of them, compare with the h5 arrays."""
    src = tmp_path / "LA_h5"
    (src / H5_FOLDER).mkdir(parents=True)
    shutil.copy(REAL_LA / "train.list", src)
    shutil.copy(REAL_LA / "test.list", src)
    train = read_id_list(REAL_LA / "train.list")
    present = [i for i in train if (REAL_LA / H5_FOLDER / i / "mri_norm2.h5").is_file()]
    assert len(train) == 80 and len(read_id_list(REAL_LA / "test.list")) == 20
    assert len(present) >= 6 and present == train[: len(present)]
    subset = present[:6]
    for case_id in subset:
        (src / H5_FOLDER / case_id).symlink_to(REAL_LA / H5_FOLDER / case_id, target_is_directory=True)

    dst = tmp_path / "LA"
    with pytest.warns(UserWarning, match="'test' is empty"):
        out = prepare_la(src, dst, labeled=2, val=2)
    dl = read_datalist(out)
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert [e["id"] for e in dl["validation"]] == subset[-2:]
    assert [e["id"] for e in dl["unlabeled"]] == subset[2:4]
    assert dl["test"] == []
    assert len(dl["dycon"]["missing"]["training"]) == 74 and len(dl["dycon"]["missing"]["test"]) == 20
    assert "74 of 80 train.list ids are not in" in capsys.readouterr().err
    assert_disjoint(dl)
    for case_id in subset:
        with h5py.File(REAL_LA / H5_FOLDER / case_id / "mri_norm2.h5", "r") as f:
            h5_image, h5_label = f["image"][()], f["label"][()]
        img, image = _nii(dst / "images" / f"{case_id}.nii.gz")
        _, label = _nii(dst / "labels" / f"{case_id}.nii.gz")
        assert image.shape == h5_image.shape and image.shape[2] == 88
        np.testing.assert_array_equal(image, h5_image)
        np.testing.assert_array_equal(label, h5_label)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_allclose(img.header["pixdim"][1:4], 0.625)
        np.testing.assert_allclose(img.affine, np.diag([-0.625, -0.625, 0.625, 1.0]))  # the raw nrrd's LPS, as RAS
    first = tree_checksums(dst)
    with pytest.warns(UserWarning, match="'test' is empty"):
        prepare_la(src, dst, labeled=2, val=2, overwrite=True)
    assert tree_checksums(dst) == first


@real_data
def test_real_h5_release_root_all_cases(tmp_path: Path):
    """``src`` = the shared release root itself (all 24 present cases, about 3 s)."""
    train = read_id_list(REAL_LA / "train.list")
    present = [i for i in train if (REAL_LA / H5_FOLDER / i / "mri_norm2.h5").is_file()]
    dst = tmp_path / "LA"
    with pytest.warns(UserWarning, match="'test' is empty"):
        dl = read_datalist(prepare_la(REAL_LA, dst, labeled=2, val=2))
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert [e["id"] for e in dl["validation"]] == present[-2:]
    assert [e["id"] for e in dl["unlabeled"]] == present[2:-2]
    assert dl["dycon"]["counts"] == {"training": 2, "unlabeled": len(present) - 4, "validation": 2, "test": 0}
    for case_id in present:
        image, label = load_h5_case(REAL_LA / H5_FOLDER / case_id / "mri_norm2.h5")
        _, out_image = _nii(dst / "images" / f"{case_id}.nii.gz")
        _, out_label = _nii(dst / "labels" / f"{case_id}.nii.gz")
        assert out_image.shape == image.shape and out_image.shape[2] == 88
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label)


# ---------------------------------------------------------------------------------- python -m entry point


def test_module_entry_point_matches_cli(raw_release: Path, tmp_path: Path):
    """``python -m custom.data.la`` (from a bundle folder: ``python -m scripts.data.la``) writes the datalist that
    ``dycon prepare la`` writes with the same options; an error is one line, exit status 2."""
    check_matches_cli("la", ["--src", str(raw_release), "--labeled", "2", "--val", "1"], tmp_path, ["--fraction", "0.5"], 'give either labeled (a count) or fraction')


def test_module_entry_point_from_bundle_folder():
    check_help_from_bundle_folder("la")


def test_module_entry_point_in_exported_bundle(raw_release: Path, tmp_path: Path):
    check_exported_bundle("la", ["--src", str(raw_release), "--labeled", "2"], tmp_path)
