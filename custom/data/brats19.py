"""BraTS 2019 (brain tumour, multi-parametric MRI): conversion and split of the raw release for semi-supervised
whole-tumour segmentation, and a synthetic stand-in of the raw release.

``prepare_brats19`` reads the raw training release::

    MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz

(folder and file names matched case-insensitively, ``.nii.gz`` or ``.nii``). It CONVERTS AND SPLITS, nothing more:
the images keep the raw voxel values, shape, axis order and affine (no crop, no clip, no normalisation, no
reorientation). All preprocessing the model depends on (RAS orientation, 1 mm spacing, the brain bounding-box crop,
the 99.9th-percentile clip and the z-score over brain voxels) is in the bundle's transform chain
(``preprocessing_transforms`` in ``bundles/dycon_brats19/configs/train.yaml`` and ``inference.yaml``), so a raw
``*_flair.nii.gz`` is a valid inference input.

Every case of the split lists that is present is checked (all four modalities and the segmentation, in both
modes): every file present, readable, non-empty and 3-D; the five on the same grid (shape and affine); images finite
and not all zero; segmentation values in {0, 1, 2, 4} (1 necrotic / non-enhancing core, 2 edema, 4 enhancing; the
release has no 3); no tumour voxel outside the bounding box of the brain (voxels > 0 in any input channel: the box
the chain crops to). A case that fails is a DatasetError naming it and nothing is written, unless
``skip_incomplete=True`` (``--skip-incomplete``): then it is left out, printed and recorded in ``dycon.skipped``.
Ids of the split lists that are absent from the release are not an error (``dycon.missing``; a subset of the
release is allowed).

Output (``dst``)::

    images/<id>.nii.gz    the raw image values and affine: 3-D (X, Y, Z) FLAIR for ``modalities="flair"``; 4-D
                          (X, Y, Z, 4) for ``"all"`` with the channels in the order of ``CHANNELS_ALL`` = [flair, t1,
                          t1ce, t2] (``dycon.channels``), the four raw files stacked
    labels/<id>.nii.gz    uint8 {0, 1} whole tumour (label > 0 -> 1) on the same grid; written for every case
                          (unlabeled ones too, for pseudo-label evaluation), but only referenced by the training /
                          validation / test entries of the datalist
    datalist.json         training (labeled: the first N present ids of train.txt) / unlabeled (the rest of
                          train.txt) / validation (val.txt: checkpoint selection only) / test (test.txt: final
                          evaluation only); see :mod:`custom.data.datalist`

The official 250 / 25 / 60 split lists ship as package data (``custom/data/splits/BraTS2019/{train,val,test}.txt``);
``splits=DIR`` overrides them. The released DyCON code transposes axes in training but not in its final test and
tests on val.txt: neither happens here.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
import zlib
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
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
    present_in_lists,
    read_id_list,
    split_training,
    write_datalist,
)
from .nifti import write_nifti

__all__ = [
    "CHANNELS_ALL",
    "DEFAULT_LABELED",
    "LABEL_VALUES",
    "MODALITIES",
    "RELEASE_FOLDER",
    "check_case",
    "default_synth_ids",
    "find_release",
    "likely_grade",
    "load_case",
    "official_splits",
    "prepare_brats19",
    "synth_brats19",
]

#: Folder name of the raw training release.
RELEASE_FOLDER = "MICCAI_BraTS_2019_Data_Training"
GRADES = ("HGG", "LGG")
#: The four MRI sequences of the release (file suffixes).
MODALITIES = ("t1", "t1ce", "t2", "flair")
#: Channel order of the 4-channel option (FLAIR first, so channel 0 is the paper's single input).
CHANNELS_ALL = ("flair", "t1", "t1ce", "t2")
#: Label values of the release: 0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing (no 3).
LABEL_VALUES = (0, 1, 2, 4)
#: 10 % of the 250 official training cases (50 = 20 %).
DEFAULT_LABELED = 25
SPLIT_FILES = {"training": "train.txt", "validation": "val.txt", "test": "test.txt"}
_PACKAGE_SPLITS = ("splits", "BraTS2019")
_EXTENSIONS = (".nii.gz", ".nii")  # preference order when both exist
_AFFINE_ATOL = 1e-3  # mm
_PROGRESS_EVERY = 25


def _info(msg: str) -> None:
    print(f"dycon prepare brats19: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- splits


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def official_splits(splits: str | os.PathLike[str] | None = None) -> tuple[dict[str, list[str]], str]:
    """The split lists ``{"training": train.txt, "validation": val.txt, "test": test.txt}`` and where they came from.

    ``splits=None`` reads the official lists shipped as package data; otherwise ``splits`` is a folder holding
    ``train.txt``, ``val.txt`` and ``test.txt`` (names matched case-insensitively; one id per line). All three are
    required (an empty file is allowed) and must be disjoint.
    """
    lists: dict[str, list[str]] = {}
    if splits is None:
        origin = "package data custom/data/splits/BraTS2019 (official 250 / 25 / 60 split)"
        root = resources.files(__package__).joinpath(*_PACKAGE_SPLITS)  # custom.data, or scripts.data in a bundle
        with ExitStack() as stack:
            for key, name in SPLIT_FILES.items():
                path = stack.enter_context(resources.as_file(root.joinpath(name)))
                lists[key] = read_id_list(path)
    else:
        folder = Path(os.fspath(splits)).expanduser().resolve()
        if not folder.is_dir():
            raise DatasetError(f"splits folder {folder} does not exist (it must hold train.txt, val.txt, test.txt)")
        origin = str(folder)
        for key, name in SPLIT_FILES.items():
            path = _child(folder, name, want_dir=False)
            if path is None:
                raise DatasetError(f"splits folder {folder} has no {name} (train.txt, val.txt and test.txt needed)")
            lists[key] = read_id_list(path)
    owner: dict[str, str] = {}
    clashes = []
    for key, ids in lists.items():
        for i in ids:
            if i in owner:
                clashes.append(f"{i} in {SPLIT_FILES[owner[i]]} and {SPLIT_FILES[key]}")
            owner[i] = key
    if clashes:
        shown = "; ".join(clashes[:5]) + ("; ..." if len(clashes) > 5 else "")
        raise DatasetError(f"split lists overlap ({origin}): {shown}")
    return lists, origin


# ------------------------------------------------------------------------------------------- source layout


def _child(folder: Path, name: str, want_dir: bool) -> Path | None:
    """``folder/name`` matched case-insensitively (exact spelling preferred)."""
    exact = folder / name
    if exact.is_dir() if want_dir else exact.is_file():
        return exact
    low = name.lower()
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return None
    for p in children:
        if p.name.lower() == low and (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


def _grade_dirs(folder: Path) -> dict[str, Path]:
    found = {}
    for grade in GRADES:
        d = _child(folder, grade, want_dir=True)
        if d is not None:
            found[grade] = d
    return found


@dataclass
class _Release:
    case_root: Path  # the folder holding HGG / LGG
    cases: dict[str, tuple[str, Path]]  # id -> (grade, case folder)


def find_release(src: str | os.PathLike[str]) -> _Release:
    """Locate the case folders of the raw release under ``src``.

    ``src`` may be the folder holding ``MICCAI_BraTS_2019_Data_Training``, that folder itself, or any folder holding
    ``HGG`` and/or ``LGG`` directly (names matched case-insensitively). A case is a sub-folder of HGG or LGG; its
    name is the case id. FileNotFoundError when nothing is found; DatasetError when a case is in both HGG and LGG
    or ``src`` holds several candidate releases.
    """
    src = Path(os.fspath(src))
    if not src.is_dir():
        raise FileNotFoundError(f"BraTS source folder {src} does not exist (or is not a folder)")
    root = src if _grade_dirs(src) else None
    if root is None:
        named = _child(src, RELEASE_FOLDER, want_dir=True)
        if named is not None and _grade_dirs(named):
            root = named
        else:
            candidates = sorted(p for p in src.iterdir() if p.is_dir() and _grade_dirs(p))
            if len(candidates) > 1:
                raise DatasetError(
                    f"{src} holds several folders with HGG/LGG inside ({', '.join(p.name for p in candidates)}); "
                    f"point src at the one to use (e.g. {RELEASE_FOLDER})"
                )
            root = candidates[0] if candidates else None
    if root is None:
        raise FileNotFoundError(
            f"no BraTS 2019 release found under {src}: expected {RELEASE_FOLDER}/{{HGG,LGG}}/<id>/ in src, or "
            "{HGG,LGG}/<id>/ directly in src"
        )
    cases: dict[str, tuple[str, Path]] = {}
    for grade, gdir in _grade_dirs(root).items():
        for case in sorted(p for p in gdir.iterdir() if p.is_dir()):
            if case.name in cases:
                raise DatasetError(f"case {case.name} is in both {cases[case.name][1]} and {case}")
            cases[case.name] = (grade, case)
    return _Release(case_root=root, cases=cases)


def _case_files(case_dir: Path, case_id: str) -> dict[str, Path]:
    """``{modality or "seg": path}`` for one case folder; DatasetError naming the expected file if one is missing."""
    by_name: dict[str, Path] = {}
    for p in sorted(case_dir.iterdir()):
        if p.is_file():
            by_name.setdefault(p.name.lower(), p)
    if not by_name:
        raise DatasetError(f"{case_dir}: empty case folder (no file)")
    files: dict[str, Path] = {}
    for kind in (*MODALITIES, "seg"):
        stem = f"{case_id}_{kind}".lower()
        hits = [by_name[stem + ext] for ext in _EXTENSIONS if stem + ext in by_name]
        if not hits:
            raise DatasetError(
                f"{case_dir / f'{case_id}_{kind}.nii.gz'}: missing {'segmentation' if kind == 'seg' else kind} "
                f"file (each case needs {', '.join(f'{case_id}_{k}.nii.gz' for k in (*MODALITIES, 'seg'))})"
            )
        files[kind] = hits[0]
    return files


# ------------------------------------------------------------------------------------------------ reading


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error ...
        raise DatasetError(f"{path}: cannot read NIfTI file ({type(err).__name__}: {err})") from err
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) written by some tools
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DatasetError(f"{path}: unsupported voxel type {data.dtype}")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_case(files: Mapping[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Read and validate one raw case: ``({modality: image}, seg, affine)``, arrays in the files' index order.

    DatasetError naming the file if a file is unreadable or not 3-D, shapes or affines differ from the
    segmentation's, an image has NaN/Inf voxels, or the segmentation has values outside {0, 1, 2, 4}.
    """
    seg_path = Path(files["seg"])
    seg, affine = _read_nifti(seg_path)
    if np.issubdtype(seg.dtype, np.floating) and not np.isfinite(seg).all():
        raise DatasetError(f"{seg_path}: segmentation has NaN/Inf voxels")
    values = np.unique(seg).tolist()
    bad = [v for v in values if v not in LABEL_VALUES]
    if bad:
        shown = [int(v) if float(v).is_integer() else v for v in bad[:10]]
        raise DatasetError(
            f"{seg_path}: label values {shown} outside {{0, 1, 2, 4}} (BraTS: 1 necrotic/non-enhancing core, "
            "2 edema, 4 enhancing; there is no label 3)"
        )
    images: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        path = Path(files[mod])
        data, aff = _read_nifti(path)
        if data.shape != seg.shape:
            raise DatasetError(f"{path}: image shape {data.shape} != segmentation shape {seg.shape} ({seg_path})")
        if not np.allclose(aff, affine, rtol=0, atol=_AFFINE_ATOL):
            raise DatasetError(
                f"{path}: affine differs from the segmentation's ({seg_path}); the release is co-registered, so "
                f"this file does not belong to the case:\n{np.array2string(aff, precision=4)}\nvs\n"
                f"{np.array2string(affine, precision=4)}"
            )
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            n = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise DatasetError(f"{path}: image has {n} NaN/Inf voxel(s)")
        images[mod] = data
    return images, seg, affine


