"""Left Atrium (2018 Atrial Segmentation Challenge, LGE-MRI): preparation (format conversion and split) and
synthetic stand-ins.

``prepare_la`` CONVERTS either release into NIfTI files plus a ``datalist.json`` (see :mod:`custom.data.datalist`)
and splits it; it never crops or changes intensities (every preprocessing step the model depends on is in the
bundle's transform chain, the same for training, evaluation, inference and MONAI Label):

* the raw challenge release ``<id>/lgemri.nrrd`` + ``<id>/laendo.nrrd`` (label 255 = atrium): arrays written
  unchanged (values, dtype, index order), label 255 -> 1; the affine is the header's (directions and origin, LPS ->
  RAS exactly as MONAI's ``NrrdReader`` reads the raw file: :func:`nrrd_affine`), with the voxel size set to the
  challenge's 0.625 mm (the headers read 1 mm), so the prepared NIfTI and the raw nrrd reach the network as the same
  array;
* the preprocessed h5 release of the semi-supervised literature (UA-MT lineage):
  ``2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (``image`` float32 z-scored, ``label`` uint8 {0, 1}, arrays
  (x, y, z), cropped in x/y around the label by the release's authors: :func:`ua_mt_preprocess`), with
  ``train.list`` (80 ids) / ``test.list`` (20 ids) next to the folder. Arrays copied unchanged; the h5 stores no
  geometry, so it gets the one the raw nrrd would give (:func:`h5_affine`: ``diag(-s, -s, s)``).

Output (``dst``)::

    images/<id>.nii.gz    the image as stored (raw: uint8; h5: float32), array axes (x, y, z) as in the nrrd / h5
    labels/<id>.nii.gz    uint8 {0, 1}, same affine; written for every case (unlabeled ones too, for pseudo-label
                          evaluation), but only referenced by the training/validation/test entries of the datalist
    datalist.json

A listed case that cannot be converted (empty case folder, missing or unreadable image or label, a label whose
header geometry disagrees with its image, empty label, ...) fails the preparation naming every such case, and
nothing is written, unless ``skip_incomplete=True`` (``--skip-incomplete``): then they are left out and listed in
the summary and in the datalist (``dycon.skipped``).
"""

from __future__ import annotations

import math
import os
import string
import sys
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import (
    DATALIST_NAME,
    DatasetError,
    atomic_dataset,
    build_datalist,
    check_complete,
    check_destination,
    check_outside,
    check_split_arguments,
    prepare_main,
    present_in_lists,
    read_id_list,
    split_training,
    write_datalist,
)
from .nifti import new_synthetic_folder, write_nifti

__all__ = [
    "CHALLENGE_SPACING",
    "DEFAULT_LABELED",
    "H5_FOLDER",
    "UA_MT_OUTPUT_SIZE",
    "crop_seed",
    "h5_affine",
    "load_h5_case",
    "load_raw_case",
    "nrrd_affine",
    "prepare_la",
    "ua_mt_preprocess",
    "synth_la",
    "synth_la_h5",
]

#: 10 % of the 80 official training cases: the usual LA budget (4 / 8 / 16 = 5 / 10 / 20 %).
DEFAULT_LABELED = 8
#: The challenge's voxel size in mm (isotropic).
CHALLENGE_SPACING = 0.625
#: ``output_size`` of UA-MT's la_heart_processing.py: widens the label crop in-plane to at least ~112 voxels.
UA_MT_OUTPUT_SIZE = (112, 112, 80)
#: Folder of the h5 release (and of the raw release as UA-MT's script reads it).
H5_FOLDER = "2018LA_Seg_Training Set"
H5_NAME = "mri_norm2.h5"
IMAGE_NRRD = "lgemri.nrrd"
LABEL_NRRD = "laendo.nrrd"
#: Share of the sorted ids used as test set when a release comes without train.list / test.list.
FALLBACK_TEST_SHARE = 0.2

NRRD_LPS = "left-posterior-superior"
NRRD_RAS = "right-anterior-superior"


