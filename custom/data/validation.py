"""Start-up checks: every file a bundle will read, opened before anything is written.

    initialize:  - $custom.data.check_dataset(@datalist, in_channels=@in_channels)          (train.yaml)
                 - "$custom.data.check_dataset(@datalist, keys=('test',), in_channels=@in_channels)"  (evaluate.yaml)
                 - $custom.data.check_inputs(@dataset#data, in_channels=@in_channels)        (inference.yaml)

Each problem raises :class:`~custom.data.datalist.DatasetError` (or ``FileNotFoundError`` for a missing datalist /
dataset folder) with ONE message naming the file and the problem, so a bad input fails in the ``initialize`` step
of the workflow, before the trainer / evaluator writes any output.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import DatasetError

__all__ = ["check_dataset", "check_inputs", "AFFINE_TOL"]

AFFINE_TOL = 1e-3


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _open(path: str) -> Any:
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as err:  # ImageFileError, EOFError, zlib / gzip errors, OSError ...
        raise DatasetError(f"{path}: unreadable or corrupt image file ({_reason(err)})") from err


def _data(img: Any, path: str) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:  # truncated data block, broken gzip stream
        raise DatasetError(f"{path}: unreadable or corrupt image data ({_reason(err)})") from err


def _channels(shape: Sequence[int]) -> int:
    return 1 if len(shape) == 3 else int(shape[3])


def _check_finite(data: np.ndarray, path: str) -> None:
    """DatasetError naming ``path`` when a floating-point image holds NaN or Inf voxels."""
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        if not np.isfinite(data).all():
            n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
            raise DatasetError(f"{path}: image has non-finite voxels ({n_nan} NaN, {n_inf} Inf)")


def _check_entry(
    entry: dict[str, Any], key: str, i: int, in_channels: int | None, label_values: Iterable[int] | None
) -> None:
    image_path = entry["image"]
    image = _open(image_path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (3, 4):
        raise DatasetError(f"{image_path}: image must be 3-D (X, Y, Z) or 4-D (X, Y, Z, C), got shape {shape}")
    if in_channels is not None and _channels(shape) != int(in_channels):
        raise DatasetError(
            f"{image_path}: image has {_channels(shape)} channel(s) (shape {shape}) but the bundle expects "
            f"in_channels={in_channels}"
        )
    _check_finite(_data(image, image_path), image_path)
    label_path = entry.get("label")
    if label_path is None:
        return
    label = _open(label_path)
    lshape = tuple(int(s) for s in label.shape)
    if lshape != shape[:3]:
        raise DatasetError(f"{label_path}: label shape {lshape} does not match the image's {shape[:3]} ({image_path})")
    if not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_TOL):
        diff = float(np.abs(np.asarray(label.affine) - np.asarray(image.affine)).max())
        raise DatasetError(
            f"{label_path}: label affine differs from the image's ({image_path}) by {diff:.4g} "
            f"(tolerance {AFFINE_TOL})"
        )
    if label_values is not None:
        values = np.unique(_data(label, label_path))
        allowed = np.asarray(sorted(label_values))
        if not np.isfinite(values.astype(np.float64)).all():
            raise DatasetError(f"{label_path}: label has non-finite values")
        bad = values[~np.isin(values, allowed)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:5].tolist()) + (" ..." if bad.size > 5 else "")
            raise DatasetError(
                f"{label_path}: label values {shown} outside the expected set "
                f"{{{', '.join(map(str, allowed.tolist()))}}}"
            )


def check_dataset(
    datalist: str | os.PathLike[str],
    keys: Sequence[str] = ("training", "unlabeled", "validation", "test"),
    in_channels: int | None = None,
    label_values: Iterable[int] | None = (0, 1),
) -> None:
    """Check every file referenced by the ``keys`` lists of ``datalist`` (see the module docstring).

    Raises:
        FileNotFoundError: the dataset folder or the datalist does not exist (the path is named).
        DatasetError: empty labeled (``training``) list when ``training`` is among ``keys``; an entry pointing to a
            missing file; a corrupt / unreadable image or label; image / label shape or affine (tolerance
            ``AFFINE_TOL``) mismatch; channel count != ``in_channels`` (3-D image = 1 channel, (X, Y, Z, C) = C);
            NaN / Inf image voxels; label values outside ``label_values`` (``None``: not checked).
    """
    from .loaders import load_split

    path = Path(datalist)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {path.parent} (prepare the dataset first, e.g. 'dycon prepare la')"
        )
    if isinstance(keys, str):
        keys = (keys,)
    for key in keys:
        entries = load_split(path, key)  # missing datalist / missing files / missing 'label' -> one clear error
        if key == "training" and not entries:
            raise DatasetError(f"{path}: the labeled 'training' list is empty: at least one labeled case is needed")
        for i, entry in enumerate(entries):
            _check_entry(entry, key, i, in_channels, None if key == "unlabeled" else label_values)


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def _input_shape(path: str) -> tuple[int, ...]:
    """Shape of one inference input as stored: NIfTI through nibabel (header and data), anything else MONAI reads
    (nrrd, mha, a DICOM series folder) through ``monai.transforms.LoadImage``."""
    if _is_nifti(path):
        img = _open(path)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) in (3, 4) and all(shape):
            _check_finite(_data(img, path), path)
        return shape
    from monai.transforms import LoadImage

    try:
        image = LoadImage(image_only=True)(path)
    except Exception as err:  # reader errors of every kind: no reader, truncated file, not an image
        raise DatasetError(f"{path}: unreadable or corrupt image file ({_reason(err)})") from err
    _check_finite(image.numpy(), path)
    return tuple(int(s) for s in image.shape)


def check_inputs(entries: Sequence[dict[str, Any]], in_channels: int | None = None) -> None:
    """Check every inference input before anything is written: readable (NIfTI, nrrd, mha, a DICOM series folder),
    3-D (or 4-D with channels last), not empty, finite, and with ``in_channels`` channels (a list of files per
    entry stacks one channel per 3-D file).

    Raises:
        FileNotFoundError: an input does not exist.
        DatasetError: one message naming the file and the problem.
    """
    for entry in entries:
        paths = entry["image"] if isinstance(entry["image"], (list, tuple)) else [entry["image"]]
        channels = 0
        for path in (str(p) for p in paths):
            if not os.path.exists(path):
                raise FileNotFoundError(f"inference input not found: {path}")
            shape = _input_shape(path)
            if len(shape) not in (3, 4):
                raise DatasetError(f"{path}: image must be 3-D (X, Y, Z) or 4-D (X, Y, Z, C), got shape {shape}")
            if not all(shape):
                raise DatasetError(f"{path}: image is empty (shape {shape})")
            channels += _channels(shape)
        if in_channels is not None and channels != int(in_channels):
            raise DatasetError(
                f"{', '.join(map(str, paths))}: input has {channels} channel(s) but the bundle expects "
                f"in_channels={in_channels}"
            )