# ------------------------------------------------------------------------------------------------ checking


def _brain_box(image: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Bounding box ``(start, stop)`` (stop exclusive) of the voxels > 0 of a 3-D mask or image; None if none is."""
    nz = np.nonzero(image > 0)
    if nz[0].size == 0:
        return None
    return tuple(int(a.min()) for a in nz), tuple(int(a.max()) + 1 for a in nz)


def check_case(
    images: Mapping[str, np.ndarray],
    seg: np.ndarray,
    channels: Sequence[str],
    files: Mapping[str, Path | str] | None = None,
) -> dict[str, Any]:
    """The checks of a loaded case that concern the model's input (``channels``); returns facts for the datalist.

    The bundle's chain crops to the bounding box of the voxels > 0 in any input channel (``CropForegroundd``), so
    a case whose input channels have no such voxel, or whose tumour reaches outside that box, is a DatasetError
    naming the files (``files``: ``{modality or "seg": path}``) (the crop would drop tumour voxels).
    """
    files = files or {}
    seg_path = files.get("seg", "segmentation")
    brain = np.zeros(seg.shape, dtype=bool)
    for ch in channels:
        brain |= np.asarray(images[ch]) > 0
    box = _brain_box(brain)
    if box is None:
        named = ", ".join(str(files.get(ch, ch)) for ch in channels)
        raise DatasetError(f"{named}: the input has no voxel > 0 (no brain)")
    start, stop = box
    tumour = np.asarray(seg) > 0
    inside = tuple(slice(a, b) for a, b in zip(start, stop))
    total = int(np.count_nonzero(tumour))
    kept = int(np.count_nonzero(tumour[inside]))
    if kept != total:
        raise DatasetError(
            f"{seg_path}: {total - kept} tumour voxel(s) lie outside the brain bounding box {list(start)}-"
            f"{list(stop)} (voxels where every input channel is 0); the bundle's brain crop would drop them"
        )
    return {
        "source_shape": [int(s) for s in seg.shape],
        "brain_box": [list(start), list(stop)],
        "brain_voxels": int(np.count_nonzero(brain)),
        "tumour_voxels": total,
    }


def _load_checked(
    case_dir: Path, case_id: str, channels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read, check and convert one case: ``(image, label, affine, info)`` with the raw voxel values (3-D, or
    (X, Y, Z, C) stacked in ``channels`` order), the uint8 whole-tumour label and the raw affine."""
    files = _case_files(case_dir, case_id)
    images, seg, affine = load_case(files)
    info = check_case(images, seg, channels, files)
    if len(channels) == 1:
        image = images[channels[0]]
    else:
        dtype = np.result_type(*(images[c].dtype for c in channels))
        image = np.stack([np.asarray(images[c], dtype=dtype) for c in channels], axis=-1)
    return image, (np.asarray(seg) > 0).astype(np.uint8), affine, info


# -------------------------------------------------------------------------------------------------- prepare


def _modalities(modalities: Any) -> tuple[str, list[str]]:
    name = modalities.lower() if isinstance(modalities, str) else modalities
    if name == "flair":
        return "flair", ["flair"]
    if name == "all":
        return "all", list(CHANNELS_ALL)
    raise DatasetError(f"modalities must be 'flair' (the paper's setting) or 'all' (4 channels), got {modalities!r}")


def prepare_brats19(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    modalities: str = "flair",
    splits: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    skip_incomplete: bool = False,
) -> Path:
    """Convert and split BraTS 2019 whole-tumour segmentation from the raw release ``src`` into ``dst``; return the
    datalist.

    Args:
        src: the folder holding ``MICCAI_BraTS_2019_Data_Training``, that folder itself, or a folder holding
            ``HGG``/``LGG`` directly. Never modified.
        dst: output folder, written atomically (``<dst>.partial-<pid>`` renamed at the end).
        labeled: number of labeled cases: the FIRST ones of train.txt that are present (default 25 = 10 % of 250
            when neither ``labeled`` nor ``fraction`` is given). Never clipped: asking more than exist is an error.
        fraction: share of the present train.txt cases to label instead of ``labeled`` (0.1 -> 25 of 250).
        random: draw the labeled cases with ``seed`` instead of taking the first ones.
        seed: seed of that draw.
        modalities: ``"flair"`` (the paper's setting, 3-D images) or ``"all"`` (4-D images, channels
            [flair, t1, t1ce, t2]).
        splits: folder with train.txt / val.txt / test.txt replacing the official lists shipped with the package.
        overwrite: replace a dataset previously written here with other arguments (a rerun with the SAME
            arguments returns at once; with ``overwrite=True`` it is rebuilt). A ``dst`` that is not a dataset
            written by us is never touched.
        skip_incomplete: leave out listed cases that fail a check (listed on stderr and in ``dycon.skipped``)
            instead of failing.

    Ids of the lists that are absent from ``src`` are skipped and reported (stderr and ``dycon.missing``); cases of
    the release that are in no list are reported (``dycon.unlisted``) and ignored. A listed case that is present but
    fails a check (missing or empty modality / segmentation file, empty case folder, unreadable file, not 3-D,
    shape or affine mismatch between its files, NaN/Inf, label value outside {0, 1, 2, 4}, no brain, tumour outside
    the brain box) is a DatasetError naming the case and the file, and nothing is left at ``dst``, unless
    ``skip_incomplete``. The images are written with their raw values and affine (see the module docstring).
    """
    src_p = Path(os.fspath(src)).expanduser().resolve()
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    check_split_arguments(labeled, fraction, random, overwrite, skip_incomplete)
    mode, channels = _modalities(modalities)
    lists, splits_origin = official_splits(splits)
    release = find_release(src_p)
    check_outside(src_p, dst_p)

    present = release.cases
    found, missing, unlisted = present_in_lists(lists, present)
    split_kwargs = {"labeled": labeled, "fraction": fraction, "random": random, "seed": seed, "val": 0}
    split_training(found["training"], default_labeled=DEFAULT_LABELED, **split_kwargs)  # argument errors first

    arguments = {
        "src": str(src_p),
        "labeled": labeled,
        "fraction": fraction,
        "random": random,
        "seed": seed,
        "modalities": mode,
        "splits": None if splits is None else splits_origin,
        "skip_incomplete": bool(skip_incomplete),
    }
    if check_destination(dst_p, arguments, overwrite=overwrite):
        _info(f"{dst_p} is already prepared with the same arguments; nothing to do (overwrite=True rebuilds it)")
        return dst_p / DATALIST_NAME

    for key, ids in missing.items():
        if ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            _info(
                f"{len(ids)} of {len(lists[key])} {SPLIT_FILES[key]} ids are not in {release.case_root} and "
                f"were skipped: {shown}"
            )
    if unlisted:
        shown = ", ".join(unlisted[:10]) + (", ..." if len(unlisted) > 10 else "")
        _info(f"{len(unlisted)} case(s) in {release.case_root} are in no split list and were ignored: {shown}")

    image_rel = lambda i: f"images/{i}.nii.gz"  # noqa: E731
    label_rel = lambda i: f"labels/{i}.nii.gz"  # noqa: E731
    listed = [i for key in ("training", "validation", "test") for i in found[key]]
    with atomic_dataset(dst_p) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        problems: dict[str, str] = {}
        infos: dict[str, dict[str, Any]] = {}
        for k, case_id in enumerate(listed, 1):
            grade, case_dir = present[case_id]
            try:
                image, label, affine, info = _load_checked(case_dir, case_id, channels)
            except DatasetError as err:
                problems[case_id] = str(err)
                continue
            write_nifti(image, tmp / image_rel(case_id), affine, image.dtype.type)
            write_nifti(label, tmp / label_rel(case_id), affine, np.uint8)
            infos[case_id] = {"grade": grade, **info}
            if k % _PROGRESS_EVERY == 0 and k < len(listed):
                _info(f"{k}/{len(listed)} cases")
        skipped = check_complete(problems, skip_incomplete, what=f"BraTS 2019 release {release.case_root}")
        for case_id, reason in skipped.items():
            _info(f"skipped {case_id}: {reason}")

        kept = {key: [i for i in ids if i not in skipped] for key, ids in found.items()}
        split = split_training(kept["training"], default_labeled=DEFAULT_LABELED, **split_kwargs)
        split = Split(labeled=split.labeled, unlabeled=split.unlabeled, validation=kept["validation"])
        test_ids = kept["test"]
        if not split.validation:
            warnings.warn(f"no usable val.txt case in {src_p}: datalist 'validation' is empty", stacklevel=2)
        if not test_ids:
            warnings.warn(f"no usable test.txt case in {src_p}: datalist 'test' is empty", stacklevel=2)
        cases = split.labeled + split.unlabeled + split.validation + test_ids
        metadata: dict[str, Any] = {
            "dataset": "BraTS2019",
            "task": "whole tumour: labels 1 (necrotic/non-enhancing core), 2 (edema), 4 (enhancing) -> 1",
            "label_mapping": {"0": 0, "1": 1, "2": 1, "4": 1},
            "modalities": mode,
            "channels": channels,
            "in_channels": len(channels),
            "channel_axis": None if len(channels) == 1 else "last: images are (X, Y, Z, C)",
            "source": {
                "path": str(src_p),
                "case_root": str(release.case_root),
                "grades": {g: sum(1 for i in cases if present[i][0] == g) for g in GRADES},
            },
            "splits": {
                "origin": splits_origin,
                "files": {SPLIT_FILES[k]: {"ids": len(v), "sha256": _digest(v)} for k, v in lists.items()},
                "rule": "train.txt -> training (labeled) + unlabeled; val.txt -> validation (checkpoint "
                "selection only); test.txt -> test (final evaluation only)",
            },
            "labeled_rule": (f"seeded random draw (seed {seed})" if random else "first N present ids of train.txt")
            + (f"; default N = {DEFAULT_LABELED} (10% of 250)" if labeled is None and fraction is None else ""),
            "preprocessing": "none: images keep the raw voxel values, shape, axis order and affine "
            f"({'FLAIR' if mode == 'flair' else 'the four modalities stacked as channels'}); label > 0 -> 1. "
            "Orientation, spacing, brain crop, clip and z-score are in the bundle's transform chain",
            "brain_box": "bounding box of the voxels > 0 in any input channel (what the bundle's CropForegroundd "
            "crops to); a tumour voxel outside it is an error",
            "cases": {i: infos[i] for i in cases},
            "missing": missing,
            "unlisted": unlisted,
            "arguments": arguments,
        }
        datalist = build_datalist(split, test_ids, image_rel, label_rel, metadata, skipped=skipped)
        write_datalist(datalist, tmp / DATALIST_NAME)
    c = datalist["dycon"]["counts"]
    _info(
        f"wrote {dst_p} ({mode}): {c['training']} labeled, {c['unlabeled']} unlabeled, {c['validation']} "
        f"validation, {c['test']} test" + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else "")
    )
    return dst_p / DATALIST_NAME


