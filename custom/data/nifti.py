"""Writing the prepared NIfTI files and starting a synthetic release: shared by the four preparations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datalist import DatasetError

__all__ = ["write_nifti", "new_synthetic_folder"]


def write_nifti(
    array: np.ndarray, path: Path, affine: np.ndarray, dtype: type, qform_code: int = 1, sform_code: int = 1
) -> None:
    """Write ``array`` as ``dtype`` with ``affine`` in both qform and sform (mm units). nibabel gzips
    deterministically (mtime 0), so a rerun gives identical bytes."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))


def new_synthetic_folder(dst: str | os.PathLike[str]) -> Path:
    """The absolute destination of a synthetic release; refuses an existing non-empty folder."""
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    if os.path.lexists(dst_p) and not (dst_p.is_dir() and not any(dst_p.iterdir())):
        raise DatasetError(f"{dst_p} exists and is not empty; the synthetic generator only writes a new folder")
    return dst_p
