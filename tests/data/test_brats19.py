"""BraTS 2019 preparation (custom.data.brats19): synthetic raw release, CLI, FLAIR and 4-channel outputs (raw values
and geometry: conversion only), splits, idempotency, defective cases (errors and --skip-incomplete)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from custom.data.brats19 import (
    CHANNELS_ALL,
    MODALITIES,
    RELEASE_FOLDER,
    default_synth_ids,
    find_release,
    likely_grade,
    official_splits,
    prepare_brats19,
    synth_brats19,
)
from custom.data.datalist import DatasetError, assert_disjoint, read_datalist, read_id_list
from entry_points import check_exported_bundle, check_help_from_bundle_folder, check_matches_cli

REPO = Path(__file__).resolve().parents[2]
SHARED_SPLITS = REPO.parent / "shared" / "data" / "splits" / "BraTS2019"
SHAPE = (40, 36, 28)  # tiny and with three different sizes, so a transposition cannot go unnoticed
KINDS = (*MODALITIES, "seg")


# ------------------------------------------------------------------------------------------------ helpers


def _nii(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def _case_dir(src: Path, case_id: str) -> Path:
    hits = list((src / RELEASE_FOLDER).glob(f"*/{case_id}"))
    assert len(hits) == 1, hits
    return hits[0]


def _raw(src: Path, case_id: str, kind: str):
    return _nii(_case_dir(src, case_id) / f"{case_id}_{kind}.nii.gz")


def _present(src: Path) -> set[str]:
    return {p.name for p in (src / RELEASE_FOLDER).glob("*/*") if p.is_dir()}


def _lists() -> dict[str, list[str]]:
    return official_splits()[0]


def _raw_brain(src: Path, case_id: str) -> np.ndarray:
    return np.any([_raw(src, case_id, m)[1] != 0 for m in MODALITIES], axis=0)


def _bbox(mask: np.ndarray) -> tuple[list[int], list[int]]:
    nz = np.nonzero(mask)
    return [int(a.min()) for a in nz], [int(a.max()) + 1 for a in nz]


def _save_like(path: Path, array: np.ndarray, like: Path, dtype=None) -> None:
    ref = nib.load(str(like))
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype or ref.get_data_dtype()), ref.affine)
    img.set_qform(ref.affine, code=1)
    nib.save(img, str(path))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic release: the default 6 ids (4 of train.txt, 1 of val.txt, 1 of test.txt)."""
    return synth_brats19(tmp_path_factory.mktemp("brats") / "raw", shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def flair(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_brats19(release, tmp_path_factory.mktemp("out") / "flair", labeled=2).parent


@pytest.fixture(scope="module")
def four(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_brats19(release, tmp_path_factory.mktemp("out") / "all", labeled=2, modalities="all").parent


@pytest.fixture()
def raw_copy(release: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic release (to corrupt)."""
    return Path(shutil.copytree(release, tmp_path / "rawsrc"))


def _ids_of(dl: dict, key: str) -> list[str]:
    return [e["id"] for e in dl[key]]


def _all_ids(dl: dict) -> list[str]:
    return [e["id"] for k in ("training", "unlabeled", "validation", "test") for e in dl[k]]


# ----------------------------------------------------------------------------------------------- split lists


def test_package_split_lists():
    lists, origin = official_splits()
    assert "package data" in origin
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [250, 25, 60]
    ids = lists["training"] + lists["validation"] + lists["test"]
    assert len(set(ids)) == 335 and all(i.startswith("BraTS19_") for i in ids)
    if SHARED_SPLITS.is_dir():  # identical to the shared official lists
        for key, name in (("training", "train.txt"), ("validation", "val.txt"), ("test", "test.txt")):
            assert lists[key] == read_id_list(SHARED_SPLITS / name)


# ------------------------------------------------------------------------------------------------- synthetic


def test_synth_layout_and_headers(release: Path):
    ids = default_synth_ids(4, 2)
    lists = _lists()
    assert [i for i in ids if i in lists["training"]] == list(ids)[:4]
    assert sum(i in lists["validation"] for i in ids) == 1 and sum(i in lists["test"] for i in ids) == 1
    assert sorted(ids.values()).count("LGG") == 2
    root = release / RELEASE_FOLDER
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["HGG", "LGG"]
    assert (root / "name_mapping.csv").is_file()
    for case_id, grade in ids.items():
        case = root / grade / case_id
        assert sorted(p.name for p in case.iterdir()) == sorted(f"{case_id}_{k}.nii.gz" for k in KINDS)
        images = {}
        for kind in KINDS:
            img, data = _nii(case / f"{case_id}_{kind}.nii.gz")
            assert data.dtype == np.int16 and img.get_data_dtype() == np.int16 and data.shape == SHAPE
            expected = np.diag([-1.0, -1.0, 1.0, 1.0])
            expected[1, 3] = SHAPE[1] - 1
            np.testing.assert_allclose(img.affine, expected)  # LPS-like, 1 mm, like the real files
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 0
            images[kind] = data
        seg = images.pop("seg")
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}  # no label 3
        brain = images["flair"] != 0
        for mod in MODALITIES:  # zero background outside the brain, non-zero inside
            np.testing.assert_array_equal(images[mod] != 0, brain)
        assert not brain[0].any() and not brain[-1].any() and not brain[:, 0].any() and not brain[:, :, -1].any()
        assert (seg[~brain] == 0).all()
        # nested: enhancing (4) inside the core (1 or 4), core inside the whole tumour
        core, whole = np.isin(seg, (1, 4)), seg > 0
        assert (core[binary_dilation(seg == 4)]).all()
        assert (whole[binary_dilation(core)]).all()
        # MRI-like contrasts: edema bright in FLAIR and T2, enhancing bright in T1ce
        assert images["flair"][seg == 2].mean() > 1.5 * images["flair"][brain & (seg == 0)].mean()
        assert images["t2"][seg == 2].mean() > images["t2"][brain & (seg == 0)].mean()
        assert images["t1ce"][seg == 4].mean() > 1.2 * images["t1"][seg == 4].mean()


def test_synth_deterministic_and_ids(tmp_path: Path, tree_checksums):
    a = synth_brats19(tmp_path / "a", n_hgg=1, n_lgg=1, shape=(20, 20, 16), seed=3)
    b = synth_brats19(tmp_path / "b", n_hgg=1, n_lgg=1, shape=(20, 20, 16), seed=3)
    c = synth_brats19(tmp_path / "c", n_hgg=1, n_lgg=1, shape=(20, 20, 16), seed=4)
    assert tree_checksums(a) == tree_checksums(b) != tree_checksums(c)
    with pytest.raises(DatasetError, match="not empty"):
        synth_brats19(a)
    d = synth_brats19(tmp_path / "d", shape=(20, 20, 16), ids={"BraTS19_CBICA_ASA_1": "HGG", "X_1": "LGG"})
    assert (d / RELEASE_FOLDER / "LGG" / "X_1" / "X_1_seg.nii.gz").is_file()
    assert likely_grade("BraTS19_TCIA10_346_1") == "LGG" and likely_grade("BraTS19_CBICA_ASA_1") == "HGG"


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_prepare(release: Path, tmp_path: Path):
    dst = tmp_path / "BraTS"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "brats19", "--src", str(release), "--dst", str(dst),
         "--labeled", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dst / "datalist.json")
    assert time.perf_counter() - t0 < 60
    dl = read_datalist(dst)
    lists, present = _lists(), _present(release)
    train = [i for i in lists["training"] if i in present]
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert [e["id"] for e in dl["unlabeled"]] == train[2:]
    assert [e["id"] for e in dl["validation"]] == [i for i in lists["validation"] if i in present]
    assert [e["id"] for e in dl["test"]] == [i for i in lists["test"] if i in present]
    assert "246 of 250 train.txt ids are not in" in proc.stderr


def test_cli_error_is_one_line_exit_2(release: Path, tmp_path: Path, leftovers):
    dst = tmp_path / "BraTS"
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "brats19", "--src", str(release), "--dst", str(dst),
         "--labeled", "2", "--modalities", "t1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "dycon: error: modalities must be 'flair'" in proc.stderr
    assert leftovers(dst) == []


# --------------------------------------------------------------------------------------------------- datalist


def test_datalist_splits(flair: Path, release: Path):
    dl = read_datalist(flair)
    assert set(dl) == {"training", "unlabeled", "validation", "test", "dycon"}
    assert_disjoint(dl)
    lists, present = _lists(), _present(release)
    train = [i for i in lists["training"] if i in present]
    assert len(train) == 4
    assert [e["id"] for e in dl["training"]] == train[:2]
    assert [e["id"] for e in dl["unlabeled"]] == train[2:]
    assert all(set(e) == {"image", "id"} for e in dl["unlabeled"])  # no label in unlabeled entries
    for key in ("training", "validation", "test"):
        assert all(set(e) == {"image", "label", "id"} for e in dl[key])
    val = [e["id"] for e in dl["validation"]]
    test = [e["id"] for e in dl["test"]]
    assert val and set(val) <= set(lists["validation"]) and val == [i for i in lists["validation"] if i in present]
    assert test and set(test) <= set(lists["test"]) and test == [i for i in lists["test"] if i in present]
    assert not set(test) & set(lists["training"] + lists["validation"])  # test never in train or val
    meta = dl["dycon"]
    assert meta["dataset"] == "BraTS2019" and meta["channels"] == ["flair"] and meta["in_channels"] == 1
    assert meta["counts"] == {"training": 2, "unlabeled": 2, "validation": 1, "test": 1}
    assert meta["labeled_ids"] == train[:2] and meta["validation_ids"] == val
    assert len(meta["missing"]["training"]) == 246 and len(meta["missing"]["validation"]) == 24
    assert len(meta["missing"]["test"]) == 59 and meta["unlisted"] == []
    assert meta["arguments"]["modalities"] == "flair" and meta["arguments"]["labeled"] == 2
    assert meta["source"]["grades"] == {"HGG": 4, "LGG": 2}
    assert sorted(meta["cases"]) == sorted(_all_ids(dl))
    assert meta["preprocessing"].startswith("none: images keep the raw voxel values") and meta["skipped"] == {}
    assert meta["arguments"]["skip_incomplete"] is False
    for e in dl["unlabeled"]:  # label files exist on disk (pseudo-label evaluation) but are not referenced
        assert (flair / f"labels/{e['id']}.nii.gz").is_file()


def test_monai_loads_both_modes(flair: Path, four: Path):
    from monai.transforms import LoadImaged

    from custom.data.loaders import load_split

    load = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)
    for root, channels in ((flair, 1), (four, 4)):
        items = load_split(root / "datalist.json", "training")
        out = load(items[0])
        assert out["image"].shape[0] == channels and out["label"].shape[0] == 1
        assert out["image"].shape[1:] == out["label"].shape[1:]
        np.testing.assert_allclose(np.asarray(out["image"].affine), np.asarray(out["label"].affine))


# ------------------------------------------------------------------------------------- contents and geometry


def test_flair_contents(flair: Path, release: Path):
    """Conversion only: the prepared FLAIR is the raw FLAIR (values, dtype, shape, axis order, affine), the label is
    the raw segmentation > 0 on the same grid."""
    dl = read_datalist(flair)
    for case_id in _all_ids(dl):
        raw_img, raw_flair = _raw(release, case_id, "flair")
        _, raw_seg = _raw(release, case_id, "seg")
        img, image = _nii(flair / f"images/{case_id}.nii.gz")
        lab, label = _nii(flair / f"labels/{case_id}.nii.gz")
        assert image.dtype == raw_flair.dtype == np.int16 and image.shape == raw_flair.shape == SHAPE
        np.testing.assert_array_equal(image, raw_flair)  # no crop, clip, normalisation or transposition
        np.testing.assert_allclose(img.affine, raw_img.affine)
        np.testing.assert_allclose(lab.affine, raw_img.affine)
        assert label.dtype == np.uint8 and lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(label, (raw_seg > 0).astype(np.uint8))
        assert set(np.unique(label).tolist()) == {0, 1}
        meta = dl["dycon"]["cases"][case_id]
        brain = raw_flair > 0
        start, stop = _bbox(brain)
        assert meta["brain_box"] == [start, stop] and meta["brain_voxels"] == int(brain.sum())
        assert meta["tumour_voxels"] == int((raw_seg > 0).sum()) and meta["source_shape"] == list(SHAPE)


def test_all_modalities_channels(four: Path, flair: Path, release: Path):
    dl = read_datalist(four)
    assert dl["dycon"]["channels"] == list(CHANNELS_ALL) == ["flair", "t1", "t1ce", "t2"]
    assert dl["dycon"]["in_channels"] == 4 and dl["dycon"]["modalities"] == "all"
    assert _all_ids(dl) == _all_ids(read_datalist(flair))
    for case_id in _all_ids(dl):
        img, image = _nii(four / f"images/{case_id}.nii.gz")
        _, label = _nii(four / f"labels/{case_id}.nii.gz")
        raw_img, _ = _raw(release, case_id, "flair")
        assert image.dtype == np.int16 and image.shape == (*SHAPE, 4) == (*label.shape, 4)
        np.testing.assert_allclose(img.affine, raw_img.affine)
        for c, mod in enumerate(CHANNELS_ALL):  # the four raw files stacked, FLAIR first
            np.testing.assert_array_equal(image[..., c], _raw(release, case_id, mod)[1])
        np.testing.assert_array_equal(label, _nii(flair / f"labels/{case_id}.nii.gz")[1])
        start, stop = _bbox(_raw_brain(release, case_id))  # the box of all four channels
        assert dl["dycon"]["cases"][case_id]["brain_box"] == [start, stop]


# ------------------------------------------------------------------------------------------------ idempotency


def test_idempotent_rerun_and_overwrite(release: Path, tmp_path: Path, tree_checksums, leftovers, capsys):
    dst = tmp_path / "BraTS"
    prepare_brats19(release, dst, labeled=1)
    first = tree_checksums(dst)
    assert prepare_brats19(release, dst, labeled=1) == dst / "datalist.json"  # same arguments: no-op
    assert "nothing to do" in capsys.readouterr().err
    assert tree_checksums(dst) == first
    prepare_brats19(release, dst, labeled=1, overwrite=True)  # rebuilt: byte-identical
    assert tree_checksums(dst) == first
    other = prepare_brats19(release, tmp_path / "other", labeled=1).parent
    assert tree_checksums(other) == first  # no timestamp, no dst path in the datalist
    with pytest.raises(DatasetError, match="other arguments"):
        prepare_brats19(release, dst, labeled=1, modalities="all")
    assert tree_checksums(dst) == first
    prepare_brats19(release, dst, labeled=3, overwrite=True)
    assert read_datalist(dst)["dycon"]["counts"]["training"] == 3
    assert leftovers(dst) == ["BraTS"]


# ----------------------------------------------------------------------------------------------- src layouts


def test_src_variants_case_insensitive(raw_copy: Path, tmp_path: Path, flair: Path, tree_checksums):
    """src = the release folder itself, lower-case grade folders, upper-case / uncompressed file names."""
    root = raw_copy / RELEASE_FOLDER
    (root / "HGG").rename(root / "hgg")
    case_id = read_datalist(flair)["training"][0]["id"]
    case = next(root.glob(f"*/{case_id}"))
    flair_gz = case / f"{case_id}_flair.nii.gz"
    (case / f"{case_id}_FLAIR.nii").write_bytes(gzip.decompress(flair_gz.read_bytes()))
    flair_gz.unlink()
    (case / f"{case_id}_seg.nii.gz").rename(case / f"{case_id}_Seg.NII.GZ")
    out = prepare_brats19(root, tmp_path / "a", labeled=2).parent
    ref = tree_checksums(flair)
    got = tree_checksums(out)
    assert {k: v for k, v in got.items() if k != "datalist.json"} == {k: v for k, v in ref.items()
                                                                      if k != "datalist.json"}
    assert find_release(raw_copy).case_root == root
    # a folder that holds HGG/LGG directly, under another name
    moved = tmp_path / "mine"
    root.rename(moved)
    assert find_release(moved).case_root == moved


def test_missing_and_unlisted_cases_reported(raw_copy: Path, tmp_path: Path, capsys):
    lists = _lists()
    present = _present(raw_copy)
    train = [i for i in lists["training"] if i in present]
    shutil.rmtree(_case_dir(raw_copy, train[1]))  # a train.txt case absent from the release
    extra = synth_brats19(tmp_path / "extra", shape=(20, 20, 16), ids={"BraTS19_FAKE_001_1": "HGG"})
    shutil.copytree(extra / RELEASE_FOLDER / "HGG" / "BraTS19_FAKE_001_1",
                    raw_copy / RELEASE_FOLDER / "HGG" / "BraTS19_FAKE_001_1")
    dl = read_datalist(prepare_brats19(raw_copy, tmp_path / "BraTS", labeled=2))
    assert [e["id"] for e in dl["training"]] == [train[0], train[2]]  # first 2 PRESENT ids
    assert train[1] in dl["dycon"]["missing"]["training"] and len(dl["dycon"]["missing"]["training"]) == 247
    assert dl["dycon"]["unlisted"] == ["BraTS19_FAKE_001_1"]
    assert "BraTS19_FAKE_001_1" not in _all_ids(dl)
    err = capsys.readouterr().err
    assert "247 of 250 train.txt ids are not in" in err
    assert "1 case(s) in" in err and "in no split list" in err and "BraTS19_FAKE_001_1" in err


def test_splits_override_and_empty_test(release: Path, tmp_path: Path):
    present = sorted(_present(release))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("\n".join(present[:4]) + "\n")
    (splits / "val.txt").write_text(present[4] + "\n")
    (splits / "test.txt").write_text("NOT_THERE_1\n")
    with pytest.warns(UserWarning, match="'test' is empty"):
        dl = read_datalist(prepare_brats19(release, tmp_path / "BraTS", labeled=1, splits=splits))
    assert [e["id"] for e in dl["training"]] == present[:1]
    assert [e["id"] for e in dl["validation"]] == [present[4]] and dl["test"] == []
    assert dl["dycon"]["missing"]["test"] == ["NOT_THERE_1"] and dl["dycon"]["unlisted"] == [present[5]]
    assert dl["dycon"]["splits"]["origin"] == str(splits)
    (splits / "test.txt").write_text(present[0] + "\n")
    with pytest.raises(DatasetError, match="split lists overlap"):
        prepare_brats19(release, tmp_path / "B2", labeled=1, splits=splits)


def test_default_labeled_and_fraction(tmp_path: Path, release: Path, leftovers):
    with pytest.raises(DatasetError, match="25 labeled cases asked but only 4"):
        prepare_brats19(release, tmp_path / "a")
    assert leftovers(tmp_path / "a") == []
    dl = read_datalist(prepare_brats19(release, tmp_path / "b", fraction=0.5))
    assert len(dl["training"]) == 2 and len(dl["unlabeled"]) == 2
    dl = read_datalist(prepare_brats19(release, tmp_path / "c", labeled=2, random=True, seed=7))
    assert len(dl["training"]) == 2 and "seeded random draw (seed 7)" in dl["dycon"]["labeled_rule"]


# ---------------------------------------------------------------------------------------------------- errors


def _first_train(src: Path) -> str:
    present = _present(src)
    return next(i for i in _lists()["training"] if i in present)


def _corrupt(src: Path, case_id: str, corrupt: str, which: str) -> Path:
    """Damage one file (or the folder) of a case of the writable release ``src``; returns the path damaged."""
    case = _case_dir(src, case_id)
    path = case / f"{case_id}_{which}.nii.gz"
    if corrupt == "emptydir":
        for f in case.iterdir():
            f.unlink()
        return case
    if corrupt == "missing":
        path.unlink()
        return path
    if corrupt == "emptyfile":
        path.write_bytes(b"")
        return path
    if corrupt == "garbage":
        path.write_bytes(os.urandom(2048))
        return path
    _, data = _nii(path)
    if corrupt == "label3":
        data = data.copy()
        data[data == 1] = 3
        _save_like(path, data, path)
    elif corrupt == "nan":
        data = data.astype(np.float32)
        data[tuple(s // 2 for s in data.shape)] = np.nan
        _save_like(path, data, path, dtype=np.float32)
    elif corrupt == "shape":
        _save_like(path, data[:, :, :-1], path)
    elif corrupt == "affine":
        aff = nib.load(str(path)).affine.copy()
        aff[0, 3] += 5.0
        new = nib.Nifti1Image(data, None)
        new.set_qform(aff, code=1)
        nib.save(new, str(path))
    elif corrupt == "twod":
        _save_like(path, data[:, :, 0], path)
    elif corrupt == "zero":
        _save_like(path, np.zeros_like(data), path)
    elif corrupt == "outside":
        data = data.copy()
        data[0, 0, 0] = 2  # a tumour voxel in the zero background corner
        _save_like(path, data, path)
    else:
        raise AssertionError(corrupt)
    return path


@pytest.mark.parametrize(
    ("corrupt", "message", "which"),
    [
        ("label3", "label values [3] outside {0, 1, 2, 4}", "seg"),
        ("missing", "missing t1ce file", "t1ce"),
        ("missing", "missing segmentation file", "seg"),
        ("emptydir", "empty case folder", ""),
        ("emptyfile", "empty file (0 bytes)", "flair"),
        ("nan", "NaN/Inf voxel", "flair"),
        ("shape", "image shape", "t2"),
        ("affine", "affine differs from the segmentation's", "t1"),
        ("twod", "expected a 3-D volume", "flair"),
        ("garbage", "cannot read NIfTI file", "flair"),
        ("zero", "the input has no voxel > 0 (no brain)", "flair"),
        ("outside", "tumour voxel(s) lie outside the brain bounding box", "seg"),
    ],
)
def test_errors_leave_no_dst(raw_copy: Path, tmp_path: Path, leftovers, corrupt, message, which):
    """A listed case that cannot be used fails the whole preparation, naming the case, the file and the reason,
    and writes nothing."""
    case_id = _first_train(raw_copy)
    path = _corrupt(raw_copy, case_id, corrupt, which)
    dst = tmp_path / "BraTS"
    with pytest.raises(DatasetError) as err:
        prepare_brats19(raw_copy, dst, labeled=2)
    assert message in str(err.value)
    assert f"1 case(s) cannot be prepared ({case_id}: " in str(err.value)
    assert str(path) in str(err.value)  # names the file (the folder for an empty one)
    assert "--skip-incomplete" in str(err.value)
    assert leftovers(dst) == []


def test_skip_incomplete(raw_copy: Path, tmp_path: Path, leftovers, capsys):
    """--skip-incomplete: defective cases (a labeled one, the test one) are left out, printed and recorded; the
    labeled cases are the first USABLE ones of train.txt; every defect is reported, not only the first."""
    dl0 = read_datalist(prepare_brats19(raw_copy, tmp_path / "ref", labeled=2))
    bad_train, bad_test = dl0["training"][0]["id"], dl0["test"][0]["id"]
    _corrupt(raw_copy, bad_train, "missing", "t2")
    _corrupt(raw_copy, bad_test, "affine", "flair")
    with pytest.raises(DatasetError) as err:
        prepare_brats19(raw_copy, tmp_path / "strict", labeled=2)
    assert "2 case(s) cannot be prepared" in str(err.value)
    assert bad_train in str(err.value) and bad_test in str(err.value)
    assert leftovers(tmp_path / "strict") == []
    capsys.readouterr()
    dst = tmp_path / "skip"
    dl = read_datalist(prepare_brats19(raw_copy, dst, labeled=2, skip_incomplete=True))
    skipped = dl["dycon"]["skipped"]
    assert sorted(skipped) == sorted([bad_train, bad_test])
    assert "missing t2 file" in skipped[bad_train] and "affine differs" in skipped[bad_test]
    train0 = _ids_of(dl0, "training") + _ids_of(dl0, "unlabeled")
    assert _ids_of(dl, "training") == train0[1:3] and _ids_of(dl, "unlabeled") == train0[3:]
    assert dl["test"] == [] and _ids_of(dl, "validation") == _ids_of(dl0, "validation")
    assert bad_train not in _all_ids(dl) and bad_test not in dl["dycon"]["cases"]
    assert not (dst / f"images/{bad_train}.nii.gz").exists() and not (dst / f"labels/{bad_test}.nii.gz").exists()
    assert dl["dycon"]["arguments"]["skip_incomplete"] is True
    err_text = capsys.readouterr().err
    assert f"skipped {bad_train}: " in err_text and f"skipped {bad_test}: " in err_text
    assert "skipped 2: " in err_text


def test_cli_skip_incomplete(raw_copy: Path, tmp_path: Path):
    case_id = _first_train(raw_copy)
    _corrupt(raw_copy, case_id, "emptydir", "")
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "brats19", "--src", str(raw_copy), "--dst", str(tmp_path / "B"),
         "--labeled", "2", "--skip-incomplete"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {case_id}: " in proc.stderr and "empty case folder" in proc.stderr
    assert case_id in read_datalist(tmp_path / "B")["dycon"]["skipped"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labeled": 5}, "5 labeled cases asked but only 4"),
        ({"labeled": 2, "fraction": 0.5}, "not both"),
        ({"labeled": 2, "modalities": "t1"}, "modalities must be 'flair'"),
        ({"labeled": 0}, "labeled must be >= 1"),
        ({"labeled": 1, "splits": "/nonexistent/splits"}, "splits folder"),
    ],
)
def test_argument_errors_leave_no_dst(release: Path, tmp_path: Path, leftovers, kwargs, message):
    dst = tmp_path / "BraTS"
    with pytest.raises(DatasetError) as err:
        prepare_brats19(release, dst, **kwargs)
    assert message in str(err.value)
    assert leftovers(dst) == []


def test_missing_src_and_dst_inside_src(tmp_path: Path, raw_copy: Path, leftovers):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_brats19(tmp_path / "nope", tmp_path / "BraTS", labeled=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no BraTS 2019 release found"):
        prepare_brats19(tmp_path / "empty", tmp_path / "BraTS", labeled=1)
    assert leftovers(tmp_path / "BraTS") == []
    with pytest.raises(DatasetError, match="must be outside src"):
        prepare_brats19(raw_copy, raw_copy / "prepared", labeled=1)
    assert leftovers(raw_copy / "prepared") == []


# ---------------------------------------------------------------------------------- python -m entry point


def test_module_entry_point_matches_cli(release: Path, tmp_path: Path):
    """``python -m custom.data.brats19`` (from a bundle folder: ``python -m scripts.data.brats19``) writes the datalist that
    ``dycon prepare brats19`` writes with the same options; an error is one line, exit status 2."""
    check_matches_cli("brats19", ["--src", str(release), "--labeled", "2"], tmp_path, ["--modalities", "t1"], "modalities must be 'flair'")


def test_module_entry_point_from_bundle_folder():
    check_help_from_bundle_folder("brats19")


def test_module_entry_point_in_exported_bundle(release: Path, tmp_path: Path):
    check_exported_bundle("brats19", ["--src", str(release), "--labeled", "2"], tmp_path)