# ------------------------------------------------------------------------------------------------ synthetic

# Institutions whose BraTS 2019 training cases are LGG (approximately: TCIA09/10/12/13 and ten BraTS 2013 cases).
# Only used to file synthetic cases under HGG or LGG; preparation never looks at the grade.
_LGG_SITES = ("TCIA09", "TCIA10", "TCIA12", "TCIA13")
_LGG_2013 = {0, 1, 6, 8, 9, 15, 16, 24, 28, 29}

# Mean intensities per tissue and modality (int16 scale of the release): CSF, GM, WM, edema, necrosis,
# non-enhancing core, enhancing tumour.
_TISSUES = ("csf", "gm", "wm", "edema", "necrosis", "core", "enhancing")
_INTENSITY = {
    "t1": (300, 650, 900, 560, 330, 500, 720),
    "t1ce": (320, 700, 950, 600, 300, 560, 1700),
    "t2": (1800, 1000, 700, 1500, 1900, 1300, 1200),
    "flair": (150, 520, 400, 950, 480, 820, 760),
}


def likely_grade(case_id: str) -> str:
    """HGG or LGG for a BraTS 2019 id, from its institution (an approximation used by the synthetic generator)."""
    parts = case_id.split("_")
    if len(parts) >= 3 and parts[1] in _LGG_SITES:
        return "LGG"
    if len(parts) >= 3 and parts[1] == "2013" and parts[2].isdigit() and int(parts[2]) in _LGG_2013:
        return "LGG"
    return "HGG"


