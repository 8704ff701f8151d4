"""ISLES 2022 preparation (custom.data.isles22): synthetic nested / flat BIDS releases, channels, folds, errors, CLI."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from custom.data.datalist import DatasetError, assert_disjoint, read_datalist
from custom.data.isles22 import (
    DEFAULT_LABELED,
    FLAIR_NOTE,
    SPLITS_DIR,
    prepare_isles22,
    read_fold,
    split_file,
    synth_isles22,
)
from entry_points import check_help_from_bundle_folder, check_matches_cli

REPO = Path(__file__).resolve().parents[2]
SHAPE = (32, 32, 10)  # tiny: every test stays fast
FOLD0 = read_fold(SPLITS_DIR / "splits_fold0.json")
TRAIN, VAL, TEST = FOLD0["train"][:4], FOLD0["val"][:1], FOLD0["test"][:1]
ALL = TRAIN + VAL + TEST
KEYS = ("training", "unlabeled", "validation", "test")


def _nii(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def _files(root: Path, case_id: str) -> dict[str, Path]:
    """The DWI / ADC / FLAIR / mask paths of a synthetic case, whatever the layout or letter case."""
    ses = root / "ISLES-2022" / case_id / "ses-0001"
    out = {}
    for p in ses.rglob("*.nii*"):
        out[p.name.split("_")[-1].split(".")[0].lower()] = p
    out["msk"] = root / "ISLES-2022" / "derivatives" / case_id / "ses-0001" / f"{case_id}_ses-0001_msk.nii.gz"
    return out


def _ids(dl: dict, key: str) -> list[str]:
    return [e["id"] for e in dl[key]]


def _save_like(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    nib.save(img, str(path))


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic nested release: fold-0 ids, 4 train + 1 val + 1 test."""
    return synth_isles22(tmp_path_factory.mktemp("isles") / "nested", shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic flat release with the same seed (same voxels, other file layout / letter case)."""
    return synth_isles22(tmp_path_factory.mktemp("isles") / "flat", layout="flat", shape=SHAPE, seed=0)


@pytest.fixture()
def nested_copy(nested: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(nested, tmp_path / "src"))


# --------------------------------------------------------------------------------------------- synthetic


def test_synth_nested_layout_headers_and_lesions(nested: Path):
    root = nested / "ISLES-2022"
    assert sorted(p.name for p in root.iterdir()) == sorted(ALL + ["derivatives"])
    counts, sizes = [], []
    for case_id in ALL:
        p = f"{case_id}_ses-0001"
        ses = root / case_id / "ses-0001"
        assert sorted(x.name for x in (ses / "dwi").iterdir()) == sorted(
            [f"{p}_dwi.nii.gz", f"{p}_dwi.json", f"{p}_adc.nii.gz", f"{p}_adc.json"])
        assert sorted(x.name for x in (ses / "anat").iterdir()) == [f"{p}_FLAIR.json", f"{p}_FLAIR.nii.gz"]
        assert sorted(x.name for x in ses.iterdir()) == ["anat", "dwi"]
        dwi_img, dwi = _nii(ses / "dwi" / f"{p}_dwi.nii.gz")
        adc_img, adc = _nii(ses / "dwi" / f"{p}_adc.nii.gz")
        fl_img, flair = _nii(ses / "anat" / f"{p}_FLAIR.nii.gz")
        m_img, mask = _nii(root / "derivatives" / case_id / "ses-0001" / f"{p}_msk.nii.gz")
        assert dwi.dtype == adc.dtype == np.float64 and flair.dtype == np.float32 and mask.dtype == np.uint16
        assert dwi.shape == adc.shape == mask.shape == SHAPE
        np.testing.assert_array_equal(dwi_img.affine, adc_img.affine)
        np.testing.assert_array_equal(dwi_img.affine, m_img.affine)
        assert nib.aff2axcodes(dwi_img.affine) == ("L", "A", "S")
        lin = dwi_img.affine[:3, :3]
        assert np.count_nonzero(np.abs(lin) > 1e-3) > 3  # oblique: not a permuted diagonal
        zooms = dwi_img.header.get_zooms()
        assert all(1.7 < z < 2.3 for z in zooms[:2]) and 2.0 <= zooms[2] <= 5.0
        # FLAIR on another grid: twice the in-plane resolution, fewer slices, another affine
        assert flair.shape[:2] == (2 * SHAPE[0], 2 * SHAPE[1]) and flair.shape[2] < SHAPE[2]
        assert not np.allclose(fl_img.affine, dwi_img.affine)
        assert set(np.unique(mask).tolist()) <= {0, 1}
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        counts.append(n)
        sizes += ndimage.sum(mask, labels, range(1, n + 1)).tolist()
        if n:  # bright on DWI, dark on ADC
            brain = (dwi > 0) & (mask == 0)
            assert dwi[mask == 1].mean() > dwi[brain].mean() * 1.5
            assert adc[mask == 1].mean() < adc[brain].mean() * 0.8
    assert all(0 <= n <= 4 for n in counts) and 0 in counts and max(counts) >= 2
    assert min(sizes) < 50 and max(sizes) >= 50


def test_synth_flat_layout_varies_letter_case(flat: Path, nested: Path):
    root = flat / "ISLES-2022"
    names = []
    for case_id in ALL:
        ses = root / case_id / "ses-0001"
        assert all(x.is_file() for x in ses.iterdir())  # no dwi/ or anat/ level
        names += [x.name for x in ses.iterdir()]
        assert (root / "derivatives" / case_id / "ses-0001" / f"{case_id}_ses-0001_msk.nii.gz").is_file()
    for suffix in ("_ADC.nii.gz", "_adc.nii.gz", "_flair.nii.gz", "_FLAIR.nii.gz", "_dwi.nii.gz"):
        assert any(n.endswith(suffix) for n in names), suffix
    # same seed: same voxels as the nested release
    for case_id in ALL:
        a, b = _files(flat, case_id), _files(nested, case_id)
        for key in ("dwi", "adc", "flair", "msk"):
            np.testing.assert_array_equal(_nii(a[key])[1], _nii(b[key])[1])


def test_synth_is_deterministic_and_refuses_nonempty(tmp_path: Path, tree_checksums):
    a = synth_isles22(tmp_path / "a", n_train=2, n_val=0, n_test=1, shape=(24, 24, 8), seed=3)
    b = synth_isles22(tmp_path / "b", n_train=2, n_val=0, n_test=1, shape=(24, 24, 8), seed=3)
    assert tree_checksums(a) == tree_checksums(b)
    with pytest.raises(DatasetError, match="not empty"):
        synth_isles22(a)
    with pytest.raises(DatasetError, match="layout must be"):
        synth_isles22(tmp_path / "c", layout="bids")
    with pytest.raises(DatasetError, match="shape must be"):
        synth_isles22(tmp_path / "c", shape=(16, 16, 6))
    ids = ["sub-strokecase0240", "sub-strokecase0241"]
    c = synth_isles22(tmp_path / "d", ids=ids, shape=(24, 24, 8))
    assert sorted(p.name for p in (c / "ISLES-2022").iterdir()) == ["derivatives", *ids]


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_dwi_contents(nested: Path, tmp_path: Path, capsys):
    dst = tmp_path / "out"
    out = prepare_isles22(nested, dst, labeled=2)
    assert out == dst / "datalist.json"
    dl = read_datalist(out)
    assert set(dl) == {*KEYS, "dycon"}
    assert _ids(dl, "training") == TRAIN[:2] and _ids(dl, "unlabeled") == TRAIN[2:]
    assert _ids(dl, "validation") == VAL and _ids(dl, "test") == TEST
    # labels only for labeled entries; splits disjoint
    assert all("label" in e for k in ("training", "validation", "test") for e in dl[k])
    assert all("label" not in e for e in dl["unlabeled"])
    assert_disjoint(dl)
    assert len({i for k in KEYS for i in _ids(dl, k)}) == len(ALL)
    meta = dl["dycon"]
    assert meta["fold"] == 0 and meta["channels"] == ["dwi"] and meta["in_channels"] == 1
    assert meta["flair"] == FLAIR_NOTE and "not co-registered" in meta["flair"]
    assert meta["counts"] == {"training": 2, "unlabeled": 2, "validation": 1, "test": 1}
    assert meta["labeled_ids"] == TRAIN[:2]
    assert len(meta["missing"]["training"]) == 196 and len(meta["missing"]["validation"]) == 24
    assert set(meta["missing_reasons"].values()) == {"not in the release"} and meta["skipped"] == {}
    assert meta["source"]["layouts"] == ["nested"]
    assert "196 of 200 fold-0 'train' ids are not in" in capsys.readouterr().err
    for key in KEYS:
        for e in dl[key]:
            files = _files(nested, e["id"])
            src_img, dwi = _nii(files["dwi"])
            _, mask = _nii(files["msk"])
            img, image = _nii(dst / e["image"])
            lab, label = _nii(dst / f"labels/{e['id']}.nii.gz")  # written for unlabeled cases too
            assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == SHAPE
            assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
            # affine preserved (oblique LAS), label on the same grid
            np.testing.assert_allclose(img.affine, src_img.affine, atol=1e-6)
            np.testing.assert_allclose(lab.affine, src_img.affine, atol=1e-6)
            assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
            np.testing.assert_array_equal(label, mask.astype(np.uint8))
            # the raw DWI voxels, unchanged (float32): normalisation is the bundle's BrainNormalized
            np.testing.assert_array_equal(image, dwi.astype(np.float32))
            info = meta["cases"][e["id"]]
            n = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
            assert info["lesion_count"] == n and info["lesion_voxels"] == int(mask.sum())
            vox_ml = float(np.prod(src_img.header.get_zooms()[:3])) / 1000
            assert info["lesion_volume_ml"] == pytest.approx(mask.sum() * vox_ml, rel=1e-5)
            assert info["split_file"] == FOLD0["metrics"][e["id"]]
            assert info["split"] == key and info["layout"] == "nested" and info["orientation"] == "LAS"
            assert "brain_mask" not in info
            assert "other grid" in info["flair"] and info["flair"].endswith("not used")


def test_flat_layout_gives_the_same_dataset(nested: Path, flat: Path, tmp_path: Path, tree_checksums):
    a = prepare_isles22(nested, tmp_path / "a", labeled=2, channels="dwi+adc").parent
    b = prepare_isles22(flat / "ISLES-2022", tmp_path / "b", labeled=2, channels="dwi+adc").parent
    ca, cb = tree_checksums(a), tree_checksums(b)
    assert ca.pop("datalist.json") != cb.pop("datalist.json")  # source paths and layouts differ
    assert ca == cb  # every image and label byte-identical
    meta = read_datalist(b)["dycon"]
    assert meta["source"]["layouts"] == ["flat"] and meta["missing_reasons"] == read_datalist(a)["dycon"][
        "missing_reasons"]


def test_prepare_dwi_adc_channels(flat: Path, tmp_path: Path):
    dst = tmp_path / "out"
    dl = read_datalist(prepare_isles22(flat, dst, labeled=1, channels="dwi+adc"))
    meta = dl["dycon"]
    assert meta["channels"] == ["dwi", "adc"] and meta["in_channels"] == 2
    assert "last axis" in meta["channel_layout"]
    assert meta["arguments"]["channels"] == "dwi+adc"
    for e in dl["training"] + dl["unlabeled"]:
        files = _files(flat, e["id"])
        src_img, dwi = _nii(files["dwi"])
        _, adc = _nii(files["adc"])
        img, image = _nii(dst / e["image"])
        assert image.shape == (*SHAPE, 2) and image.dtype == np.float32
        np.testing.assert_allclose(img.affine, src_img.affine, atol=1e-6)
        for c, raw in enumerate((dwi, adc)):  # channel order dwi, adc; raw values
            np.testing.assert_array_equal(image[..., c], raw.astype(np.float32))
    # MONAI reads the 4-D NIfTI channel-last: (2, X, Y, Z) after ensure_channel_first
    from monai.transforms import LoadImaged

    item = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)(
        {"image": str(dst / dl["training"][0]["image"]), "label": str(dst / dl["training"][0]["label"])})
    assert tuple(item["image"].shape) == (2, *SHAPE) and tuple(item["label"].shape) == (1, *SHAPE)


def test_fold_selection_and_splits_override(tmp_path: Path):
    folds = [read_fold(split_file(k)) for k in range(3)]
    # ids whose role differs between the folds
    ids = sorted({folds[0]["train"][0], folds[0]["train"][1], folds[0]["val"][0], folds[0]["test"][0],
                  folds[1]["val"][0], folds[1]["test"][0], folds[2]["val"][0], folds[2]["test"][0]})
    src = synth_isles22(tmp_path / "src", ids=ids, shape=(24, 24, 8), seed=1)
    roles = {}
    for k in range(3):
        dl = read_datalist(prepare_isles22(src, tmp_path / f"f{k}", fold=k, labeled=1))
        assert dl["dycon"]["fold"] == k
        train = [i for i in folds[k]["train"] if i in ids]
        assert _ids(dl, "training") == train[:1] and _ids(dl, "unlabeled") == train[1:]
        assert _ids(dl, "validation") == [i for i in folds[k]["val"] if i in ids]
        assert _ids(dl, "test") == [i for i in folds[k]["test"] if i in ids]
        roles[k] = {i: key for key in KEYS for i in _ids(dl, key)}
    assert roles[0] != roles[1] != roles[2]
    # splits= overrides the package files: a folder with splits_fold{K}.json, or one file
    custom = {"train": ids[:3], "val": ids[3:4], "test": ids[4:]}
    (tmp_path / "mysplits").mkdir()
    (tmp_path / "mysplits" / "splits_fold0.json").write_text(json.dumps(custom))
    for splits in (tmp_path / "mysplits", tmp_path / "mysplits" / "splits_fold0.json"):
        dst = tmp_path / f"custom-{splits.name}"
        dl = read_datalist(prepare_isles22(src, dst, labeled=2, splits=splits))
        assert _ids(dl, "training") == ids[:2] and _ids(dl, "unlabeled") == ids[2:3]
        assert _ids(dl, "validation") == ids[3:4] and _ids(dl, "test") == ids[4:]
        assert dl["dycon"]["source"]["split_file_is_default"] is False
        assert "split_file" not in dl["dycon"]["cases"][ids[0]]  # no metrics in that file


def test_fraction_and_random_draw(nested: Path, tmp_path: Path):
    dl = read_datalist(prepare_isles22(nested, tmp_path / "a", fraction=0.5))
    assert _ids(dl, "training") == TRAIN[:2]
    dl = read_datalist(prepare_isles22(nested, tmp_path / "b", labeled=2, random=True, seed=7))
    assert len(dl["training"]) == 2 and set(_ids(dl, "training")) <= set(TRAIN)
    assert "seeded random draw (seed 7)" in dl["dycon"]["labeled_rule"]


# --------------------------------------------------------------------------------------------- robustness


def test_flair_ignored(nested_copy: Path, nested: Path, tmp_path: Path, tree_checksums):
    ref = prepare_isles22(nested, tmp_path / "ref", labeled=2).parent
    files = _files(nested_copy, TRAIN[0])
    files["flair"].write_bytes(b"not a nifti at all")  # unreadable FLAIR: never read for the voxels
    _files(nested_copy, TRAIN[1])["flair"].unlink()  # no FLAIR at all
    dst = prepare_isles22(nested_copy, tmp_path / "out", labeled=2).parent
    a, b = tree_checksums(ref), tree_checksums(dst)
    a.pop("datalist.json"), b.pop("datalist.json")
    assert a == b
    cases = read_datalist(dst)["dycon"]["cases"]
    assert cases[TRAIN[0]]["flair"] == "present, unreadable header; not used"
    assert cases[TRAIN[1]]["flair"] == "absent"


def test_case_insensitive_names_and_uncompressed_nii(nested_copy: Path, nested: Path, tmp_path: Path,
                                                     tree_checksums):
    ref = tree_checksums(prepare_isles22(nested, tmp_path / "ref", labeled=2, channels="dwi+adc").parent)
    case = nested_copy / "ISLES-2022" / TRAIN[0] / "ses-0001"
    (case / "dwi").rename(case / "DWI")
    adc = case / "DWI" / f"{TRAIN[0]}_ses-0001_adc.nii.gz"
    (case / "DWI" / f"{TRAIN[0]}_ses-0001_ADC.nii").write_bytes(gzip.decompress(adc.read_bytes()))
    adc.unlink()
    (nested_copy / "ISLES-2022" / "derivatives").rename(nested_copy / "ISLES-2022" / "Derivatives")
    out = tree_checksums(prepare_isles22(nested_copy, tmp_path / "out", labeled=2, channels="dwi+adc").parent)
    ref.pop("datalist.json"), out.pop("datalist.json")
    assert out == ref


def test_src_variants(nested: Path, tmp_path: Path):
    """src = the ISLES-2022 folder itself, its parent, or a rawdata/ + derivatives/ copy (challenge repo sample)."""
    a = read_datalist(prepare_isles22(nested / "ISLES-2022", tmp_path / "a", labeled=1))
    b = read_datalist(prepare_isles22(nested, tmp_path / "b", labeled=1))
    data = tmp_path / "data"
    shutil.copytree(nested / "ISLES-2022" / "derivatives", data / "derivatives")
    for case_id in ALL:
        shutil.copytree(nested / "ISLES-2022" / case_id, data / "rawdata" / case_id)
    c = read_datalist(prepare_isles22(data, tmp_path / "c", labeled=1))
    assert c["dycon"]["source"]["case_root"] == str(data / "rawdata")
    for key in KEYS:
        assert _ids(a, key) == _ids(b, key) == _ids(c, key)
    with pytest.raises(FileNotFoundError, match="no ISLES 2022 release found"):
        prepare_isles22(tmp_path / "a", tmp_path / "d", labeled=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_isles22(tmp_path / "nope", tmp_path / "d", labeled=1)


def test_absent_cases_are_a_subset(nested_copy: Path, tmp_path: Path, capsys):
    """A fold id the release does not hold at all (no case folder, no mask folder) is left out and reported: a subset
    of the release (like the synthetic one), not a defect."""
    root = nested_copy / "ISLES-2022"
    shutil.rmtree(root / TRAIN[1])
    shutil.rmtree(root / "derivatives" / TRAIN[1])
    dl = read_datalist(prepare_isles22(nested_copy, tmp_path / "a", labeled=2))
    assert _ids(dl, "training") == [TRAIN[0], TRAIN[2]] and _ids(dl, "unlabeled") == [TRAIN[3]]
    meta = dl["dycon"]
    assert TRAIN[1] in meta["missing"]["training"] and meta["missing_reasons"][TRAIN[1]] == "not in the release"
    assert meta["skipped"] == {}
    assert "197 of 200 fold-0 'train' ids are not in" in capsys.readouterr().err


def _defect(root: Path, case_id: str, defect: str) -> None:
    """Make ``case_id`` of the release ``root`` (either layout) incomplete or inconsistent."""
    files = _files(root, case_id)
    case_dir = root / "ISLES-2022" / case_id
    if defect == "no_mask":
        files["msk"].unlink()
    elif defect == "no_dwi":
        files["dwi"].unlink()
    elif defect == "no_adc":
        files["adc"].unlink()
    elif defect == "empty_case_folder":
        shutil.rmtree(case_dir)
        case_dir.mkdir()
    elif defect == "mask_only":
        shutil.rmtree(case_dir)
    elif defect == "empty_dwi_file":
        files["dwi"].write_bytes(b"")
    elif defect == "empty_mask_file":
        files["msk"].write_bytes(b"")
    elif defect == "zero_dwi":
        _replace_nifti(files["dwi"], data=np.zeros_like)
    elif defect == "two_dwi":
        shutil.copy(files["dwi"], files["dwi"].with_name(files["dwi"].name[: -len(".nii.gz")] + ".nii"))
    elif defect == "mask_grid":
        _replace_nifti(files["msk"], affine=_shift_origin)
    elif defect == "adc_grid":
        _replace_nifti(files["adc"], data=lambda a: a[:, :, :-1])
    elif defect == "mask_values":
        _replace_nifti(files["msk"], data=lambda a: _set(a, 3))
    else:
        raise AssertionError(defect)


DEFECTS = [  # (defect, channels, reason in the error)
    ("no_mask", "dwi", "no mask file in derivatives/"),
    ("no_dwi", "dwi", "no DWI file"),
    ("no_adc", "dwi+adc", "no ADC file"),
    ("empty_case_folder", "dwi", "empty case folder"),
    ("mask_only", "dwi", "no case folder"),
    ("empty_dwi_file", "dwi", "cannot read DWI NIfTI file"),
    ("empty_mask_file", "dwi", "cannot read mask NIfTI file"),
    ("zero_dwi", "dwi", "DWI is constant (every voxel 0.0)"),
    ("two_dwi", "dwi", "several dwi files"),
    ("mask_grid", "dwi", "mask is not on the DWI grid"),
    ("adc_grid", "dwi+adc", "DWI and ADC must share a grid"),
    ("mask_values", "dwi", "mask values [3] outside {0, 1}"),
]


# the flat layout changes only where the images are found: it repeats the defects of the case folder's files
FLAT_DEFECTS = ("no_mask", "no_dwi", "no_adc", "empty_case_folder", "empty_dwi_file", "zero_dwi", "two_dwi")
CASES = [("nested", *d) for d in DEFECTS] + [("flat", *d) for d in DEFECTS if d[0] in FLAT_DEFECTS]


@pytest.mark.parametrize(("layout", "defect", "channels", "reason"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_incomplete_case_fails_or_is_skipped(
    layout, defect, channels, reason, nested: Path, flat: Path, tmp_path: Path, leftovers, capsys
):
    """Each defect of one listed case: an error naming the case (nothing written), or with skip_incomplete=True the
    case is left out, printed in the summary and recorded in dycon.skipped."""
    src = Path(shutil.copytree({"nested": nested, "flat": flat}[layout], tmp_path / "src"))
    bad = TRAIN[1] if defect != "no_mask" else TEST[0]  # a test case too: test ids are checked the same way
    _defect(src, bad, defect)
    dst = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        prepare_isles22(src, dst, labeled=1, channels=channels)
    msg = str(err.value)
    assert f"{bad}: " in msg and reason in msg and "1 case(s) cannot be prepared" in msg
    assert "nothing was written" in msg and "--skip-incomplete" in msg
    assert leftovers(dst) == []
    capsys.readouterr()

    if bad == TEST[0]:
        with pytest.warns(UserWarning, match="'test' is empty"):
            dl = read_datalist(prepare_isles22(src, dst, labeled=1, channels=channels, skip_incomplete=True))
    else:
        dl = read_datalist(prepare_isles22(src, dst, labeled=1, channels=channels, skip_incomplete=True))
    assert bad not in {i for k in KEYS for i in _ids(dl, k)}
    assert len({i for k in KEYS for i in _ids(dl, k)}) == len(ALL) - 1
    assert list(dl["dycon"]["skipped"]) == [bad] and reason in dl["dycon"]["skipped"][bad]
    assert bad not in dl["dycon"]["cases"] and not (dst / "images" / f"{bad}.nii.gz").exists()
    err_text = capsys.readouterr().err
    assert "skipped 1 incomplete case(s) (--skip-incomplete)" in err_text and bad in err_text
    assert dl["dycon"]["arguments"]["skip_incomplete"] is True


def test_adc_missing_is_fine_for_dwi_only(nested_copy: Path, tmp_path: Path):
    _defect(nested_copy, TRAIN[2], "no_adc")
    dl = read_datalist(prepare_isles22(nested_copy, tmp_path / "a", labeled=2))
    assert _ids(dl, "unlabeled") == TRAIN[2:] and dl["dycon"]["skipped"] == {}


def test_cli_skip_incomplete(nested_copy: Path, tmp_path: Path):
    _defect(nested_copy, TRAIN[1], "no_mask")
    base = [sys.executable, "-m", "custom", "prepare", "isles22", "--src", str(nested_copy), "--labeled", "1"]
    proc = subprocess.run(base + ["--dst", str(tmp_path / "a")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and f"{TRAIN[1]}: no mask file" in proc.stderr and not (tmp_path / "a").exists()
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(base + ["--dst", str(tmp_path / "b"), "--skip-incomplete"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert read_datalist(tmp_path / "b")["dycon"]["skipped"] == {TRAIN[1]: "no mask file in derivatives/"}
    assert "skipped 1 incomplete case(s)" in proc.stderr


def _replace_nifti(path: Path, data=None, affine=None, dtype=None) -> None:
    img, arr = _nii(path)
    out = np.asarray(arr if data is None else data(arr))
    _save_like(path, out, img.affine if affine is None else affine(img.affine), dtype or out.dtype)


@pytest.mark.parametrize(
    ("target", "corrupt", "channels", "message"),
    [
        ("adc", "shift", "dwi+adc", "DWI and ADC must share a grid"),
        ("adc", "shape", "dwi+adc", "DWI and ADC must share a grid"),
        ("msk", "shift", "dwi", "mask is not on the DWI grid"),
        ("msk", "shape", "dwi", "mask is not on the DWI grid"),
        ("msk", "value2", "dwi", "mask values [2] outside {0, 1}"),
        ("msk", "half", "dwi", "mask values [0.5] outside {0, 1}"),
        ("dwi", "nan", "dwi", "NaN/Inf voxel"),
        ("dwi", "garbage", "dwi", "cannot read DWI NIfTI file"),
        ("dwi", "4d", "dwi", "expected a 3-D DWI volume"),
    ],
)
def test_errors_leave_no_dst(nested_copy: Path, tmp_path: Path, leftovers, target, corrupt, channels, message):
    path = _files(nested_copy, TRAIN[0])[target]
    if corrupt == "shift":
        _replace_nifti(path, affine=_shift_origin)
    elif corrupt == "shape":
        _replace_nifti(path, data=lambda a: a[:, :, :-1])
    elif corrupt == "value2":
        _replace_nifti(path, data=lambda a: _set(a, 2))
    elif corrupt == "half":
        _replace_nifti(path, data=lambda a: _set(a.astype(np.float32), 0.5))
    elif corrupt == "nan":
        _replace_nifti(path, data=lambda a: _set(a, np.nan))
    elif corrupt == "garbage":
        path.write_bytes(b"\x1f\x8b garbage")
    elif corrupt == "4d":
        _replace_nifti(path, data=lambda a: np.stack([a, a], axis=-1))
    dst = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        prepare_isles22(nested_copy, dst, labeled=2, channels=channels)
    assert message in str(err.value) and str(path) in str(err.value)
    assert leftovers(dst) == []


def _shift_origin(affine: np.ndarray) -> np.ndarray:
    affine = affine.copy()
    affine[:3, 3] += 0.5  # half a millimetre: far above the 0.01 mm tolerance
    return affine


def _set(a: np.ndarray, value) -> np.ndarray:
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


def test_adc_grid_irrelevant_for_dwi_only(nested_copy: Path, tmp_path: Path):
    path = _files(nested_copy, TRAIN[0])["adc"]
    _replace_nifti(path, data=lambda a: a[:, :, :-1])
    dl = read_datalist(prepare_isles22(nested_copy, tmp_path / "out", labeled=2))
    assert _ids(dl, "training") == TRAIN[:2]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({}, DatasetError, f"{DEFAULT_LABELED} labeled cases asked but only 4"),
        ({"labeled": 5}, DatasetError, "5 labeled cases asked but only 4"),
        ({"labeled": 2, "fraction": 0.5}, DatasetError, "not both"),
        ({"labeled": 1, "channels": "dwi+flair"}, DatasetError, "channels must be one of"),
        ({"labeled": 1, "fold": 3}, DatasetError, "no split file"),
        ({"labeled": 1, "fold": -1}, DatasetError, "fold must be"),
        ({"labeled": 1, "random": "yes"}, DatasetError, "random must be True or False"),
    ],
)
def test_argument_errors_leave_no_dst(nested: Path, tmp_path: Path, leftovers, kwargs, exc, message):
    dst = tmp_path / "out"
    with pytest.raises(exc) as err:
        prepare_isles22(nested, dst, **kwargs)
    assert message in str(err.value)
    assert leftovers(dst) == []


def test_dst_inside_src_refused(nested_copy: Path, leftovers):
    with pytest.raises(DatasetError, match="must be outside src"):
        prepare_isles22(nested_copy, nested_copy / "ISLES-2022" / "prepared", labeled=1)
    assert leftovers(nested_copy / "ISLES-2022" / "prepared") == []


def test_idempotent_rerun_and_overwrite(nested: Path, tmp_path: Path, tree_checksums, leftovers, capsys):
    dst = tmp_path / "out"
    prepare_isles22(nested, dst, labeled=2)
    first = tree_checksums(dst)
    assert prepare_isles22(nested, dst, labeled=2) == dst / "datalist.json"
    assert "nothing to do" in capsys.readouterr().err
    assert tree_checksums(dst) == first
    prepare_isles22(nested, dst, labeled=2, overwrite=True)  # rebuilt: identical bytes
    assert tree_checksums(dst) == first
    with pytest.raises(DatasetError, match="other arguments"):
        prepare_isles22(nested, dst, labeled=2, channels="dwi+adc")
    assert tree_checksums(dst) == first
    prepare_isles22(nested, dst, labeled=2, channels="dwi+adc", overwrite=True)
    assert read_datalist(dst)["dycon"]["channels"] == ["dwi", "adc"]
    assert leftovers(dst) == ["out"]


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_prepare(nested: Path, tmp_path: Path):
    dst = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "isles22", "--src", str(nested), "--dst", str(dst),
         "--labeled", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dst / "datalist.json")
    assert time.perf_counter() - t0 < 120
    dl = read_datalist(dst)
    assert _ids(dl, "training") == TRAIN[:2] and _ids(dl, "unlabeled") == TRAIN[2:]
    assert _ids(dl, "validation") == VAL and _ids(dl, "test") == TEST
    assert "wrote" in proc.stderr


# ---------------------------------------------------------------------------------- python -m entry point


def test_module_entry_point_matches_cli(nested: Path, tmp_path: Path):
    """``python -m custom.data.isles22`` (from a bundle folder: ``python -m scripts.data.isles22``) writes the datalist that
    ``dycon prepare isles22`` writes with the same options; an error is one line, exit status 2."""
    check_matches_cli("isles22", ["--src", str(nested), "--labeled", "2"], tmp_path, ["--fraction", "0.5"], 'give either labeled (a count) or fraction')


def test_module_entry_point_from_bundle_folder():
    check_help_from_bundle_folder("isles22")
