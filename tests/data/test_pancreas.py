"""Pancreas-NIH preparation (custom.data.pancreas): synthetic TCIA DICOM release, h5 release, CLI, geometry, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from custom.cli import main as cli_main
from custom.data.datalist import DatasetError, assert_disjoint, read_datalist, split_training
from custom.data.pancreas import (
    LABELS_FOLDER,
    PANCREAS_CT,
    check_chain,
    normalize_case_id,
    prepare_pancreas,
    read_dicom_series,
    read_split_lists,
    synth_geometry,
    synth_pancreas,
)
from entry_points import check_help_from_bundle_folder, check_matches_cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type (SwigPy|swigvarlink):DeprecationWarning"),  # ITK's SWIG, py3.12
    pytest.mark.filterwarnings("ignore:no test case of the split:UserWarning"),  # error tests use train cases only
    pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader:UserWarning"),  # MONAI import, no GPU codec here
]

REPO = Path(__file__).resolve().parents[2]
SHAPE = (40, 36, 10)  # (columns, rows, slices): tiny, every test stays fast
TRAIN4 = ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003", "PANCREAS_0004"]
TEST2 = ["PANCREAS_0063", "PANCREAS_0064"]


def _nii(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def _series_dir(src: Path, case_id: str) -> Path:
    (folder,) = {p.parent for p in (src / PANCREAS_CT / case_id).rglob("*.dcm")}
    return folder


def _label_path(src: Path, case_id: str) -> Path:
    return src / LABELS_FOLDER / f"label{case_id[-4:]}.nii.gz"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic raw release: PANCREAS_0001-0004 (train.list) + 0063-0064 (test.list)."""
    return synth_pancreas(tmp_path_factory.mktemp("synth") / "raw", n_train=4, n_test=2, shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def prepared(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release prepared through the CLI (``python -m custom prepare pancreas ... --labeled 2``)."""
    dst = tmp_path_factory.mktemp("prep") / "Pancreas"
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "pancreas", "--src", str(release), "--dst", str(dst),
         "--labeled", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dst / "datalist.json")
    assert "58 of 62 train.list ids are not in" in proc.stderr
    return dst


@pytest.fixture()
def release_copy(release: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic release (to corrupt)."""
    return Path(shutil.copytree(release, tmp_path / "rawsrc"))


# ------------------------------------------------------------------------------------------- split lists


def test_official_lists_are_package_data_and_disjoint():
    train, test, train_path, test_path = read_split_lists()
    assert train_path.parent.name == "Pancreas" and train_path.parent.parent.name == "splits"
    assert train == [f"PANCREAS_{n:04d}" for n in range(1, 63)]
    assert test == [f"PANCREAS_{n:04d}" for n in range(63, 83)]
    assert not set(train) & set(test)  # the released code tests on training cases: never here
    # budgets of the literature: 12 = 20 %, 6 = 10 % (first N of the list)
    assert split_training(train, fraction=0.2).labeled == train[:12]
    assert split_training(train, fraction=0.1).labeled == train[:6]
    assert split_training(train, default_labeled=12).labeled == train[:12]


def test_id_normalisation():
    assert normalize_case_id("PANCREAS_0001.h5") == "PANCREAS_0001"
    assert normalize_case_id("pancreas_0012") == "PANCREAS_0012"
    assert normalize_case_id("image0070_norm.h5") == "PANCREAS_0070"
    with pytest.raises(DatasetError, match="not a Pancreas case id"):
        normalize_case_id("label0001.nii.gz")


def test_overlapping_user_lists_refused(tmp_path: Path):
    (tmp_path / "train.list").write_text("PANCREAS_0001.h5\nPANCREAS_0002.h5\n")
    (tmp_path / "test.list").write_text("image0002_norm.h5\n")
    with pytest.raises(DatasetError, match="ids in both train and test lists: PANCREAS_0002"):
        read_split_lists(tmp_path)


# ------------------------------------------------------------------------------------- synthetic release


def test_synth_layout_and_dicom_headers(release: Path):
    cases = sorted(p.name for p in (release / PANCREAS_CT).iterdir())
    assert cases == TRAIN4 + TEST2
    assert sorted(p.name for p in (release / LABELS_FOLDER).iterdir()) == [f"label{c[-4:]}.nii.gz" for c in cases]
    for n, case_id in enumerate(cases):
        geom = synth_geometry(n, 0, SHAPE)
        series = _series_dir(release, case_id)
        assert series.parent.parent.name == case_id  # PANCREAS_XXXX/<study>/<series>/
        files = sorted(series.iterdir())
        assert [f.name for f in files] == [f"1-{k:03d}.dcm" for k in range(1, SHAPE[2] + 1)]
        sops = set()
        for k, f in enumerate(files):
            ds = pydicom.dcmread(str(f))
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian and ds.is_implicit_VR
            assert ds.Modality == "CT" and ds.InstanceNumber == k + 1
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
            np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [0, 0, -k * geom.slice_step])
            assert ds.SliceThickness in (None, "") and ds.SeriesNumber in (None, "")
            assert (ds.Rows, ds.Columns) == (SHAPE[1], SHAPE[0])
            assert [float(v) for v in ds.PixelSpacing] == [geom.pixel_spacing] * 2
            assert 0.7 <= geom.pixel_spacing <= 0.9 and 1.0 <= geom.slice_step <= 2.5
            assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16
            assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == (-1024 if n == 1 else 0)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (series.parent.name, series.name)
            sops.add(ds.SOPInstanceUID)
        assert len(sops) == SHAPE[2]
        label_img, label = _nii(_label_path(release, case_id))
        assert label.dtype == np.uint8 and set(np.unique(label).tolist()) == {0, 1}
        assert label.shape == SHAPE
        np.testing.assert_allclose(label_img.affine, geom.ras_affine)
    assert synth_geometry(0, 0, SHAPE).slice_step == 1.0  # 1 mm steps as in the real PANCREAS_0001 header


def test_itk_reads_synthetic_series_with_header_geometry(release: Path):
    import itk

    for n, case_id in enumerate(TRAIN4[:2]):
        geom = synth_geometry(n, 0, SHAPE)
        series = _series_dir(release, case_id)
        names = itk.GDCMSeriesFileNames.New(Directory=str(series))
        files = names.GetFileNames(names.GetSeriesUIDs()[0])
        image = itk.imread(files, itk.F)
        np.testing.assert_allclose(image.GetSpacing(), [geom.pixel_spacing, geom.pixel_spacing, geom.slice_step])
        np.testing.assert_allclose(itk.array_from_matrix(image.GetDirection()), np.diag([1.0, -1.0, -1.0]))
        np.testing.assert_allclose(image.GetOrigin(), [0, 0, 0])

        array, affine = read_dicom_series(release / PANCREAS_CT / case_id, case_id)
        label_img, label = _nii(_label_path(release, case_id))
        assert array.shape == label.shape == SHAPE
        np.testing.assert_allclose(affine, label_img.affine)  # LPS -> RAS conversion matches nibabel's
        for k in (0, 3, SHAPE[2] - 1):  # file 1-(k+1) is slice k, rescale applied (HU)
            ds = pydicom.dcmread(str(series / f"1-{k + 1:03d}.dcm"))
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_array_equal(array[:, :, k], hu.T)
        # body-like HU: air around the body, the pancreas-like blob at 40-60 HU
        assert array[0, 0, 0] < -900
        core = ndimage.binary_erosion(label == 1)
        assert 40 < float(np.median(array[core])) < 65


def test_shuffled_file_names_do_not_matter(release_copy: Path, release: Path):
    """Geometry comes from ImagePositionPatient, not from the file names."""
    series = _series_dir(release_copy, "PANCREAS_0003")
    files = sorted(series.iterdir())
    rng = np.random.default_rng(0)
    for f in files:
        f.rename(f.with_name("tmp-" + f.name))
    for f, new in zip(sorted(series.iterdir()), rng.permutation(len(files))):
        f.rename(series / f"1-{new + 1:03d}.dcm")
    a, _ = read_dicom_series(release / PANCREAS_CT / "PANCREAS_0003", "PANCREAS_0003")
    b, _ = read_dicom_series(release_copy / PANCREAS_CT / "PANCREAS_0003", "PANCREAS_0003")
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- prepared


def test_cli_datalist_splits(prepared: Path):
    dl = read_datalist(prepared)
    assert [e["id"] for e in dl["training"]] == TRAIN4[:2]
    assert [e["id"] for e in dl["unlabeled"]] == TRAIN4[2:]
    assert dl["validation"] == []
    assert [e["id"] for e in dl["test"]] == TEST2
    assert_disjoint(dl)
    test_ids = {e["id"] for e in dl["test"]}
    assert not test_ids & {e["id"] for e in dl["training"] + dl["unlabeled"] + dl["validation"]}
    assert all("label" in e for k in ("training", "validation", "test") for e in dl[k])
    assert all("label" not in e for e in dl["unlabeled"])
    meta = dl["dycon"]
    assert meta["dataset"] == "Pancreas" and meta["source"]["layout"] == "dicom"
    assert meta["counts"] == {"training": 2, "unlabeled": 2, "validation": 0, "test": 2}
    assert meta["chain"] == "raw" and meta["skipped"] == {}
    assert meta["duplicates_present"] == [] and "PANCREAS_0025" in meta["duplicates_note"]
    assert meta["preprocessing"].startswith("none (format conversion only)")
    assert len(meta["missing"]["training"]) == 58 and len(meta["missing"]["test"]) == 18


def test_prepared_is_the_raw_study_in_nifti(prepared: Path, release: Path):
    """Conversion only: the image is the DICOM series in HU (int16) on its own grid and axis order, the label is
    the raw label file's array on the same grid."""
    dl = read_datalist(prepared)
    for n, case_id in enumerate(TRAIN4 + TEST2):
        geom = synth_geometry(n, 0, SHAPE)
        img, image = _nii(prepared / "images" / f"{case_id}.nii.gz")
        lab, label = _nii(prepared / "labels" / f"{case_id}.nii.gz")
        assert image.dtype == np.int16 and label.dtype == np.uint8
        hu, affine = read_dicom_series(release / PANCREAS_CT / case_id, case_id)
        np.testing.assert_array_equal(image, hu)  # HU, nothing resampled, windowed, cropped or normalised
        np.testing.assert_allclose(img.affine, geom.ras_affine)  # the DICOM grid: 0.7-0.9 mm x 1-2.5 mm, not RAS
        np.testing.assert_allclose(img.affine, affine)
        assert nib.aff2axcodes(img.affine) == ("L", "A", "I")
        np.testing.assert_allclose(lab.affine, img.affine)
        raw_img, raw_label = _nii(_label_path(release, case_id))
        np.testing.assert_array_equal(label, raw_label)
        assert dl["dycon"]["cases"][case_id] == {
            "shape": list(SHAPE),
            "spacing": [round(geom.pixel_spacing, 6), round(geom.pixel_spacing, 6), round(geom.slice_step, 6)],
            "axcodes": "LAI",
            "dtype": "int16",
        }
        # the label lies on the pancreas-like blob (50-60 HU)
        core = ndimage.binary_erosion(label == 1)
        assert 40 < float(np.median(image[core])) < 65


def test_val_and_user_splits(release: Path, tmp_path: Path):
    dl = read_datalist(prepare_pancreas(release, tmp_path / "V", labeled=1, val=1))
    assert [e["id"] for e in dl["training"]] == ["PANCREAS_0001"]
    assert [e["id"] for e in dl["unlabeled"]] == ["PANCREAS_0002", "PANCREAS_0003"]
    assert [e["id"] for e in dl["validation"]] == ["PANCREAS_0004"]
    splits = tmp_path / "lists"
    splits.mkdir()
    (splits / "train.list").write_text("PANCREAS_0003.h5\nPANCREAS_0001.h5\nPANCREAS_0063.h5\n")
    (splits / "test.list").write_text("PANCREAS_0002.h5\n")
    dl = read_datalist(prepare_pancreas(release, tmp_path / "U", labeled=2, splits=splits))
    assert [e["id"] for e in dl["training"]] == ["PANCREAS_0003", "PANCREAS_0001"]
    assert [e["id"] for e in dl["unlabeled"]] == ["PANCREAS_0063"]
    assert [e["id"] for e in dl["test"]] == ["PANCREAS_0002"]
    assert dl["dycon"]["unlisted"] == ["PANCREAS_0004", "PANCREAS_0064"]
    assert "user lists" in dl["dycon"]["source"]["split_rule"]


def test_default_labeled_is_12_never_clipped(release: Path, tmp_path: Path, leftovers):
    with pytest.raises(DatasetError, match="12 labeled cases asked but only 4"):
        prepare_pancreas(release, tmp_path / "P")
    assert leftovers(tmp_path / "P") == []


def test_duplicates_flagged(tmp_path: Path, capsys):
    src = synth_pancreas(tmp_path / "dup", ids=["PANCREAS_0024", "PANCREAS_0025", "PANCREAS_0070"],
                         shape=(24, 24, 4), seed=1)
    dl = read_datalist(prepare_pancreas(src, tmp_path / "P", labeled=1))
    meta = dl["dycon"]
    assert meta["duplicates_present"] == ["PANCREAS_0025", "PANCREAS_0070"]
    assert "remain in the official lists" in meta["duplicates_note"]
    assert [e["id"] for e in dl["unlabeled"]] == ["PANCREAS_0025"] and [e["id"] for e in dl["test"]] == [
        "PANCREAS_0070"]
    assert "PANCREAS_0025, PANCREAS_0070 duplicate other patients' scans" in capsys.readouterr().err


def test_src_layouts(release_copy: Path, tmp_path: Path):
    # src = the Pancreas-CT folder itself, labels folder next to it, different case
    (release_copy / LABELS_FOLDER).rename(release_copy / LABELS_FOLDER.upper())
    dl = read_datalist(prepare_pancreas(release_copy / PANCREAS_CT, tmp_path / "P", labeled=1))
    assert [e["id"] for e in dl["unlabeled"]] == TRAIN4[1:]
    assert dl["dycon"]["source"]["label_root"].endswith(LABELS_FOLDER.upper())


# --------------------------------------------------------------------------------------------------- h5


def _write_h5(path: Path, rng: np.random.Generator, shape=(20, 18, 12), label_dtype=np.float32) -> None:
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros(shape, label_dtype)
    label[5:10, 6:12, 3:8] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")


def test_h5_release_both_names(tmp_path: Path):
    src = tmp_path / "h5"
    rng = np.random.default_rng(0)
    _write_h5(src / "Pancreas_h5" / "image0001_norm.h5", rng)  # MC-Net+ naming, float label
    _write_h5(src / "Pancreas_h5" / "PANCREAS_0002.h5", rng, label_dtype=np.uint8)
    _write_h5(src / "PANCREAS_0063.h5", rng)
    dst = tmp_path / "P"
    dl = read_datalist(prepare_pancreas(src, dst, labeled=1))
    assert dl["dycon"]["source"]["layout"] == "h5"
    assert dl["dycon"]["chain"] == "h5_prepared"  # the bundle runs it with --prepared_h5 true
    assert [e["id"] for e in dl["training"]] == ["PANCREAS_0001"]
    assert [e["id"] for e in dl["unlabeled"]] == ["PANCREAS_0002"]
    assert [e["id"] for e in dl["test"]] == ["PANCREAS_0063"]
    for case_id, path in (("PANCREAS_0001", src / "Pancreas_h5" / "image0001_norm.h5"),
                          ("PANCREAS_0063", src / "PANCREAS_0063.h5")):
        with h5py.File(path, "r") as f:
            h5_image, h5_label = f["image"][()], f["label"][()]
        img, image = _nii(dst / "images" / f"{case_id}.nii.gz")
        _, label = _nii(dst / "labels" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(image, h5_image)
        np.testing.assert_array_equal(label, h5_label.astype(np.uint8))
        assert label.dtype == np.uint8
        np.testing.assert_allclose(img.affine, np.eye(4))


def test_h5_label_2_refused(tmp_path: Path, leftovers):
    src = tmp_path / "h5"
    _write_h5(src / "PANCREAS_0001.h5", np.random.default_rng(0))
    with h5py.File(src / "PANCREAS_0001.h5", "a") as f:
        f["label"][0, 0, 0] = 2
    with pytest.raises(DatasetError, match=r"PANCREAS_0001: .*label values \[2\] outside"):
        prepare_pancreas(src, tmp_path / "P", labeled=1, layout="h5")
    assert leftovers(tmp_path / "P") == []


# ------------------------------------------------------------------------------------------------ errors


def test_missing_slice_is_one_clear_error(tmp_path: Path, leftovers):
    src = synth_pancreas(tmp_path / "raw", n_train=3, n_test=0, shape=(24, 24, 8), seed=0, missing_slice=(1, 4))
    step = synth_geometry(1, 0, (24, 24, 8)).slice_step
    dst = tmp_path / "P"
    with pytest.raises(DatasetError) as err:
        prepare_pancreas(src, dst, labeled=1)
    msg = str(err.value)
    assert "PANCREAS_0002: missing slice in the DICOM series" in msg and "\n" not in msg
    assert "1 case(s) cannot be prepared" in msg and "--skip-incomplete" in msg
    assert f"ImagePositionPatient (0, 0, {-4 * step:g})" in msg
    assert leftovers(dst) == []


def test_missing_slice_through_cli(tmp_path: Path, leftovers, capsys):
    src = synth_pancreas(tmp_path / "raw", n_train=2, n_test=0, shape=(24, 24, 6), seed=0, missing_slice=(0, 2))
    dst = tmp_path / "P"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "pancreas", "--src", str(src), "--dst", str(dst), "--labeled", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dycon: error: Pancreas release ")
    assert "PANCREAS_0001: missing slice in the DICOM series" in err[-1]
    assert leftovers(dst) == []


def test_missing_end_slice_caught_by_label(tmp_path: Path, leftovers):
    src = synth_pancreas(tmp_path / "raw", n_train=2, n_test=0, shape=(24, 24, 6), seed=0, missing_slice=(0, 5))
    with pytest.raises(DatasetError, match=r"PANCREAS_0001: image and label grids differ: .*\(24, 24, 5\).*"
                                           r"\(24, 24, 6\)"):
        prepare_pancreas(src, tmp_path / "P", labeled=1)
    assert leftovers(tmp_path / "P") == []


def test_truncated_slice(release_copy: Path, tmp_path: Path, leftovers):
    f = _series_dir(release_copy, "PANCREAS_0064") / "1-005.dcm"
    f.write_bytes(f.read_bytes()[:-300])
    with pytest.raises(DatasetError, match=r"PANCREAS_0064: DICOM file .*1-005\.dcm is truncated or corrupt"):
        prepare_pancreas(release_copy, tmp_path / "P", labeled=1)
    assert leftovers(tmp_path / "P") == []


def _rewrite_label(path: Path, array=None, affine=None) -> None:
    img, data = _nii(path)
    new_affine = img.affine if affine is None else affine
    nib.save(nib.Nifti1Image(data if array is None else array, new_affine), str(path))


def test_grid_mismatch_refused(release_copy: Path, tmp_path: Path, leftovers):
    path = _label_path(release_copy, "PANCREAS_0003")
    img, _ = _nii(path)
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    _rewrite_label(path, affine=shifted)
    with pytest.raises(DatasetError, match=r"PANCREAS_0003: image and label grids differ by up to 2 mm"):
        prepare_pancreas(release_copy, tmp_path / "P", labeled=1)
    assert leftovers(tmp_path / "P") == []


def test_label_value_2_refused(release_copy: Path, tmp_path: Path, leftovers):
    path = _label_path(release_copy, "PANCREAS_0002")
    _, data = _nii(path)
    data = data.copy()
    data[data == 1] = 2
    _rewrite_label(path, array=data)
    with pytest.raises(DatasetError, match=r"PANCREAS_0002: label .*label0002\.nii\.gz has values \[2\] outside"):
        prepare_pancreas(release_copy, tmp_path / "P", labeled=1)
    assert leftovers(tmp_path / "P") == []


def test_label_with_flipped_axes_is_the_same_grid(release_copy: Path, release: Path, tmp_path: Path):
    """A label stored with a flipped axis (and the matching affine) describes the same voxels: accepted, aligned."""
    path = _label_path(release_copy, "PANCREAS_0001")
    img, data = _nii(path)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, data.shape[1] - 1
    _rewrite_label(path, array=data[:, ::-1].copy(), affine=img.affine @ flip)
    a = prepare_pancreas(release, tmp_path / "a", labeled=2).parent
    b = prepare_pancreas(release_copy, tmp_path / "b", labeled=2).parent
    for sub in ("images", "labels"):
        for case_id in TRAIN4 + TEST2:
            _, x = _nii(a / sub / f"{case_id}.nii.gz")
            _, y = _nii(b / sub / f"{case_id}.nii.gz")
            np.testing.assert_array_equal(x, y)


def test_argument_errors(release: Path, tmp_path: Path, leftovers):
    for kwargs, message in (
        ({"labeled": 2, "fraction": 0.5}, "not both"),
        ({"labeled": 1, "skip_incomplete": "maybe"}, "skip_incomplete"),
        ({"labeled": 1, "layout": "nrrd"}, "layout must be"),
        ({"labeled": 1, "splits": tmp_path / "nowhere"}, "split list"),
    ):
        with pytest.raises(DatasetError, match=message):
            prepare_pancreas(release, tmp_path / "P", **kwargs)
    with pytest.raises(FileNotFoundError, match="no Pancreas case found"):
        (tmp_path / "empty").mkdir()
        prepare_pancreas(tmp_path / "empty", tmp_path / "P", labeled=1)
    with pytest.raises(DatasetError, match="must be outside src"):
        prepare_pancreas(release, release / "out", labeled=1)
    assert leftovers(tmp_path / "P") == []


# ------------------------------------------------------------------------- defects: fail, or --skip-incomplete

SMALL = (24, 24, 6)
SMALL_IDS = ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003", "PANCREAS_0063"]


@pytest.fixture(scope="module")
def small_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_pancreas(tmp_path_factory.mktemp("small") / "raw", ids=SMALL_IDS, shape=SMALL, seed=0)


def _unlink_label(src: Path, cid: str) -> None:
    _label_path(src, cid).unlink()


def _drop_series(src: Path, cid: str) -> None:
    shutil.rmtree(src / PANCREAS_CT / cid)


def _empty_case_folder(src: Path, cid: str) -> None:
    _drop_series(src, cid)
    (src / PANCREAS_CT / cid).mkdir()


def _empty_series_folder(src: Path, cid: str) -> None:
    for f in _series_dir(src, cid).iterdir():
        f.unlink()


def _drop_slice(k: int):
    return lambda src, cid: (_series_dir(src, cid) / f"1-{k:03d}.dcm").unlink()


def _truncate_slice(src: Path, cid: str) -> None:
    f = _series_dir(src, cid) / "1-003.dcm"
    f.write_bytes(f.read_bytes()[:-300])


def _label_spacing(src: Path, cid: str) -> None:
    img, _ = _nii(_label_path(src, cid))
    affine = img.affine.copy()
    affine[2, 2] *= 1.5  # same slice count, other slice spacing
    _rewrite_label(_label_path(src, cid), affine=affine)


def _label_values(value: int):
    def defect(src: Path, cid: str) -> None:
        _, data = _nii(_label_path(src, cid))
        _rewrite_label(_label_path(src, cid), array=(data * value).astype(np.uint8))

    return defect


def _garbage_label(src: Path, cid: str) -> None:
    _label_path(src, cid).write_bytes(b"not a nifti file")


DEFECTS = {
    "missing label": (_unlink_label, "no label file label0002.nii.gz"),
    "label without series": (_drop_series, "label file label0002.nii.gz but no DICOM series folder"),
    "empty case folder": (_empty_case_folder, "no DICOM file"),
    "empty series folder": (_empty_series_folder, "no DICOM file"),
    "missing slice": (_drop_slice(3), "missing slice in the DICOM series"),
    "missing end slice": (_drop_slice(SMALL[2]), r"image and label grids differ: .*\(24, 24, 5\).*\(24, 24, 6\)"),
    "slice spacing disagrees": (_label_spacing, "image and label grids differ by up to"),
    "truncated file": (_truncate_slice, r"DICOM file .*1-003\.dcm is truncated or corrupt"),
    "unreadable label": (_garbage_label, "cannot read label"),
    "label value 2": (_label_values(2), r"has values \[2\] outside"),
    "empty label": (_label_values(0), "is empty"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_fails_or_is_skipped(defect: str, small_release: Path, tmp_path: Path, leftovers, capsys):
    """Every defect of a listed case (here PANCREAS_0002, a training case) fails the preparation with one line
    naming the case and writes nothing; with skip_incomplete the case is left out, printed and recorded."""
    src = Path(shutil.copytree(small_release, tmp_path / "raw"))
    make, reason = DEFECTS[defect]
    make(src, "PANCREAS_0002")
    with pytest.raises(DatasetError, match="PANCREAS_0002: [^;]*?" + reason) as err:
        prepare_pancreas(src, tmp_path / "P", labeled=1)
    assert "\n" not in str(err.value) and "nothing was written" in str(err.value)
    assert leftovers(tmp_path / "P") == []
    dl = read_datalist(prepare_pancreas(src, tmp_path / "P", labeled=1, skip_incomplete=True))
    assert list(dl["dycon"]["skipped"]) == ["PANCREAS_0002"]
    assert re.search(reason, dl["dycon"]["skipped"]["PANCREAS_0002"])
    assert [e["id"] for e in dl["training"] + dl["unlabeled"]] == ["PANCREAS_0001", "PANCREAS_0003"]
    assert [e["id"] for e in dl["test"]] == ["PANCREAS_0063"]
    assert sorted(p.name for p in (tmp_path / "P" / "images").iterdir()) == [
        f"{i}.nii.gz" for i in ("PANCREAS_0001", "PANCREAS_0003", "PANCREAS_0063")
    ]
    assert "skipped PANCREAS_0002: " in capsys.readouterr().err


def test_every_defective_case_is_named(small_release: Path, tmp_path: Path, leftovers):
    src = Path(shutil.copytree(small_release, tmp_path / "raw"))
    _unlink_label(src, "PANCREAS_0002")
    _drop_slice(2)(src, "PANCREAS_0063")
    with pytest.raises(DatasetError, match=r"2 case\(s\) cannot be prepared \(PANCREAS_0002: .*; PANCREAS_0063: "):
        prepare_pancreas(src, tmp_path / "P", labeled=1)
    assert leftovers(tmp_path / "P") == []


def test_skip_incomplete_through_cli(small_release: Path, tmp_path: Path, capsys):
    src = Path(shutil.copytree(small_release, tmp_path / "raw"))
    _unlink_label(src, "PANCREAS_0063")
    dst = tmp_path / "P"
    cli_main(["prepare", "pancreas", "--src", str(src), "--dst", str(dst), "--labeled", "1", "--skip-incomplete"])
    dl = read_datalist(dst)
    assert list(dl["dycon"]["skipped"]) == ["PANCREAS_0063"] and dl["test"] == []
    assert "1 skipped: PANCREAS_0063" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ chain of the bundle


def test_check_chain(prepared: Path, tmp_path: Path):
    """The bundle's start-up check: raw datasets need prepared_h5 false, h5 datasets true, 1.x datasets re-preparing."""
    datalist = prepared / "datalist.json"
    check_chain(datalist, False)
    check_chain(str(datalist), "false")
    with pytest.raises(DatasetError, match="holds raw CT in HU: run the bundle with --prepared_h5 false"):
        check_chain(datalist, True)
    content = json.loads(datalist.read_text())
    content["dycon"]["chain"] = "h5_prepared"
    h5 = tmp_path / "h5.json"
    h5.write_text(json.dumps(content))
    check_chain(h5, True)
    with pytest.raises(DatasetError, match="preprocessed h5 release .*--prepared_h5 true") as err:
        check_chain(h5, False)
    assert "\n" not in str(err.value)
    del content["dycon"]["chain"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="older 'dycon prepare pancreas'.*prepare the dataset again"):
        check_chain(old, False)
    check_chain(prepared / "images" / "PANCREAS_0001.nii.gz", False)  # not a datalist (inference input): no check
    check_chain(tmp_path / "nowhere.json", False)


# ------------------------------------------------------------------------------------------ idempotency


def test_idempotent_rerun_and_overwrite(release: Path, prepared: Path, tmp_path: Path, tree_checksums, leftovers,
                                        capsys):
    dst = tmp_path / "Pancreas"
    prepare_pancreas(release, dst, labeled=2)
    first = tree_checksums(dst)
    assert first == tree_checksums(prepared)  # the CLI run wrote the same bytes
    assert prepare_pancreas(release, dst, labeled=2) == dst / "datalist.json"
    assert "nothing to do" in capsys.readouterr().err
    prepare_pancreas(release, dst, labeled=2, overwrite=True)
    assert tree_checksums(dst) == first
    with pytest.raises(DatasetError, match="other arguments"):
        prepare_pancreas(release, dst, labeled=3)
    assert tree_checksums(dst) == first
    assert leftovers(dst) == ["Pancreas"]


def test_synth_is_deterministic(tmp_path: Path, tree_checksums):
    a = synth_pancreas(tmp_path / "a", n_train=1, n_test=1, shape=(16, 16, 4), seed=5)
    b = synth_pancreas(tmp_path / "b", n_train=1, n_test=1, shape=(16, 16, 4), seed=5)
    assert tree_checksums(a) == tree_checksums(b)
    with pytest.raises(DatasetError, match="not empty"):
        synth_pancreas(a)


def test_monai_loads_prepared_with_its_affine(prepared: Path):
    monai_transforms = pytest.importorskip("monai.transforms")
    dl = json.loads((prepared / "datalist.json").read_text())
    entry = dl["training"][0]
    data = monai_transforms.LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True)(
        {k: os.path.join(prepared, entry[k]) for k in ("image", "label")})
    _, label = _nii(prepared / entry["label"])
    assert tuple(data["label"].shape) == label.shape
    np.testing.assert_allclose(np.asarray(data["image"].affine), nib.load(str(prepared / entry["image"])).affine)


# ---------------------------------------------------------------------------------- python -m entry point


def test_module_entry_point_matches_cli(release: Path, tmp_path: Path):
    """``python -m custom.data.pancreas`` (from a bundle folder: ``python -m scripts.data.pancreas``) writes the datalist that
    ``dycon prepare pancreas`` writes with the same options; an error is one line, exit status 2."""
    check_matches_cli("pancreas", ["--src", str(release), "--labeled", "2", "--val", "1"], tmp_path, ["--fraction", "0.5"], 'give either labeled (a count) or fraction')


def test_module_entry_point_from_bundle_folder():
    check_help_from_bundle_folder("pancreas")