def default_synth_ids(n_hgg: int = 4, n_lgg: int = 2) -> dict[str, str]:
    """Ids (-> grade) of the official lists for a synthetic release of ``n_hgg + n_lgg`` cases.

    With n >= 3 cases: ``max(1, round(n * 25 / 335))`` from val.txt, ``max(1, round(n * 60 / 335))`` from test.txt,
    the rest from train.txt (6 cases: 4 / 1 / 1); with fewer, all from train.txt. Each list is walked in order and
    an id is taken when its grade (:func:`likely_grade`) still has room, so the ids are the first ones of each list
    that fit and the split lists apply to the synthetic release unchanged.
    """
    lists, _ = official_splits()
    n = n_hgg + n_lgg
    n_val = max(1, round(n * 25 / 335)) if n >= 3 else 0
    n_test = max(1, round(n * 60 / 335)) if n >= 3 else 0
    quota = {"HGG": n_hgg, "LGG": n_lgg}
    chosen: dict[str, str] = {}
    for key, count in (("training", n - n_val - n_test), ("validation", n_val), ("test", n_test)):
        taken = 0
        for i in lists[key]:
            if taken == count:
                break
            g = likely_grade(i)
            if quota[g] > 0:
                chosen[i] = g
                quota[g] -= 1
                taken += 1
        if taken < count:
            raise DatasetError(f"{SPLIT_FILES[key]} has too few ids of the requested grades for {count} cases")
    return chosen


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _synth_case(
    rng: np.random.Generator, shape: tuple[int, int, int], grade: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four int16 modalities and the int16 segmentation {0, 1, 2, 4} of one fake case, arrays (x, y, z)."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    sx, sy, sz = shape
    grid = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij", sparse=True)
    smooth = _smooth_field(rng, shape, sigma=max(min(shape) / 6.0, 1.0))

    def ellipsoid_distance(center, radii):
        return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)))

    # brain: a slightly irregular ellipsoid, longer along y (anterior-posterior), clear of the volume border
    bc = np.array([0.5 * sx, 0.5 * sy, 0.46 * sz]) + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    br = np.array([0.36 * sx, 0.41 * sy, 0.37 * sz]) * rng.uniform(0.93, 1.0, 3)
    d = ellipsoid_distance(bc, br) * (1.0 + 0.03 * smooth)
    brain = d <= 1.0
    tissue = np.full(shape, -1, dtype=np.int8)  # index into _TISSUES, -1 = background
    tissue[brain] = 2  # white matter
    tissue[brain & (d > 0.80)] = 1  # cortex
    tissue[brain & (d > 0.95)] = 0  # sulcal CSF
    for side in (-1, 1):  # lateral ventricles
        vc = bc + np.array([side * 0.12 * br[0], 0.05 * br[1], 0.1 * br[2]])
        tissue[brain & (ellipsoid_distance(vc, br * np.array([0.1, 0.35, 0.18])) <= 1)] = 0

    # tumour in one hemisphere, wholly inside the brain: edema (2) > core (1) > enhancing rim (4) > necrosis (1)
    side = rng.choice([-1, 1])
    tc = bc + br * np.array([side * rng.uniform(0.2, 0.35), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3)])
    tr = br * rng.uniform(0.3, 0.4, 3)
    dt = ellipsoid_distance(tc, tr) * (1.0 + 0.12 * smooth)
    whole = (dt <= 1.0) & binary_erosion(brain, iterations=2)
    core_c = tc + tr * rng.uniform(-0.1, 0.1, 3)
    dc = ellipsoid_distance(core_c, tr * rng.uniform(0.5, 0.6, 3))
    core = (dc <= 1.0) & binary_erosion(whole)
    inner = binary_erosion(core)
    if grade == "HGG":  # ring enhancement around a necrotic centre
        enhancing = inner & (dc > 0.45)
        necrosis = inner & (dc <= 0.45)
    else:  # LGG: mostly non-enhancing, a small enhancing focus
        enhancing = inner & (dc <= 0.45)
        necrosis = np.zeros(shape, dtype=bool)
    if not enhancing.any() and inner.any():
        enhancing = inner
    if not enhancing.any() and core.any():  # tiny shapes: keep label 4 present
        enhancing = core & (dc == dc[core].min())
    seg = np.zeros(shape, dtype=np.int16)
    seg[whole] = 2
    seg[core] = 1
    seg[enhancing] = 4
    tissue[whole] = 3
    tissue[core] = 5
    tissue[necrosis] = 4
    tissue[enhancing] = 6

    bias = 1.0 + 0.08 * _smooth_field(rng, shape, sigma=max(min(shape) / 3.0, 1.0))
    hot = brain & (rng.random(shape) < 0.0005)  # a few bright outliers (vessels): what the 99.9 % clip is for
    images: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        means = np.array(_INTENSITY[mod], dtype=np.float64) * rng.uniform(0.85, 1.15)
        img = np.where(tissue >= 0, means[np.clip(tissue, 0, None)], 0.0)
        img = gaussian_filter(img, sigma=0.7) * bias
        sigma = 0.03 * means[2]
        img = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        img[hot] *= rng.uniform(2.0, 4.0)
        img = np.where(brain, np.maximum(np.rint(img), 1.0), 0.0)  # zero background, non-zero brain
        images[mod] = np.clip(img, 0, np.iinfo(np.int16).max).astype(np.int16)
    return images, seg