def _info(msg: str) -> None:
    print(f"dycon prepare la: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ reading


def load_h5_case(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one ``mri_norm2.h5``: returns ``(image float32, label uint8 {0, 1})``, arrays (x, y, z).

    DatasetError (naming the file) if it is missing or unreadable, lacks ``image``/``label``, is not 3-D, has
    mismatching shapes, label values outside {0, 1}, or NaN/Inf voxels.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: missing h5 file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise DatasetError(f"{path}: h5 file lacks dataset(s) {missing} (has {sorted(f.keys())})")
            image = np.asarray(f["image"][()])
            label = np.asarray(f["label"][()])
    except DatasetError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError, ... on corrupt files
        raise DatasetError(f"{path}: cannot read h5 file ({type(err).__name__}: {err})") from err
    image, label = _validate(path, image, label, allowed=(0, 1))
    return image.astype(np.float32, copy=False), label.astype(np.uint8, copy=False)


def _read_nrrd(path: Path, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    import nrrd

    if not path.is_file():
        raise DatasetError(f"{path}: missing {what} nrrd file")
    try:
        data, header = nrrd.read(str(path))
    except Exception as err:  # nrrd.NRRDError, OSError, ValueError, zlib.error ...
        raise DatasetError(f"{path}: cannot read nrrd file ({type(err).__name__}: {err})") from err
    return np.asarray(data), dict(header)


def _nrrd_geometry(path: Path, header: Mapping[str, Any], ndim: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(space, space directions (rows = index axes), space origin) of a 3-D nrrd header, checked."""
    space = str(header.get("space", NRRD_LPS))
    if space not in (NRRD_LPS, NRRD_RAS):
        raise DatasetError(f"{path}: nrrd space {space!r} is not supported (only {NRRD_LPS!r} or {NRRD_RAS!r})")
    if "space directions" not in header or "space origin" not in header:
        raise DatasetError(f"{path}: nrrd header has no 'space directions' / 'space origin' (no geometry)")
    try:
        directions = np.asarray(header["space directions"], dtype=np.float64)
        origin = np.asarray(header["space origin"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable nrrd geometry ({err})") from err
    if directions.shape != (ndim, 3) or origin.shape != (3,) or not np.isfinite(directions).all():
        raise DatasetError(f"{path}: nrrd geometry is not 3-D (space directions {directions.tolist()})")
    if not np.isfinite(origin).all() or abs(np.linalg.det(directions)) < 1e-12:
        raise DatasetError(f"{path}: degenerate nrrd geometry (space directions {directions.tolist()})")
    return space, directions, origin


def nrrd_affine(header: Mapping[str, Any], spacing: float | Sequence[float] | None = None) -> np.ndarray:
    """The RAS affine (4 x 4) of a 3-D nrrd header, as MONAI's ``NrrdReader`` makes it, but with the voxel size
    ``spacing`` (mm per index axis) instead of the header's (None: the header's).

    MONAI's rule: ``affine[:3, :3] = space_directions.T`` (row i of ``space directions`` is index axis i in world
    coordinates), ``affine[:3, 3] = space_origin``, then LPS -> RAS (rows x and y negated) when ``space`` is
    left-posterior-superior or absent. The header's directions are kept (normalised); only their lengths become
    ``spacing`` (the challenge headers read 1 mm where the voxels are 0.625 mm: :data:`CHALLENGE_SPACING`).
    """
    space, directions, origin = _nrrd_geometry(Path("<header>"), header, 3)
    if spacing is not None:
        directions = (
            directions / np.linalg.norm(directions, axis=1, keepdims=True) * np.asarray(_spacing3(spacing))[:, None]
        )
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    if space == NRRD_LPS:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return affine


def h5_affine(spacing: float | Sequence[float] = CHALLENGE_SPACING) -> np.ndarray:
    """The RAS affine given to the h5 release's arrays (which store no geometry): ``diag(-s, -s, s, 1)``, origin 0.

    The h5 arrays are the challenge nrrd arrays in index order (UA-MT's ``nrrd.read``, cropped in x and y), whose
    headers say LPS with axis-aligned directions: :func:`nrrd_affine` of such a header (origin 0). So an h5 case and
    the same raw case reach the network (after the chain's ``Orientationd(RAS)``) as the same array.
    """
    sx, sy, sz = _spacing3(spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def load_raw_case(
    image_path: str | os.PathLike[str], label_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read and check one raw case: returns ``(image as stored, label uint8 {0, 1}, image header)``, arrays in
    index order (x, y, z) as ``nrrd.read`` gives them (and MONAI's ``NrrdReader``).

    DatasetError (naming the file) if a file is missing or unreadable, not 3-D, the label's header geometry
    (sizes, space, space directions, space origin) disagrees with the image's, the header has no usable geometry,
    label values are outside {0, 255} (the challenge's atrium value; {0, 1} is accepted too), the label is empty,
    the image is constant, or it has NaN/Inf voxels.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    image, ih = _read_nrrd(image_path, "image")
    label, lh = _read_nrrd(label_path, "label")
    if image.ndim != 3:
        raise DatasetError(f"{image_path}: expected a 3-D image, got shape {image.shape}")
    if label.ndim != 3:
        raise DatasetError(f"{label_path}: expected a 3-D label, got shape {label.shape}")
    ispace, idir, iorig = _nrrd_geometry(image_path, ih, 3)
    lspace, ldir, lorig = _nrrd_geometry(label_path, lh, 3)
    if image.shape != label.shape:
        raise DatasetError(f"{label_path}: label shape {label.shape} != image shape {image.shape}")
    if ispace != lspace or not np.allclose(idir, ldir, atol=1e-4) or not np.allclose(iorig, lorig, atol=1e-3):
        raise DatasetError(
            f"{label_path}: label geometry disagrees with its image (space {lspace!r} vs {ispace!r}, space "
            f"directions {ldir.tolist()} vs {idir.tolist()}, space origin {lorig.tolist()} vs {iorig.tolist()})"
        )
    values = np.unique(label).tolist()
    allowed = (0, 1) if set(values) <= {0, 1} else (0, 255)
    image, label = _validate(label_path, image, label, allowed=allowed, image_path=image_path)
    if not label.any():
        raise DatasetError(f"{label_path}: label is empty (every challenge case has an atrium)")
    if float(np.min(image)) == float(np.max(image)):
        raise DatasetError(f"{image_path}: image is constant")
    return image, (label > 0).astype(np.uint8), ih


def _validate(
    path: Path, image: np.ndarray, label: np.ndarray, allowed: tuple[int, int], image_path: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    image_path = image_path or path
    if image.ndim != 3 or label.ndim != 3:
        raise DatasetError(f"{path}: expected 3-D image and label, got shapes {image.shape} and {label.shape}")
    if image.shape != label.shape:
        raise DatasetError(f"{path}: image shape {image.shape} != label shape {label.shape}")
    if not (np.issubdtype(image.dtype, np.number) and np.issubdtype(label.dtype, np.number)):
        raise DatasetError(f"{path}: non-numeric arrays ({image.dtype}, {label.dtype})")
    if np.issubdtype(image.dtype, np.inexact) and not np.isfinite(image).all():
        n = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DatasetError(f"{image_path}: image has {n} NaN/Inf voxel(s)")
    values = np.unique(label)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        raise DatasetError(f"{path}: label values {bad[:10]} outside {set(allowed)}")
    return image, label


# ------------------------------------------------------------------------------- the h5 release's preprocessing


def crop_seed(case_id: str) -> int:
    """Seed of the per-case RNG for the crop margins: ``crc32(case_id)`` (independent of the split ``seed``)."""
    return zlib.crc32(case_id.encode("utf-8"))


def ua_mt_preprocess(image: np.ndarray, label: np.ndarray, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """How the AUTHORS of the h5 release made it from a raw case (UA-MT's ``code/dataloaders/
    la_heart_processing.py``); used by :func:`synth_la_h5` to fake that release. ``prepare_la`` never applies it
    (preparation only converts; the bundle's ``label_crop`` option is the chain's version of the crop). Steps:

    1. ``label = (label == 255)`` as uint8;
    2. bounding box of the label (inclusive min/max per axis);
    3. ``px = max(112 - (maxx - minx), 0) // 2`` (same for y with 112; ``pz`` with 80 is computed there but unused);
    4. ``minx = max(minx - randint(10, 20) - px, 0)``, ``maxx = min(maxx + randint(10, 20) + px, w)``, then the same
       for y, then two draws ``randint(5, 10)`` for z that UA-MT makes but never uses; the margins are drawn from a
       per-case seeded ``np.random.RandomState(crop_seed(case_id))`` instead of UA-MT's unseeded global RNG;
    5. z-score over the WHOLE (uncropped) volume in float64, cast to float32;
    6. ``image[minx:maxx, miny:maxy]`` (exclusive upper bound on the inclusive label max, as in UA-MT); z whole.
    """
    label = (label == 255).astype(np.uint8)
    w, h, _d = label.shape
    nz = np.nonzero(label)
    if nz[0].size == 0:
        raise DatasetError(f"case {case_id}: empty label, cannot crop around it")
    minx, maxx = int(nz[0].min()), int(nz[0].max())
    miny, maxy = int(nz[1].min()), int(nz[1].max())
    px = max(UA_MT_OUTPUT_SIZE[0] - (maxx - minx), 0) // 2
    py = max(UA_MT_OUTPUT_SIZE[1] - (maxy - miny), 0) // 2
    rng = np.random.RandomState(crop_seed(case_id))
    minx = max(minx - int(rng.randint(10, 20)) - px, 0)
    maxx = min(maxx + int(rng.randint(10, 20)) + px, w)
    miny = max(miny - int(rng.randint(10, 20)) - py, 0)
    maxy = min(maxy + int(rng.randint(10, 20)) + py, h)
    rng.randint(5, 10)  # UA-MT's z margins: drawn, never applied (z is not cropped)
    rng.randint(5, 10)
    img = np.asarray(image)
    std = float(np.std(img))
    if not math.isfinite(std) or std == 0.0:
        raise DatasetError(f"case {case_id}: image is constant or not finite, cannot z-score it")
    img = ((img - np.mean(img)) / std).astype(np.float32)
    return img[minx:maxx, miny:maxy], label[minx:maxx, miny:maxy]


# ------------------------------------------------------------------------------------------- source layout


@dataclass
class _Source:
    layout: str  # "h5" | "raw"
    case_root: Path
    cases: dict[str, Path]  # id -> case folder
    files: dict[str, dict[str, Path | None]] = field(default_factory=dict)  # id -> {"h5"|"image"|"label": path}
    train_list: Path | None = None
    test_list: Path | None = None


def _child_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, matched case-insensitively."""
    exact = folder / name
    if exact.is_file():
        return exact
    low = name.lower()
    for p in sorted(folder.iterdir()):
        if p.name.lower() == low and p.is_file():
            return p
    return None


def _scan(root: Path) -> dict[str, dict[str, dict[str, Path | None]]]:
    """Case folders under ``root`` by layout: {"h5": {id: {"h5": path}}, "raw": {id: {"image", "label"}},
    "other": {id: {}}} (``other``: folders with neither file, e.g. empty case folders)."""
    found: dict[str, dict[str, dict[str, Path | None]]] = {"h5": {}, "raw": {}, "other": {}}
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return found
    for case in children:
        h5 = _child_file(case, H5_NAME)
        img = _child_file(case, IMAGE_NRRD)
        if h5 is not None:
            found["h5"][case.name] = {"h5": h5}
        if img is not None or _child_file(case, LABEL_NRRD) is not None:
            found["raw"][case.name] = {"image": img, "label": _child_file(case, LABEL_NRRD)}
        if h5 is None and img is None:
            found["other"][case.name] = {}
    return found


def _find_source(src: Path, layout: str) -> _Source:
    if not src.is_dir():
        raise FileNotFoundError(f"LA source folder {src} does not exist (or is not a folder)")
    if layout not in ("auto", "h5", "raw"):
        raise DatasetError(f"layout must be 'auto', 'h5' or 'raw', got {layout!r}")
    roots = [src] + sorted(p for p in src.iterdir() if p.is_dir() and "training" in p.name.lower())
    for root in roots:
        found = _scan(root)
        # Prefer the literature's h5 when a folder holds both (UA-MT writes mri_norm2.h5 next to the nrrd files).
        kinds = ["h5", "raw"] if layout == "auto" else [layout]
        for kind in kinds:
            if any(f.get("h5") or f.get("image") for f in found[kind].values()):
                files = dict(found[kind])
                # every other case folder of this root is a case whose files are missing (reported if listed)
                for name in sorted(set(found["h5"]) | set(found["raw"]) | set(found["other"])):
                    files.setdefault(name, {})
                return _Source(
                    layout=kind,
                    case_root=root,
                    cases={i: root / i for i in files},
                    files=files,
                    train_list=_find_list(src, root, "train.list"),
                    test_list=_find_list(src, root, "test.list"),
                )
    want = {"auto": f"{H5_NAME} or {IMAGE_NRRD}", "h5": H5_NAME, "raw": IMAGE_NRRD}[layout]
    raise FileNotFoundError(
        f"no LA case found under {src}: expected <id>/{want} in {src} or in a '*Training*' subfolder "
        f"(e.g. '{H5_FOLDER}')"
    )


def _find_list(src: Path, root: Path, name: str) -> Path | None:
    seen: list[Path] = []
    for d in (root, root.parent, src, src.parent):
        if d in seen:
            continue
        seen.append(d)
        p = _child_file(d, name) if d.is_dir() else None
        if p is not None:
            return p
    return None


def _official_split(source: _Source) -> tuple[list[str], list[str], str]:
    """(train ids, test ids, rule) from the lists, or the documented fallback rule when they are absent."""
    present = sorted(source.cases)
    train = read_id_list(source.train_list) if source.train_list else None
    test = read_id_list(source.test_list) if source.test_list else None
    if train is not None and test is not None:
        rule = f"official lists {source.train_list} and {source.test_list}"
    elif train is not None:
        test = [i for i in present if i not in set(train)]
        rule = f"{source.train_list}; no test.list found: test = present ids not in train.list (sorted)"
    elif test is not None:
        train = [i for i in present if i not in set(test)]
        rule = f"{source.test_list}; no train.list found: train = present ids not in test.list (sorted)"
    else:
        n_test = math.floor(len(present) * FALLBACK_TEST_SHARE)
        train, test = present[: len(present) - n_test], present[len(present) - n_test :]
        rule = (
            f"no train.list/test.list found: ids sorted, the last {int(FALLBACK_TEST_SHARE * 100)}% "
            f"(floor, {n_test} of {len(present)}) as test, the rest as training in sorted order"
        )
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise DatasetError(f"ids in both train and test lists: {', '.join(overlap)}")
    return train, test, rule


# -------------------------------------------------------------------------------------------------- writing


def _spacing3(spacing: Any) -> tuple[float, float, float]:
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        sp = (float(spacing),) * 3
    elif isinstance(spacing, (list, tuple)) and len(spacing) == 3:
        sp = tuple(float(s) for s in spacing)
    else:
        raise DatasetError(f"spacing must be a number or three numbers (mm), got {spacing!r}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise DatasetError(f"spacing must be positive and finite, got {spacing!r}")
    return sp  # type: ignore[return-value]


def prepare_la(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    val: int = 0,
    spacing: float | Sequence[float] = CHALLENGE_SPACING,
    overwrite: bool = False,
    layout: str = "auto",
    skip_incomplete: bool = False,
) -> Path:
    """Convert the LA dataset from ``src`` (h5 release or raw challenge release) into ``dst`` (NIfTI + datalist) and
    split it; return the datalist. Images are converted unchanged (no crop, no intensity change).

    Args:
        src: the h5 release root (holding ``2018LA_Seg_Training Set/`` and ``train.list``/``test.list``), that
            folder itself (lists one level up or inside), or the raw release (``<id>/lgemri.nrrd`` and
            ``<id>/laendo.nrrd``, directly or in a ``*Training*`` subfolder). Never modified.
        dst: output folder, written atomically (``<dst>.partial-<pid>`` renamed at the end).
        labeled: number of labeled cases: the FIRST ones of train.list that are present (default 8 = 10 % of 80
            when neither ``labeled`` nor ``fraction`` is given). Never clipped: asking more than exist is an error.
        fraction: share of the (present, non-validation) training cases to label instead of ``labeled``.
        random: draw labeled (and validation) cases with ``seed`` instead of taking the first (last) ones.
        seed: seed of the random draws.
        val: number of validation cases carved from the END of the training list (removed from labeled and
            unlabeled).
        spacing: voxel size in mm written to the affines (the challenge's 0.625 mm by default; the raw headers'
            1 mm is not trusted, their directions and origin are kept).
        overwrite: replace a dataset previously written here with other arguments (a rerun with the SAME
            arguments returns at once; with ``overwrite=True`` it is rebuilt). A ``dst`` that is not a dataset
            written by us is never touched.
        layout: ``"auto"`` (h5 if present, else raw), ``"h5"`` or ``"raw"``.
        skip_incomplete: leave out listed cases that cannot be converted (missing, unreadable or inconsistent
            files: see :func:`load_raw_case`, :func:`load_h5_case`), listing them in the summary and in the
            datalist (``dycon.skipped``), instead of failing (naming every such case) without writing anything.

    Training ids of the lists that are absent from ``src`` altogether (no case folder: e.g. the 24-case subset of
    the h5 release) are skipped and reported (stderr and ``dycon.missing``); so are absent test ids. An empty test
    set is kept as ``"test": []`` with a warning. Without lists, the documented fallback is: sorted ids, the last
    20 % as test.
    """
    src_p = Path(os.fspath(src)).expanduser().resolve()
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    sp = _spacing3(spacing)
    check_split_arguments(labeled, fraction, random, overwrite, skip_incomplete)
    source = _find_source(src_p, layout)
    check_outside(src_p, dst_p)

    train_all, test_all, rule = _official_split(source)
    found, missing, unlisted = present_in_lists({"training": train_all, "test": test_all}, source.cases)
    missing_train, missing_test = missing["training"], missing["test"]
    split_args = {"labeled": labeled, "fraction": fraction, "random": random, "seed": seed, "val": val}
    split_training(found["training"], **split_args, default_labeled=DEFAULT_LABELED)  # argument errors first

    arguments = {
        "src": str(src_p),
        "labeled": labeled,
        "fraction": fraction,
        "random": random,
        "seed": seed,
        "val": val,
        "spacing": list(sp),
        "layout": layout,
        "skip_incomplete": skip_incomplete,
    }
    if check_destination(dst_p, arguments, overwrite=overwrite):
        _info(f"{dst_p} is already prepared with the same arguments; nothing to do (overwrite=True rebuilds it)")
        return dst_p / DATALIST_NAME

    for what, ids, total in (("train.list", missing_train, train_all), ("test.list", missing_test, test_all)):
        if ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            _info(f"{len(ids)} of {len(total)} {what} ids are not in {source.case_root} and were skipped: {shown}")
    if unlisted:
        _info(f"{len(unlisted)} case(s) in {source.case_root} are in no list and were ignored: {', '.join(unlisted)}")

    image_rel = lambda i: f"images/{i}.nii.gz"  # noqa: E731
    label_rel = lambda i: f"labels/{i}.nii.gz"  # noqa: E731
    with atomic_dataset(dst_p) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        problems: dict[str, str] = {}
        header_spacings: set[tuple[float, ...]] = set()
        for case_id in found["training"] + found["test"]:
            try:
                image, label, affine, header_sp = _convert_case(source, case_id, sp)
            except DatasetError as err:
                problems[case_id] = str(err)
                continue
            if header_sp is not None:
                header_spacings.add(header_sp)
            write_nifti(image, tmp / image_rel(case_id), affine, image.dtype.type)
            write_nifti(label, tmp / label_rel(case_id), affine, np.uint8)
        skipped = check_complete(problems, skip_incomplete, what=f"LA {source.layout} release {source.case_root}")
        train_ids = [i for i in found["training"] if i not in skipped]
        test_ids = [i for i in found["test"] if i not in skipped]
        split = split_training(train_ids, **split_args, default_labeled=DEFAULT_LABELED)
        if not test_ids:
            warnings.warn(f"no test case of the split is present in {src_p}: datalist 'test' is empty", stacklevel=2)
        metadata = _metadata(source, src_p, rule, sp, sorted(header_spacings), seed, random, labeled, fraction, val)
        metadata.update({"missing": {"training": missing_train, "test": missing_test}, "unlisted": unlisted})
        metadata["arguments"] = arguments
        datalist = build_datalist(split, test_ids, image_rel, label_rel, metadata, skipped=skipped)
        write_datalist(datalist, tmp / DATALIST_NAME)
    c = datalist["dycon"]["counts"]
    _info(
        f"wrote {dst_p}: {c['training']} labeled, {c['unlabeled']} unlabeled, {c['validation']} validation, "
        f"{c['test']} test"
    )
    for case_id, reason in skipped.items():
        _info(f"skipped (--skip-incomplete) {case_id}: {reason}")
    return dst_p / DATALIST_NAME


def _convert_case(
    source: _Source, case_id: str, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """(image, label {0, 1}, RAS affine, the header's voxel size or None) of one case; DatasetError if defective."""
    files = source.files.get(case_id, {})
    folder = source.case_root / case_id
    if source.layout == "h5":
        if files.get("h5") is None:
            raise DatasetError(f"{folder}: case folder without {H5_NAME}")
        image, label = load_h5_case(files["h5"])  # type: ignore[arg-type]
        return image, label, h5_affine(spacing), None
    if files.get("image") is None and files.get("label") is None:
        raise DatasetError(f"{folder}: empty case folder (no {IMAGE_NRRD}, no {LABEL_NRRD})")
    image, label, header = load_raw_case(
        files.get("image") or folder / IMAGE_NRRD, files.get("label") or folder / LABEL_NRRD
    )
    _space, directions, _origin = _nrrd_geometry(folder / IMAGE_NRRD, header, 3)
    header_sp = tuple(round(float(v), 6) for v in np.linalg.norm(directions, axis=1))
    return image, label, nrrd_affine(header, spacing), header_sp


def _metadata(
    source: _Source,
    src_p: Path,
    rule: str,
    sp: tuple[float, float, float],
    header_spacings: list[tuple[float, ...]],
    seed: int,
    random: bool,
    labeled: int | None,
    fraction: float | None,
    val: int,
) -> dict[str, Any]:
    if source.layout == "h5":
        conversion = (
            "h5 release (made by its authors as UA-MT's la_heart_processing.py: z-score of the whole volume, then x/y "
            "crop around the label with a random 10-20 voxel margin, z kept whole); arrays copied unchanged"
        )
        geometry = (
            "the h5 stores no geometry: affine diag(-s, -s, s) (origin 0), what the raw challenge nrrd's LPS header "
            "with axis-aligned directions gives after LPS -> RAS (the h5 arrays are the nrrd arrays in index order)"
        )
        crop = (
            "yes, by the release's authors: every h5 volume (test cases included) is cropped in x/y around its "
            "ground-truth label; the bundle's label-free default applied to it still sees these label-cropped volumes"
        )
    else:
        conversion = (
            "none: the nrrd arrays are written unchanged (values, dtype, index order); label 255 -> 1. No crop, no "
            "intensity change (the bundle's chain does orientation and normalisation; label_crop is a chain option)"
        )
        geometry = (
            "affine from each nrrd header as MONAI's NrrdReader reads it (space directions transposed, space origin, "
            "LPS -> RAS: x and y negated), with the directions' lengths set to the spacing below"
        )
        crop = "no"
    note = (
        f"{CHALLENGE_SPACING} mm isotropic is the challenge's value; the h5 files store no spacing and the raw "
        "nrrd headers are not trusted (they read 1 mm)"
        + ("" if sp == (CHALLENGE_SPACING,) * 3 else f"; overridden by the user to {list(sp)} mm")
    )
    return {
        "dataset": "LA",
        "source": {
            "layout": source.layout,
            "path": str(src_p),
            "case_root": str(source.case_root),
            "train_list": str(source.train_list) if source.train_list else None,
            "test_list": str(source.test_list) if source.test_list else None,
            "split_rule": rule,
        },
        "spacing": list(sp),
        "spacing_note": note,
        "header_spacings": [list(h) for h in header_spacings],
        "geometry": geometry,
        "axes": "array axes as in the h5 / nrrd index order (x, y, z)",
        "preprocessing": conversion,
        "crop_uses_label": crop,
        "labeled_rule": (f"seeded random draw (seed {seed})" if random else "first N of the training list")
        + (f"; default N = {DEFAULT_LABELED} (10% of 80)" if labeled is None and fraction is None else ""),
        "validation_rule": (
            "" if not val else (f"seeded random draw (seed {seed})" if random else "last N of the training list")
        ),
    }


# ------------------------------------------------------------------------------------------------ synthetic

_ID_CHARS = np.array(list(string.ascii_uppercase + string.digits))


def _synth_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        i = "".join(rng.choice(_ID_CHARS, size=20))
        if i not in ids:
            ids.append(i)
    return ids


def _synth_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One fake LGE-MRI volume (uint8) and atrium mask (uint8 {0, 255}), arrays (x, y, z)."""
    from scipy.ndimage import gaussian_filter

    sx, sy, sz = shape
    x, y, z = np.meshgrid(np.arange(sx), np.arange(sy), np.arange(sz), indexing="ij", sparse=True)
    img = np.full(shape, 12.0)
    # body (torso cross-section), constant along z, with a darker lung-like region on each side
    body = ((x - sx / 2) / (0.46 * sx)) ** 2 + ((y - sy / 2) / (0.40 * sy)) ** 2 <= 1
    img = img + 45.0 * body
    for side in (-1, 1):
        lung = ((x - sx / 2 - side * 0.24 * sx) / (0.14 * sx)) ** 2 + ((y - sy / 2) / (0.22 * sy)) ** 2 <= 1
        img = img - 30.0 * lung
    # a bright vessel (aorta-like tube along z) and a spine-like blob at the back
    ax, ay = sx * rng.uniform(0.55, 0.62), sy * rng.uniform(0.35, 0.42)
    img = img + 70.0 * (((x - ax) ** 2 + (y - ay) ** 2) <= (0.06 * min(sx, sy)) ** 2)
    img = img + 55.0 * ((((x - sx / 2) / (0.07 * sx)) ** 2 + ((y - 0.82 * sy) / (0.06 * sy)) ** 2) <= 1)
    # the atrium: an ellipsoid plus an appendage lobe, bright (contrast-enhanced blood pool)
    c = np.array([rng.uniform(0.42, 0.58) * sx, rng.uniform(0.45, 0.58) * sy, rng.uniform(0.42, 0.58) * sz])
    r = np.array([rng.uniform(0.10, 0.15) * sx, rng.uniform(0.10, 0.15) * sy, rng.uniform(0.20, 0.28) * sz])
    atrium = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
    lobe_c = c + np.array([0.8 * r[0], -0.6 * r[1], 0.3 * r[2]]) * rng.choice([-1, 1], size=3)
    lobe = ((x - lobe_c[0]) / (0.45 * r[0])) ** 2 + ((y - lobe_c[1]) / (0.4 * r[1])) ** 2 + (
        (z - lobe_c[2]) / (0.5 * r[2])
    ) ** 2 <= 1
    mask = atrium | lobe
    img = img + 95.0 * mask
    img = gaussian_filter(img, sigma=1.0)
    # Rician-like noise and a slow intensity bias field (surface-coil shading)
    bias = 1.0 + 0.15 * np.cos(np.pi * x / sx + rng.uniform(0, np.pi)) * np.cos(np.pi * y / sy)
    noise_r, noise_i = rng.normal(0, 8.0, shape), rng.normal(0, 8.0, shape)
    img = np.sqrt((img * bias + noise_r) ** 2 + noise_i**2)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), (mask.astype(np.uint8) * 255)


def _nrrd_header(shape: tuple[int, int, int]) -> dict[str, Any]:
    # Mirrors the challenge files as far as public surveys describe them: unsigned char, 3-D, LPS space, unit
    # (1 mm) space directions although the true spacing is 0.625 mm, gzip encoding.
    return {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": np.array(shape),
        "space directions": np.eye(3),
        "kinds": ["domain", "domain", "domain"],
        "endian": "little",
        "encoding": "gzip",
        "space origin": np.zeros(3),
    }


def _shape3(shape: Any) -> tuple[int, int, int]:
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) and s >= 8 for s in shape)):
        raise DatasetError(f"shape must be three integers >= 8, got {shape!r}")
    return tuple(shape)  # type: ignore[return-value]


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def synth_la(
    dst: str | os.PathLike[str], n_train: int = 8, n_test: int = 4, shape: Sequence[int] = (64, 64, 40), seed: int = 0
) -> Path:
    """Write a fake RAW challenge release: ``dst/<id>/lgemri.nrrd`` (uint8), ``dst/<id>/laendo.nrrd`` (uint8
    {0, 255}), ``dst/train.list`` (first ``n_train`` ids) and ``dst/test.list``. Ids are 20-character upper-case
    alphanumeric like the real ones; nrrd headers as the real ones (1 mm space directions). Deterministic for a
    given seed (same NumPy). Returns ``dst``.
    """
    shp = _shape3(tuple(shape))
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DatasetError(f"{name} must be a non-negative integer, got {v!r}")
    import nrrd

    dst_p = new_synthetic_folder(dst)
    rng = np.random.default_rng(seed)
    ids = _synth_ids(rng, n_train + n_test)
    with atomic_dataset(dst_p) as tmp:
        for case_id in ids:
            image, label = _synth_case(rng, shp)
            (tmp / case_id).mkdir()
            nrrd.write(str(tmp / case_id / IMAGE_NRRD), image, _nrrd_header(shp))
            nrrd.write(str(tmp / case_id / LABEL_NRRD), label, _nrrd_header(shp))
        _write_list(tmp / "train.list", ids[:n_train])
        _write_list(tmp / "test.list", ids[n_train:])
    return dst_p


def synth_la_h5(
    dst: str | os.PathLike[str],
    n_train: int = 8,
    n_test: int = 4,
    shape: Sequence[int] = (64, 64, 40),
    seed: int = 0,
    write_test: bool = True,
) -> Path:
    """Write a fake h5 release: ``dst/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (``image`` float32 z-scored and
    cropped exactly as UA-MT does, ``label`` uint8 {0, 1}, gzip-compressed like the real files) plus
    ``dst/train.list`` / ``dst/test.list``. Same cases as :func:`synth_la` with the same arguments.
    ``write_test=False`` leaves the test cases out of the folder (as in the shared 24-case subset). Returns ``dst``.
    """
    import h5py

    shp = _shape3(tuple(shape))
    dst_p = new_synthetic_folder(dst)
    rng = np.random.default_rng(seed)
    ids = _synth_ids(rng, n_train + n_test)
    with atomic_dataset(dst_p) as tmp:
        for k, case_id in enumerate(ids):
            raw_image, raw_label = _synth_case(rng, shp)
            if k >= n_train and not write_test:
                continue
            image, label = ua_mt_preprocess(raw_image, raw_label, case_id)
            case = tmp / H5_FOLDER / case_id
            case.mkdir(parents=True)
            with h5py.File(case / H5_NAME, "w") as f:
                f.create_dataset("image", data=image, compression="gzip")
                f.create_dataset("label", data=label, compression="gzip")
        _write_list(tmp / "train.list", ids[:n_train])
        _write_list(tmp / "test.list", ids[n_train:])
    return dst_p


# python -m scripts.data.la in a bundle folder (custom.data.la here), the options of dycon prepare la
if __name__ == "__main__":
    prepare_main(prepare_la, __spec__.name)
