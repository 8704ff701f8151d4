"""ISLES 2022 (acute / sub-acute ischemic stroke lesions, MRI): preparation and a synthetic stand-in.

``prepare_isles22`` turns the public BIDS release into NIfTI files plus a ``datalist.json`` for ONE of DyCON's three
folds (see :mod:`custom.data.datalist` for the datalist format and the split rules).

Source layouts (``src`` = the ``ISLES-2022`` folder or the folder that holds it; never modified)::

    nested (the Zenodo release)                                  flat (copies without the modality level)
    ISLES-2022/sub-strokecaseXXXX/ses-0001/dwi/<p>_dwi.nii.gz    ISLES-2022/sub-strokecaseXXXX/ses-0001/<p>_dwi.nii.gz
    ISLES-2022/sub-strokecaseXXXX/ses-0001/dwi/<p>_adc.nii.gz    ISLES-2022/sub-strokecaseXXXX/ses-0001/<p>_ADC.nii.gz
    ISLES-2022/sub-strokecaseXXXX/ses-0001/anat/<p>_FLAIR.nii.gz ISLES-2022/sub-strokecaseXXXX/ses-0001/<p>_flair.nii.gz
    ISLES-2022/derivatives/sub-strokecaseXXXX/ses-0001/<p>_msk.nii.gz   (masks, both layouts)

with ``<p>`` = ``sub-strokecaseXXXX_ses-0001``. File and folder names are matched case-insensitively (``adc`` /
``ADC``, ``flair`` / ``FLAIR``, ``dwi/`` / ``DWI/`` ...), ``.nii.gz`` or ``.nii``; JSON side-cars and snapshots are
ignored. The layout is detected per case (recorded in the metadata). The images may also sit in a ``rawdata/``
folder next to ``derivatives/`` (the layout of the challenge repository's sample case).

Channels (``channels=``):

* ``"dwi"`` (default, as DyCON): one channel, written as a 3-D float32 image;
* ``"dwi+adc"``: two channels, written as a 4-D float32 image ``(X, Y, Z, 2)`` in the order ``["dwi", "adc"]``
  (MONAI's ``LoadImage`` with ``ensure_channel_first=True`` reads it as ``(2, X, Y, Z)``). DWI and ADC must share
  a grid (same shape, affines equal within 1e-3 in the linear part and 1e-2 mm in the origin) or the case is an error.
* FLAIR is NEVER a channel: it is acquired on another grid (about 512x512x29 at 0.45x0.45x5 mm against the DWI's
  ~2 mm grid) and is not co-registered to DWI/ADC. Using it would need a registration step, which is out of scope;
  it is only reported (present / grid) in the metadata.

Per case:

* label = the derivatives mask (uint16 0/1 in the release) -> uint8 {0, 1}; any other value is an error, and the
  mask must be on the DWI grid (same tolerance) or the case is an error. Empty masks are allowed (3 real cases);
* image = the DWI (and ADC) voxels as they are, stored as float32, on the DWI grid with the DWI affine (oblique,
  typically LAS, anisotropic): NO intensity or geometry change here. Orientation, the label-free brain crop and the
  brain-masked z-score (:class:`custom.transforms.BrainNormalized`) are steps of the bundle's transform chain
  (``preprocessing_transforms`` in train.yaml and inference.yaml), so the bundle takes a raw DWI NIfTI as well;
* integrity: a DWI / ADC that is constant (e.g. all zero), has NaN/Inf voxels, is not 3-D or cannot be read is an
  error of its case.

Output (``dst``)::

    images/<id>.nii.gz   float32 (3-D for "dwi", 4-D (X, Y, Z, 2) for "dwi+adc"), the DWI affine
    labels/<id>.nii.gz   uint8 {0, 1}, the same affine; written for every case, referenced only by the
                         training / validation / test entries (unlabeled entries have no label key)
    datalist.json        "dycon" metadata: fold, channels, per-case lesion count / volume (computed with
                         26-connectivity, plus the split file's own figures), missing and skipped cases, rules above

Split: DyCON's ``splits_fold{K}.json`` (package data ``custom/data/splits/ISLES2022``; ``splits=`` overrides with
a folder holding ``splits_fold{K}.json`` or a json file): ``train`` (200) -> labeled (the FIRST ``labeled`` ids,
default 20 = 10 %; 10 / 40 = 5 / 20 %) + unlabeled, ``val`` (25) -> validation, ``test`` (25) -> test.

Absent versus incomplete: ids of the fold that the release does not hold AT ALL (neither a case folder nor a
derivatives folder: a subset of the release, e.g. a partial download or the synthetic stand-in) are left out and
reported (stderr, ``dycon.missing``). A case the release holds but cannot be used - an empty case folder, a missing
DWI / ADC (when asked) / mask file, a case with a mask folder but no image folder, several files of one kind, an
unreadable or empty file, a non-3-D or constant volume, NaN/Inf voxels, DWI / ADC / mask grids that disagree, mask
values outside {0, 1} - is an error naming every such case (nothing is written), unless ``skip_incomplete=True``
(``--skip-incomplete``): then those cases are left out, listed in the printed summary and in ``dycon.skipped``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import (
    DATALIST_NAME,
    DatasetError,
    Split,
    atomic_dataset,
    build_datalist,
    check_complete,
    check_destination,
    check_outside,
    check_split_arguments,
    prepare_main,
    select_labeled,
    write_datalist,
)
from .nifti import write_nifti

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_LABELED",
    "FLAIR_NOTE",
    "RELEASE_FOLDER",
    "SPLITS_DIR",
    "CaseFiles",
    "find_case_files",
    "load_case",
    "prepare_isles22",
    "read_fold",
    "split_file",
    "synth_isles22",
]

#: 10 % of the 200 training cases of a fold (10 / 20 / 40 labeled = 5 / 10 / 20 %).
DEFAULT_LABELED = 20
#: Folder of the public release.
RELEASE_FOLDER = "ISLES-2022"
SESSION = "ses-0001"
#: DyCON's fold files (package data).
SPLITS_DIR = Path(__file__).resolve().parent / "splits" / "ISLES2022"
#: ``channels=`` values -> channel names in output order.
CHANNEL_OPTIONS = {"dwi": ("dwi",), "dwi+adc": ("dwi", "adc")}
#: Grid tolerance between DWI / ADC / mask: linear part of the affine, and origin (mm).
AFFINE_ATOL_LINEAR = 1e-3
AFFINE_ATOL_ORIGIN = 1e-2
FLAIR_NOTE = (
    "FLAIR is not used: it is acquired on another grid (e.g. 512x512x29 at 0.45x0.45x5 mm) and is not co-registered "
    "to DWI/ADC in the release; using it would need a registration step, which is out of scope"
)
_CASE_RE = re.compile(r"^sub-strokecase\d+$", re.IGNORECASE)


def _info(msg: str) -> None:
    print(f"dycon prepare isles22: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------- splits


def split_file(fold: int = 0, splits: str | os.PathLike[str] | None = None) -> Path:
    """Path of the fold file: ``<splits or package dir>/splits_fold{fold}.json``, or ``splits`` itself if it is a
    file. DatasetError if it does not exist."""
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise DatasetError(f"fold must be a non-negative integer, got {fold!r}")
    base = SPLITS_DIR if splits is None else Path(os.fspath(splits)).expanduser()
    if base.is_file():
        return base.resolve()
    path = base / f"splits_fold{fold}.json"
    if not path.is_file():
        have = sorted(p.name for p in base.glob("splits_fold*.json")) if base.is_dir() else []
        raise DatasetError(f"no split file {path} (fold {fold}); available: {have or 'none'}")
    return path.resolve()


def read_fold(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a DyCON fold file: ``{"train": [...], "val": [...], "test": [...], "metrics": {id: {...}}}``.

    The json holds the lists ``train`` / ``val`` / ``test`` (ids ``sub-strokecaseXXXX``) and optionally ``metrics``
    (a list of ``{"case_id", "volume", "num_components", ...}``), returned keyed by id. DatasetError if a list is
    missing, has duplicates, or the lists overlap.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read split file {path}: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a json object with train/val/test lists")
    out: dict[str, Any] = {}
    for key in ("train", "val", "test"):
        ids = data.get(key)
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise DatasetError(f"{path}: '{key}' must be a list of case ids")
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DatasetError(f"{path}: '{key}' has duplicate ids: {', '.join(dup)}")
        out[key] = list(ids)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(out[a]) & set(out[b]))
        if both:
            raise DatasetError(f"{path}: ids in both '{a}' and '{b}': {', '.join(both[:10])}")
    metrics: dict[str, dict[str, Any]] = {}
    for entry in data.get("metrics") or []:
        if isinstance(entry, dict) and "case_id" in entry:
            metrics[str(entry["case_id"])] = {k: v for k, v in entry.items() if k != "case_id"}
    out["metrics"] = metrics
    return out


def _codes(header: Any) -> tuple[int, int]:
    """(qform, sform) codes of the written files: the DWI header's, 1 where it has none."""
    q, s = int(header["qform_code"]), int(header["sform_code"])
    return q or s or 1, s or q or 1