def _synth_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Affine of the real files (1 mm, qform only): diag(-1, -1, 1) with origin (0, Y - 1, 0), e.g. 239 for 240."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = float(shape[1] - 1)
    return affine


def _write_raw_nifti(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=np.int16), None)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(None, code=0)
    nib.save(img, str(path))


def synth_brats19(
    dst: str | os.PathLike[str],
    n_hgg: int = 4,
    n_lgg: int = 2,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    ids: Sequence[str] | Mapping[str, str] | None = None,
) -> Path:
    """Write a fake raw BraTS 2019 training release under ``dst/MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<id>/``.

    Each case has ``<id>_{t1,t1ce,t2,flair,seg}.nii.gz``: int16, 1 mm, the real files' LPS-like qform
    (diag(-1, -1, 1), origin (0, Y - 1, 0)), a skull-stripped brain ellipsoid with an exact-zero background,
    MRI-like contrasts per modality (CSF / grey / white matter, bias field, Rician noise, a few bright outliers) and
    a tumour with nested labels: edema 2 around a core 1 holding the enhancing 4 (a rim around necrosis 1 for HGG,
    a small focus for LGG); no label 3. ``name_mapping.csv`` lists grade and id as in the release.

    Ids: by default ``n_hgg`` + ``n_lgg`` ids taken from the official lists (:func:`default_synth_ids`: 6 cases ->
    4 from train.txt, 1 from val.txt, 1 from test.txt), so the split lists apply; ``ids`` (a sequence, filed by
    :func:`likely_grade`, or a mapping id -> "HGG"/"LGG") replaces them, and then ``n_hgg``/``n_lgg`` are ignored.
    Deterministic for a seed: each case is drawn from ``default_rng([seed, crc32(id)])``. Returns ``dst``.
    """
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in shape)
    ):
        raise DatasetError(f"shape must be three integers >= 16, got {shape!r}")
    shp = (int(shape[0]), int(shape[1]), int(shape[2]))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    if ids is None:
        for name, v in (("n_hgg", n_hgg), ("n_lgg", n_lgg)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DatasetError(f"{name} must be a non-negative integer, got {v!r}")
        cases = default_synth_ids(n_hgg, n_lgg)
    elif isinstance(ids, Mapping):
        cases = {str(i): str(g) for i, g in ids.items()}
    elif isinstance(ids, str):
        raise DatasetError(f"ids must be a sequence of ids or a mapping id -> grade, got the string {ids!r}")
    else:
        cases = {str(i): likely_grade(str(i)) for i in ids}
        if len(cases) != len(list(ids)):
            raise DatasetError("ids has duplicates")
    bad = {i: g for i, g in cases.items() if g not in GRADES}
    if bad:
        raise DatasetError(f"grades must be HGG or LGG, got {bad}")
    bad_ids = [i for i in cases if not i or i != i.strip() or os.sep in i or i in (".", "..")]
    if bad_ids:
        raise DatasetError(f"invalid case ids: {bad_ids}")

    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    if os.path.lexists(dst_p) and not (dst_p.is_dir() and not any(dst_p.iterdir())):
        raise DatasetError(f"{dst_p} exists and is not empty; the synthetic generator only writes a new folder")
    affine = _synth_affine(shp)
    rows = ["Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID"]
    with atomic_dataset(dst_p) as tmp:
        root = tmp / RELEASE_FOLDER
        for grade in GRADES:
            (root / grade).mkdir(parents=True)
        for case_id, grade in cases.items():
            rng = np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])
            images, seg = _synth_case(rng, shp, grade)
            case = root / grade / case_id
            case.mkdir()
            for mod in MODALITIES:
                _write_raw_nifti(images[mod], case / f"{case_id}_{mod}.nii.gz", affine)
            _write_raw_nifti(seg, case / f"{case_id}_seg.nii.gz", affine)
            rows.append(f"{grade},NA,NA,NA,{case_id}")
        (root / "name_mapping.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dst_p


# python -m scripts.data.brats19 in a bundle folder (custom.data.brats19 here), the options of dycon prepare brats19
if __name__ == "__main__":
    prepare_main(prepare_brats19, __spec__.name)
