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

from custom.data.datalist import DatasetError, assert_disjoint, read_datalist, read_id_list
from custom.data.la import H5_FOLDER, load_h5_case, prepare_la, preprocess_raw, synth_la, synth_la_h5
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
    assert "la_heart_processing.py" in meta["preprocessing"]
    for key in ("training", "unlabeled", "validation", "test"):
        for e in dl[key]:
            raw_img, _ = nrrd.read(str(raw_release / e["id"] / "lgemri.nrrd"))
            raw_lab, _ = nrrd.read(str(raw_release / e["id"] / "laendo.nrrd"))
            img, image = _nii(dst / e["image"])
            lab, label = _nii(dst / f"labels/{e['id']}.nii.gz")  # exists on disk for unlabeled cases too
            np.testing.assert_allclose(img.affine, np.diag([0.625, 0.625, 0.625, 1.0]))
            np.testing.assert_allclose(lab.affine, img.affine)
            np.testing.assert_allclose(img.header["pixdim"][1:4], 0.625)
            assert image.dtype == np.float32 and label.dtype == np.uint8
            assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
            assert set(np.unique(label).tolist()) == {0, 1}
            assert image.shape == label.shape and image.shape[2] == raw_img.shape[2]  # z kept whole
            assert int(label.sum()) == int((raw_lab == 255).sum())  # the crop keeps the whole label
            # the image is the z-score of the WHOLE raw volume, cropped where the label bbox says
            off = [int(np.nonzero(raw_lab == 255)[a].min() - np.nonzero(label)[a].min()) for a in range(3)]
            assert off[2] == 0
            z = ((raw_img - raw_img.mean()) / raw_img.std()).astype(np.float32)
            sx, sy, _ = image.shape
            np.testing.assert_array_equal(image, z[off[0]:off[0] + sx, off[1]:off[1] + sy])


def test_raw_crop_mirrors_ua_mt(tmp_path: Path):
    """On an in-plane size larger than UA-MT's 112 minimum, the crop really crops, within UA-MT's bounds."""
    src = synth_la(tmp_path / "big", n_train=2, n_test=0, shape=(200, 190, 10), seed=3)
    for case_id in _case_ids(src, "train.list"):
        raw_img, _ = nrrd.read(str(src / case_id / "lgemri.nrrd"))
        raw_lab, _ = nrrd.read(str(src / case_id / "laendo.nrrd"))
        image, label = preprocess_raw(raw_img, raw_lab, case_id)
        image2, label2 = preprocess_raw(raw_img, raw_lab, case_id)
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


def test_synth_h5_matches_raw_preprocessing(tmp_path: Path):
    raw = synth_la(tmp_path / "raw", n_train=2, n_test=1, shape=(30, 28, 12), seed=9)
    h5 = synth_la_h5(tmp_path / "h5", n_train=2, n_test=1, shape=(30, 28, 12), seed=9)
    for case_id in _case_ids(raw, "train.list") + _case_ids(raw, "test.list"):
        image, label = load_h5_case(h5 / H5_FOLDER / case_id / "mri_norm2.h5")
        raw_img, _ = nrrd.read(str(raw / case_id / "lgemri.nrrd"))
        raw_lab, _ = nrrd.read(str(raw / case_id / "laendo.nrrd"))
        ref_image, ref_label = preprocess_raw(raw_img, raw_lab, case_id)
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


@pytest.mark.parametrize(
    ("corrupt", "message", "which"),
    [
        ("garbage", "cannot read nrrd file", "lgemri.nrrd"),
        ("missing", "missing nrrd file", "laendo.nrrd"),
        ("label7", "label values [7] outside", "laendo.nrrd"),
        ("empty", "label is empty", "laendo.nrrd"),
        ("nan", "NaN/Inf voxel", "lgemri.nrrd"),
        ("shape", "image shape", "laendo.nrrd"),
    ],
)
def test_raw_errors_leave_no_dst(raw_copy: Path, tmp_path: Path, leftovers, corrupt, message, which):
    case = raw_copy / _first_train(raw_copy)
    image, header = nrrd.read(str(case / "lgemri.nrrd"))
    label, _ = nrrd.read(str(case / "laendo.nrrd"))
    if corrupt == "garbage":
        (case / "lgemri.nrrd").write_bytes(b"NRRD0004\ntype: what\n\n" + os.urandom(100))
    elif corrupt == "missing":
        (case / "laendo.nrrd").unlink()
    elif corrupt == "label7":
        nrrd.write(str(case / "laendo.nrrd"), _set_first(label, 7))
    elif corrupt == "empty":
        nrrd.write(str(case / "laendo.nrrd"), np.zeros_like(label))
    elif corrupt == "nan":
        nrrd.write(str(case / "lgemri.nrrd"), _set_first(image.astype(np.float32), np.inf))
    elif corrupt == "shape":
        nrrd.write(str(case / "laendo.nrrd"), label[:, :, :-1].copy())
    dst = tmp_path / "LA"
    with pytest.raises(DatasetError) as err:
        prepare_la(raw_copy, dst, labeled=2)
    assert message in str(err.value) and str(case / which) in str(err.value)
    assert leftovers(dst) == []


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
        np.testing.assert_allclose(img.affine, np.diag([0.625, 0.625, 0.625, 1.0]))
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