def _channels(channels: Any) -> tuple[str, ...]:
    if isinstance(channels, (list, tuple)):
        channels = "+".join(str(c) for c in channels)
    key = str(channels).strip().lower().replace(",", "+").replace(" ", "")
    if key not in CHANNEL_OPTIONS:
        raise DatasetError(f"channels must be one of {sorted(CHANNEL_OPTIONS)}, got {channels!r}")
    return CHANNEL_OPTIONS[key]


# ------------------------------------------------------------------------------------------- source layout


def _dirs(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def _files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    try:
        return sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return []


def _child_dir(folder: Path | None, name: str) -> Path | None:
    """``folder/name`` as a directory, matched case-insensitively (exact spelling first)."""
    if folder is None:
        return None
    exact = folder / name
    if exact.is_dir():
        return exact
    low = name.lower()
    for p in _dirs(folder):
        if p.name.lower() == low:
            return p
    return None


def _case_dirs(folder: Path | None) -> dict[str, Path]:
    """``sub-strokecase*`` folders of ``folder``, keyed by their canonical (lower-case) id."""
    return {p.name.lower(): p for p in _dirs(folder) if _CASE_RE.match(p.name)}


@dataclass(frozen=True)
class _Release:
    root: Path  # the ISLES-2022 folder (holds derivatives/)
    case_root: Path  # where the sub-strokecase* folders are (root, or root/rawdata)
    derivatives: Path
    cases: dict[str, Path]  # lower-case id -> case folder


def _find_release(src: Path) -> _Release:
    if not src.is_dir():
        raise FileNotFoundError(f"ISLES 2022 source folder {src} does not exist (or is not a folder)")
    candidates = [src] + [p for p in _dirs(src) if "isles" in p.name.lower()]
    for root in candidates:
        deriv = _child_dir(root, "derivatives")
        for case_root in (root, _child_dir(root, "rawdata")):
            cases = _case_dirs(case_root)
            if cases and deriv is not None and case_root is not None:
                return _Release(root=root, case_root=case_root, derivatives=deriv, cases=cases)
    raise FileNotFoundError(
        f"no ISLES 2022 release found under {src}: expected {RELEASE_FOLDER}/sub-strokecaseXXXX/ses-0001/... and "
        f"{RELEASE_FOLDER}/derivatives/ (src may be the {RELEASE_FOLDER} folder or the folder holding it)"
    )


@dataclass(frozen=True)
class CaseFiles:
    """Files of one case (None where absent) and its layout (``"nested"`` or ``"flat"``)."""

    case_id: str
    dwi: Path | None
    adc: Path | None
    flair: Path | None
    mask: Path | None
    layout: str


def _session(case_dir: Path | None) -> Path | None:
    ses = _child_dir(case_dir, SESSION)
    if ses is not None:
        return ses
    sessions = [p for p in _dirs(case_dir) if p.name.lower().startswith("ses-")]
    return sessions[0] if len(sessions) == 1 else None


def _match(folders: Sequence[Path | None], case_id: str, suffix: str) -> Path | None:
    """The single file ``<case_id>..._<suffix>.nii[.gz]`` (case-insensitive) in ``folders``; DatasetError if several."""
    hits: list[Path] = []
    prefix = case_id.lower()
    ends = (f"_{suffix}.nii.gz", f"_{suffix}.nii")
    for folder in folders:
        for p in _files(folder):
            low = p.name.lower()
            if low.startswith(prefix) and low.endswith(ends) and p not in hits:
                hits.append(p)
    if len(hits) > 1:
        raise DatasetError(
            f"case {case_id}: several {suffix} files ({', '.join(str(h) for h in hits)}); keep exactly one"
        )
    return hits[0] if hits else None


def find_case_files(release: _Release, case_id: str) -> CaseFiles:
    """Locate the DWI / ADC / FLAIR / mask files of ``case_id`` in either layout (None where absent)."""
    case_dir = release.cases.get(case_id.lower())
    ses = _session(case_dir)
    folders = [ses, _child_dir(ses, "dwi"), _child_dir(ses, "anat")] if ses is not None else [case_dir]
    dwi = _match(folders, case_id, "dwi")
    adc = _match(folders, case_id, "adc")
    flair = _match(folders, case_id, "flair")
    mask_case = _child_dir(release.derivatives, case_id)
    mask_ses = _session(mask_case)
    mask = _match([mask_ses, mask_case], case_id, "msk")
    layout = "flat" if dwi is None or ses is None or dwi.parent == ses else "nested"
    return CaseFiles(case_id=case_id, dwi=dwi, adc=adc, flair=flair, mask=mask, layout=layout)


def _in_release(release: _Release, case_id: str) -> bool:
    """Whether the release holds ``case_id`` at all (a case folder or a derivatives folder)."""
    return case_id.lower() in release.cases or _child_dir(release.derivatives, case_id) is not None


def _missing_reason(files: CaseFiles, release: _Release, channels: Sequence[str]) -> str | None:
    """Why a case the release holds cannot be used from its file list alone (None: all files found)."""
    case_dir = release.cases.get(files.case_id.lower())
    if case_dir is None:
        return f"no case folder in {release.case_root} (only a mask folder in derivatives/)"
    if not any(p.is_file() for p in case_dir.rglob("*")):
        return f"empty case folder {case_dir}"
    if files.dwi is None:
        return "no DWI file"
    if "adc" in channels and files.adc is None:
        return "no ADC file"
    if files.mask is None:
        return "no mask file in derivatives/"
    return None


# ------------------------------------------------------------------------------------------------ reading


def _load(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(array as stored, affine, header) of a NIfTI file; trailing singleton axes beyond 3 are dropped."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error ...
        raise DatasetError(f"{path}: cannot read {what} NIfTI file ({type(err).__name__}: {err})") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D {what} volume, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DatasetError(f"{path}: non-numeric {what} voxels ({data.dtype})")
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def _same_grid(shape_a: tuple[int, ...], aff_a: np.ndarray, shape_b: tuple[int, ...], aff_b: np.ndarray) -> bool:
    return (
        tuple(shape_a) == tuple(shape_b)
        and np.allclose(aff_a[:3, :3], aff_b[:3, :3], rtol=0, atol=AFFINE_ATOL_LINEAR)
        and np.allclose(aff_a[:3, 3], aff_b[:3, 3], rtol=0, atol=AFFINE_ATOL_ORIGIN)
    )


def _grid_text(shape: tuple[int, ...], affine: np.ndarray) -> str:
    return f"shape {tuple(int(s) for s in shape)}, affine {np.round(affine[:3], 4).tolist()}"


def _check_image(path: Path, data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as float64; DatasetError for NaN/Inf voxels or a constant volume (e.g. all zero)."""
    arr = np.asarray(data, dtype=np.float64)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DatasetError(f"{path}: {what} has {bad} NaN/Inf voxel(s)")
    if arr.size == 0 or float(arr.min()) == float(arr.max()):
        value = float(arr.min()) if arr.size else "none"
        raise DatasetError(f"{path}: {what} is constant (every voxel {value}): an empty image")
    return arr


def load_case(files: CaseFiles, channels: Sequence[str] = ("dwi",)) -> dict[str, Any]:
    """Read and check one case; the voxels are NOT changed (no normalisation, cropping or resampling).

    Returns ``{"image": float32 (X, Y, Z) or (X, Y, Z, C) with the raw DWI (, ADC) values, "label": uint8 {0, 1},
    "affine": the DWI affine, "header": the DWI header, "info": per-case metadata}``. DatasetError (naming the
    file) for unreadable or empty files, a non-3-D or constant volume, NaN/Inf voxels, an ADC or mask off the DWI
    grid, or mask values outside {0, 1}.
    """
    if files.dwi is None or files.mask is None or ("adc" in channels and files.adc is None):
        raise DatasetError(f"case {files.case_id}: missing DWI, ADC or mask file")
    dwi_raw, affine, header = _load(files.dwi, "DWI")
    dwi = _check_image(files.dwi, dwi_raw, "DWI")
    arrays = {"dwi": dwi}
    if "adc" in channels:
        adc_raw, adc_aff, _ = _load(files.adc, "ADC")  # type: ignore[arg-type]
        if not _same_grid(dwi.shape, affine, adc_raw.shape, adc_aff):
            raise DatasetError(
                f"{files.adc}: ADC grid ({_grid_text(adc_raw.shape, adc_aff)}) differs from the DWI grid "
                f"({_grid_text(dwi.shape, affine)}) of {files.dwi}; DWI and ADC must share a grid"
            )
        arrays["adc"] = _check_image(files.adc, adc_raw, "ADC")  # type: ignore[arg-type]
    mask_raw, mask_aff, _ = _load(files.mask, "mask")
    if not _same_grid(dwi.shape, affine, mask_raw.shape, mask_aff):
        raise DatasetError(
            f"{files.mask}: mask is not on the DWI grid ({_grid_text(mask_raw.shape, mask_aff)} vs "
            f"{_grid_text(dwi.shape, affine)} of {files.dwi})"
        )
    values = np.unique(mask_raw)
    bad = [v for v in values.tolist() if v not in (0, 1)]  # NaN is never in (0, 1)
    if bad:
        raise DatasetError(f"{files.mask}: mask values {bad[:10]} outside {{0, 1}} (expected a binary 0/1 mask)")
    label = (mask_raw == 1).astype(np.uint8)

    chans = [arrays[c].astype(np.float32) for c in channels]
    image = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)

    import nibabel as nib

    from ..metrics.lesion import count_lesions

    zooms = [float(z) for z in header.get_zooms()[:3]]
    voxel_ml = float(np.prod(zooms)) / 1000.0
    lesion_voxels = int(label.sum())
    info: dict[str, Any] = {
        "layout": files.layout,
        "shape": [int(s) for s in dwi.shape],
        "spacing": [round(z, 6) for z in zooms],
        "orientation": "".join(nib.aff2axcodes(affine)),
        "lesion_count": count_lesions(label),
        "lesion_voxels": lesion_voxels,
        "lesion_volume_ml": round(lesion_voxels * voxel_ml, 6),
        "flair": _flair_status(files, dwi.shape, affine),
    }
    return {"image": image, "label": label, "affine": affine, "header": header, "info": info}


def _flair_status(files: CaseFiles, shape: tuple[int, ...], affine: np.ndarray) -> str:
    if files.flair is None:
        return "absent"
    try:
        import nibabel as nib

        img = nib.load(str(files.flair))  # header only: the voxels are never read
        same = _same_grid(shape, affine, img.shape[:3], np.asarray(img.affine, dtype=np.float64))
        grid = f"{tuple(int(s) for s in img.shape)} at {tuple(round(float(z), 4) for z in img.header.get_zooms()[:3])}"
    except Exception:
        return "present, unreadable header; not used"
    return f"present, {'same grid as DWI' if same else 'other grid ' + grid}; not used"


# -------------------------------------------------------------------------------------------------- writing


def _shown(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def prepare_isles22(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fold: int = 0,
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    channels: str = "dwi",
    splits: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    skip_incomplete: bool = False,
) -> Path:
    """Prepare fold ``fold`` of ISLES 2022 from the BIDS release ``src`` into ``dst``; return the datalist path.

    Args:
        src: the ``ISLES-2022`` folder (holding ``sub-strokecase*/`` and ``derivatives/``) or the folder holding it;
            nested or flat layout, names matched case-insensitively. Never modified.
        dst: output folder, written atomically (``<dst>.partial-<pid>`` renamed at the end).
        fold: DyCON fold 0, 1 or 2 (``splits_fold{fold}.json``).
        labeled: number of labeled cases: the FIRST ones of the fold's ``train`` list that are present (default 20 =
            10 % of 200 when neither ``labeled`` nor ``fraction`` is given). Never clipped.
        fraction: share of the present training cases to label instead of ``labeled``.
        random: draw the labeled cases with ``seed`` instead of taking the first ones.
        seed: seed of that draw.
        channels: ``"dwi"`` (default, as DyCON) or ``"dwi+adc"`` (4-D image, channel order dwi, adc).
        splits: folder with ``splits_fold{K}.json`` files, or one json file (default: the package's DyCON splits).
        overwrite: replace a dataset previously written here with other arguments (a rerun with the same arguments
            returns at once). A ``dst`` that is not a dataset written by us is never touched.
        skip_incomplete: leave out the cases that cannot be used (listed in the summary and ``dycon.skipped``)
            instead of failing.

    Ids of the fold the release does not hold at all are left out and reported on stderr and in
    ``dycon.missing`` / ``dycon.missing_reasons`` (a subset of the release). A case it holds but that cannot be
    used (module docstring: missing or empty files, grids that disagree, a non-binary mask ...) is a DatasetError
    naming every such case, and nothing is written, unless ``skip_incomplete``. Images are written with their raw
    values (float32): all preprocessing is in the bundle's chain.
    """
    src_p = Path(os.fspath(src)).expanduser().resolve()
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    check_split_arguments(labeled, fraction, random, overwrite, skip_incomplete)
    chans = _channels(channels)
    fold_path = split_file(fold, splits)
    fold_data = read_fold(fold_path)
    release = _find_release(src_p)
    check_outside(src_p, dst_p)

    present: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    reasons: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for key, split_key in (("training", "train"), ("validation", "val"), ("test", "test")):
        missing[key] = []
        for case_id in fold_data[split_key]:
            if not _in_release(release, case_id):  # a subset of the release: reported, not an error
                missing[key].append(case_id)
                reasons[case_id] = "not in the release"
                continue
            try:
                files = find_case_files(release, case_id)
            except DatasetError as err:
                problems[case_id] = str(err)
                continue
            reason = _missing_reason(files, release, chans)
            if reason is None:
                present[case_id] = files
            else:
                problems[case_id] = reason
    listed = {i.lower() for k in ("train", "val", "test") for i in fold_data[k]}
    unlisted = sorted(release.cases[i].name for i in release.cases if i not in listed)

    arguments = {
        "src": str(src_p),
        "fold": fold,
        "labeled": labeled,
        "fraction": fraction,
        "random": random,
        "seed": seed,
        "channels": "+".join(chans),
        "splits": None if splits is None else str(fold_path),
        "skip_incomplete": bool(skip_incomplete),
    }
    if check_destination(dst_p, arguments, overwrite=overwrite):
        _info(f"{dst_p} is already prepared with the same arguments; nothing to do (overwrite=True rebuilds it)")
        return dst_p / DATALIST_NAME

    image_rel = lambda i: f"images/{i}.nii.gz"  # noqa: E731
    label_rel = lambda i: f"labels/{i}.nii.gz"  # noqa: E731
    cases_meta: dict[str, Any] = {}
    with atomic_dataset(dst_p) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for case_id in list(present):  # read, check and write every case; a bad case is a problem, not a stop
            try:
                case = load_case(present[case_id], chans)
            except DatasetError as err:
                problems[case_id] = str(err)
                del present[case_id]
                continue
            write_nifti(case["image"], tmp / image_rel(case_id), case["affine"], np.float32, *_codes(case["header"]))
            write_nifti(case["label"], tmp / label_rel(case_id), case["affine"], np.uint8, *_codes(case["header"]))
            info = dict(case["info"])
            if case_id in fold_data["metrics"]:
                info["split_file"] = fold_data["metrics"][case_id]
            cases_meta[case_id] = info
        # every unusable case named at once; nothing is written (atomic_dataset removes tmp) unless skip_incomplete
        skipped = check_complete(problems, skip_incomplete, what=f"ISLES 2022 release {release.root}")

        train_ids = [i for i in fold_data["train"] if i in present]
        val_ids = [i for i in fold_data["val"] if i in present]
        test_ids = [i for i in fold_data["test"] if i in present]
        lab = select_labeled(
            train_ids, labeled=labeled, fraction=fraction, random=random, seed=seed, default=DEFAULT_LABELED
        )
        lab_set = set(lab)
        split = Split(labeled=lab, unlabeled=[i for i in train_ids if i not in lab_set], validation=val_ids)

        for key, split_key in (("training", "train"), ("validation", "val"), ("test", "test")):
            if missing[key]:
                _info(
                    f"{len(missing[key])} of {len(fold_data[split_key])} fold-{fold} '{split_key}' ids are not in "
                    f"{release.root} (a subset of the release) and were left out: {_shown(missing[key])}"
                )
        if skipped:
            _info(
                f"skipped {len(skipped)} incomplete case(s) (--skip-incomplete): "
                + "; ".join(f"{i}: {r}" for i, r in skipped.items())
            )
        if unlisted:
            _info(
                f"{len(unlisted)} case(s) in {release.case_root} are in no list of fold {fold} and were ignored: "
                f"{_shown(unlisted)}"
            )
        for key, ids in (("validation", val_ids), ("test", test_ids)):
            if not ids:
                warnings.warn(
                    f"no {key} case of fold {fold} is present in {src_p}: datalist '{key}' is empty", stacklevel=2
                )

        layouts = sorted({present[i].layout for i in present})
        metadata: dict[str, Any] = {
            "dataset": "ISLES2022",
            "fold": fold,
            "channels": list(chans),
            "in_channels": len(chans),
            "channel_layout": (
                "3-D image, one channel"
                if len(chans) == 1
                else f"4-D image (X, Y, Z, {len(chans)}), last axis = channels in the order {list(chans)}"
            ),
            "flair": FLAIR_NOTE,
            "image": "raw DWI (, ADC) voxel values as float32 on the DWI grid: no intensity or geometry change; the "
            "bundle's chain reorients, crops to the brain (image != 0 after the brain z-score, label-free) and "
            "normalises (scripts.transforms.BrainNormalized)",
            "geometry": "original DWI affine kept (oblique, typically LAS, anisotropic)",
            "label": "derivatives mask (uint16 0/1) -> uint8 {0, 1}, on the DWI grid",
            "lesions": "lesion_count = connected components with 26-connectivity (as the ISLES'22 evaluation), "
            "lesion_volume_ml = voxels x voxel volume; 'split_file' = the fold file's own figures",
            "source": {
                "path": str(src_p),
                "release_root": str(release.root),
                "case_root": str(release.case_root),
                "derivatives": str(release.derivatives),
                "layouts": layouts,
                "split_file": str(fold_path),
                "split_file_is_default": splits is None,
            },
            "labeled_rule": (f"seeded random draw (seed {seed})" if random else "first N of the fold's train list")
            + (f"; default N = {DEFAULT_LABELED} (10% of 200)" if labeled is None and fraction is None else ""),
            "missing": missing,
            "missing_reasons": {i: reasons[i] for i in sorted(reasons)},
            "unlisted": unlisted,
            "arguments": arguments,
        }
        datalist = build_datalist(split, test_ids, image_rel, label_rel, metadata, skipped=skipped)
        roles = {
            **dict.fromkeys(split.labeled, "training"),
            **dict.fromkeys(split.unlabeled, "unlabeled"),
            **dict.fromkeys(val_ids, "validation"),
            **dict.fromkeys(test_ids, "test"),
        }
        datalist["dycon"]["cases"] = {i: {"split": roles[i], **cases_meta[i]} for i in roles}
        write_datalist(datalist, tmp / DATALIST_NAME)
    c = datalist["dycon"]["counts"]
    _info(
        f"wrote {dst_p} (fold {fold}, channels {'+'.join(chans)}): {c['training']} labeled, {c['unlabeled']} "
        f"unlabeled, {c['validation']} validation, {c['test']} test"
        + (f"; {len(skipped)} incomplete case(s) skipped" if skipped else "")
    )
    return dst_p / DATALIST_NAME


# ------------------------------------------------------------------------------------------------ synthetic


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Product of rotations about x, y, z by angles of 2..max_deg degrees with random signs."""
    r = np.eye(3)
    for axis in range(3):
        a = math.radians(float(rng.uniform(2.0, max_deg)) * float(rng.choice([-1.0, 1.0])))
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = r @ m
    return r


def _las_affine(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], max_deg: float) -> np.ndarray:
    """Oblique LAS affine (first axis towards Left, i.e. -x in RAS+ world), centred near the world origin."""
    aff = np.eye(4)
    aff[:3, :3] = _rotation(rng, max_deg) @ np.diag([-spacing[0], spacing[1], spacing[2]])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2) + rng.uniform(-5, 5, size=3)
    return aff


def _ellipsoid(grid: tuple[np.ndarray, ...], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0  # type: ignore[return-value]


def _place_lesions(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, ...],
    brain: np.ndarray,
    csf: np.ndarray,
    shape: Sequence[int],
    n: int,
) -> list[np.ndarray]:
    """``n`` separate (26-connectivity) small ellipsoidal lesions inside the brain; even ones < 50 voxels."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(brain, iterations=2) & ~ndimage.binary_dilation(csf, iterations=2)
    if not inner.any():  # tiny volumes
        inner = brain & ~csf
    candidates = np.argwhere(inner)
    for _attempt in range(200):
        lesions = []
        for j in range(n):
            c = candidates[rng.integers(len(candidates))] + rng.uniform(-0.3, 0.3, size=3)
            if j % 2 == 0:  # small: about 5-35 voxels
                radii = (rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.3))
            else:  # larger: about 60-250 voxels
                radii = (rng.uniform(2.8, 4.2), rng.uniform(2.8, 4.2), rng.uniform(1.6, 2.6))
            lesions.append(_ellipsoid(grid, c, radii) & brain & ~csf)
        union = np.any(lesions, axis=0) if lesions else np.zeros(brain.shape, bool)
        _, count = ndimage.label(union, structure=np.ones((3, 3, 3), bool))
        if count == n and all(les.any() for les in lesions):
            return lesions
    raise DatasetError(f"could not place {n} separate lesions in a volume of shape {tuple(shape)}; use a larger shape")


def _synth_case(rng: np.random.Generator, shape: tuple[int, int, int], n_lesions: int):
    """One fake case on the DWI grid: (dwi float64, adc float64, mask uint16 0/1, brain bool)."""
    from scipy.ndimage import gaussian_filter

    grid = tuple(
        np.arange(s, dtype=float)[tuple(slice(None) if a == k else None for a in range(3))] for k, s in enumerate(shape)
    )
    cen = (np.asarray(shape, dtype=float) - 1) / 2 + rng.uniform(-1, 1, size=3)
    brain = _ellipsoid(grid, cen, (0.42 * shape[0], 0.45 * shape[1], max(0.46 * shape[2], 2.0)))
    csf = np.zeros(shape, bool)
    for side in (-1, 1):  # two ventricle-like CSF pockets
        csf |= _ellipsoid(
            grid,
            cen + np.array([side * 0.08 * shape[0], 0.02 * shape[1], 0]),
            (0.05 * shape[0] + 0.5, 0.14 * shape[1] + 0.5, max(0.2 * shape[2], 1.0)),
        )
    lesions = _place_lesions(rng, grid, brain, csf, shape, n_lesions)
    mask = np.zeros(shape, bool)
    for les in lesions:
        mask |= les
    x = grid[0] / shape[0]
    shading = 1.0 + 0.1 * np.cos(np.pi * x + rng.uniform(0, np.pi))
    dwi = (380.0 * brain - 300.0 * csf + 480.0 * mask) * shading  # lesion bright on DWI
    adc = 780.0 * brain + 2200.0 * csf - 420.0 * mask  # dark on ADC (x 1e-6 mm^2/s), CSF bright
    dwi = gaussian_filter(dwi, sigma=0.6) + rng.normal(0, 14.0, shape)
    adc = gaussian_filter(adc, sigma=0.6) + rng.normal(0, 40.0, shape)
    dwi = np.where(brain, np.maximum(dwi, 1.0), 0.0)  # zero (masked) background, strictly positive brain
    adc = np.where(brain, np.maximum(adc, 1.0), 0.0)
    return dwi.astype(np.float64), adc.astype(np.float64), mask.astype(np.uint16), brain


def _save(array: np.ndarray, path: Path, affine: np.ndarray, dtype: type) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _sidecar(path: Path, **fields: Any) -> None:
    base = {"dataset": "ISLES_22", "Modality": "MR", "MagneticFieldStrength": 3.0, "BodyPartExamined": "BRAIN"}
    path.write_text(json.dumps({**base, **fields}, indent=4) + "\n", encoding="utf-8")


def synth_isles22(
    dst: str | os.PathLike[str],
    layout: str = "nested",
    n_train: int = 4,
    n_val: int = 1,
    n_test: int = 1,
    shape: Sequence[int] = (48, 48, 16),
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> Path:
    """Write a fake ISLES 2022 release ``dst/ISLES-2022/...`` in the nested (Zenodo) or flat layout.

    Cases: the first ``n_train`` / ``n_val`` / ``n_test`` ids of fold 0's ``train`` / ``val`` / ``test`` lists (so
    the package splits apply), or ``ids``. Per case: DWI and ADC float64 on one oblique LAS grid (2-8 degree
    rotations, ~2 mm in-plane, 2-5 mm slices), the mask (uint16 0/1) on that grid in ``derivatives/``, FLAIR float32
    on ANOTHER grid (2x the in-plane resolution, half the slices, its own obliquity), JSON side-cars. 0-4 lesions per
    case (separate under 26-connectivity, every other one under 50 voxels; at least one case has none), bright on
    DWI, dark on ADC; zero background outside the brain. The flat layout alternates the letter case of ADC / FLAIR
    (``_ADC`` + ``_flair``, then ``_adc`` + ``_FLAIR``). Deterministic for a given seed (same NumPy). Returns ``dst``.
    """
    if layout not in ("nested", "flat"):
        raise DatasetError(f"layout must be 'nested' or 'flat', got {layout!r}")
    shp = tuple(shape)
    if not (
        len(shp) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) for s in shp)
        and shp[0] >= 24
        and shp[1] >= 24
        and shp[2] >= 8
    ):
        raise DatasetError(f"shape must be three integers, at least (24, 24, 8), got {shape!r}")
    if ids is None:
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DatasetError(f"{name} must be a non-negative integer, got {v!r}")
        fold0 = read_fold(split_file(0))
        case_ids = fold0["train"][:n_train] + fold0["val"][:n_val] + fold0["test"][:n_test]
    else:
        case_ids = [str(i) for i in ids]
        bad = [i for i in case_ids if not _CASE_RE.match(i)]
        if bad or len(set(case_ids)) != len(case_ids):
            raise DatasetError(f"ids must be distinct 'sub-strokecaseXXXX' names, got {list(ids)!r}")
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    if os.path.lexists(dst_p) and not (dst_p.is_dir() and not any(dst_p.iterdir())):
        raise DatasetError(f"{dst_p} exists and is not empty; the synthetic generator only writes a new folder")

    rng = np.random.default_rng(seed)
    n_lesions = rng.permutation([k % 5 for k in range(len(case_ids))])
    with atomic_dataset(dst_p) as tmp:
        root = tmp / RELEASE_FOLDER
        for k, case_id in enumerate(case_ids):
            prefix = f"{case_id}_{SESSION}"
            ses = root / case_id / SESSION
            sp = (float(rng.uniform(1.8, 2.2)), float(rng.uniform(1.8, 2.2)), float(rng.uniform(2.0, 5.0)))
            aff = _las_affine(rng, shp, sp, max_deg=8.0)
            dwi, adc, mask, _brain = _synth_case(rng, shp, int(n_lesions[k]))
            f_shape = (2 * shp[0], 2 * shp[1], max(shp[2] // 2, 3))
            f_sp = (sp[0] / 2, sp[1] / 2, sp[2] * shp[2] / f_shape[2])
            f_aff = _las_affine(rng, f_shape, f_sp, max_deg=4.0)
            f_grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in f_shape], indexing="ij", sparse=True)
            flair = (300.0 * (sum(g**2 for g in f_grid) <= 0.8) + rng.normal(0, 10.0, f_shape)).astype(np.float32)
            if layout == "nested":
                d_dir, a_dir, adc_name, flair_name = ses / "dwi", ses / "anat", "adc", "FLAIR"
            else:
                d_dir = a_dir = ses
                adc_name, flair_name = ("ADC", "flair") if k % 2 == 0 else ("adc", "FLAIR")
            _save(dwi, d_dir / f"{prefix}_dwi.nii.gz", aff, np.float64)
            _save(adc, d_dir / f"{prefix}_{adc_name}.nii.gz", aff, np.float64)
            _save(flair, a_dir / f"{prefix}_{flair_name}.nii.gz", f_aff, np.float32)
            _sidecar(d_dir / f"{prefix}_dwi.json", DiffusionBValue=1000.0, SliceThickness=round(sp[2], 3))
            _sidecar(d_dir / f"{prefix}_{adc_name}.json", SliceThickness=round(sp[2], 3))
            _sidecar(a_dir / f"{prefix}_{flair_name}.json", SliceThickness=round(f_sp[2], 3))
            _save(mask, root / "derivatives" / case_id / SESSION / f"{prefix}_msk.nii.gz", aff, np.uint16)
    return dst_p


# python -m scripts.data.isles22 in a bundle folder (custom.data.isles22 here), the options of dycon prepare isles22
if __name__ == "__main__":
    prepare_main(prepare_isles22, __spec__.name)
