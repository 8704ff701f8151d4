"""Pancreas-NIH (TCIA Pancreas-CT, contrast CT): preparation and a synthetic stand-in of the raw release.

``prepare_pancreas`` CONVERTS and SPLITS either release into NIfTI files plus a ``datalist.json`` (see
:mod:`custom.data.datalist`); all preprocessing the model depends on (RAS, 1 mm resampling, HU window, crops,
z-score) is the bundle's transform chain:

* the raw TCIA release: ``Pancreas-CT/PANCREAS_XXXX/<study>/<series>/*.dcm`` (one DICOM series per case) and
  ``TCIA_pancreas_labels-02-05-2017/labelXXXX.nii.gz`` (folder names matched case-insensitively; ``src`` may be
  the folder holding both, e.g. the ``manifest-*`` folder of the NBIA retriever, or ``Pancreas-CT`` itself with
  the label folder inside or next to it). Each series is written in HU on its own grid (:func:`convert_case`);
  the datalist records ``dycon.chain = "raw"``;
* the circulating preprocessed h5 files ``PANCREAS_XXXX.h5`` (DyCON, CAML) or ``imageXXXX_norm.h5`` (MC-Net+'s
  ``Pancreas_h5``), keys ``image`` / ``label``, in ``src`` or one or two folders below it. Their authors already
  resampled, windowed, cropped and z-scored them: arrays are copied unchanged (label cast to uint8) with a 1 mm
  identity affine (the h5 stores neither spacing nor orientation), and ``dycon.chain = "h5_prepared"``: the
  bundle runs them with ``--prepared_h5 true`` (no HU window, no body crop), checked by :func:`check_chain`.

Output (``dst``)::

    images/<id>.nii.gz    int16 HU (raw release; float32 where a series has non-integer values) on the DICOM grid:
                          array (column, row, slice), affine = RAS world position of the voxels; float32 (h5)
    labels/<id>.nii.gz    uint8 {0, 1} on the same grid and axis order; written for every case (unlabeled ones
                          too), referenced only by the training/validation/test entries of the datalist
    datalist.json

A listed case that cannot be converted (see ``skip_incomplete`` of :func:`prepare_pancreas`) fails the whole
preparation, naming every such case, and nothing is written; with ``skip_incomplete`` it is left out and listed.

Geometry of the raw release (what :func:`read_dicom_series` does). Each series is read with ITK
(``itk.GDCMSeriesFileNames`` orders the files by ImagePositionPatient along the slice normal,
``itk.ImageSeriesReader`` + ``GDCMImageIO`` applies RescaleSlope/Intercept), so the volume follows the header
geometry, never the file names. ITK's image lives in LPS: ``world_LPS = origin + direction @ diag(spacing) @
index`` with index (i, j, k) = (column, row, slice). The array ITK hands to NumPy is (k, j, i); it is transposed
to (i, j, k) and the 4x4 affine built as nibabel's RAS convention wants it::

    affine_RAS = diag(-1, -1, 1, 1) @ [[direction @ diag(spacing), origin], [0, 0, 0, 1]]

The label is read with nibabel (its affine is already RAS). Both are compared in the closest canonical (RAS+)
axis order (``nibabel.orientations``: axis permutations / flips only, the affine is adjusted so every voxel keeps
its world position) and must agree: same shape and every corner voxel centre within ``GRID_TOLERANCE_MM``;
otherwise the case is rejected with a message naming it. A label that stores the same grid with flipped axes is
therefore accepted (and written on the image's axis order); a label on another grid is not.

Before ITK reads a series, every file is read with pydicom and checked: one orientation for all slices, positions
along the normal uniformly spaced (a gap is reported as a missing slice with its expected ImagePositionPatient),
no two slices at one position, no truncated pixel data, same rows/columns/pixel spacing. ITK itself would read
a series with a missing or corrupt slice with only a "non uniform sampling" warning; here it is a
:class:`DatasetError` naming the case, and nothing is left at ``dst``. The slice count is then compared with the
label through the grid check above (a slice missing at an end of the series shows as a shape mismatch).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
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
    "CHAINS",
    "DEFAULT_LABELED",
    "DUPLICATE_IDS",
    "GRID_TOLERANCE_MM",
    "HU_WINDOW",
    "LABELS_FOLDER",
    "PANCREAS_CT",
    "SPLITS_DIR",
    "SynthGeometry",
    "canonical",
    "check_chain",
    "check_same_grid",
    "check_series_headers",
    "convert_case",
    "itk_to_ras",
    "load_h5_case",
    "normalize_case_id",
    "prepare_pancreas",
    "read_dicom_series",
    "read_label",
    "read_split_lists",
    "synth_geometry",
    "synth_pancreas",
]

#: 20 % of the 62 official training cases (6 = 10 %).
DEFAULT_LABELED = 12
#: Soft-tissue CT window in HU, scaled to [0, 1] (the bundle's ScaleIntensityRanged; documentation here).
HU_WINDOW = (-125.0, 275.0)
#: Largest distance (mm) allowed between corresponding corner voxel centres of the image and label grids.
GRID_TOLERANCE_MM = 0.1
#: Cases of the TCIA release that duplicate another patient's scan (TCIA's note): kept in the lists, flagged.
DUPLICATE_IDS = ("PANCREAS_0025", "PANCREAS_0070")
PANCREAS_CT = "Pancreas-CT"
LABELS_FOLDER = "TCIA_pancreas_labels-02-05-2017"
#: The official 62 / 20 split (package data), as distributed with MC-Net+ / AD-MT / DyCON (ids ``PANCREAS_XXXX.h5``).
SPLITS_DIR = Path(__file__).resolve().parent / "splits" / "Pancreas"

_CASE_DIR_RE = re.compile(r"^pancreas_(\d{4})$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^label(\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_H5_RES = (re.compile(r"^pancreas_(\d{4})\.h5$", re.IGNORECASE), re.compile(r"^image(\d{4})_norm\.h5$", re.IGNORECASE))
_ID_RES = (
    re.compile(r"^pancreas_(\d{4})(\.h5)?$", re.IGNORECASE),
    re.compile(r"^image(\d{4})_norm(\.h5)?$", re.IGNORECASE),
)
_DUPLICATES_NOTE = (
    "PANCREAS_0025 and PANCREAS_0070 duplicate other patients' scans in the TCIA release (82 series, 80 unique "
    "patients); they remain in the official lists (0025 in train.list, 0070 in test.list) as in the literature, "
    "so that results stay comparable"
)


def _info(msg: str) -> None:
    print(f"dycon prepare pancreas: {msg}", file=sys.stderr)


def normalize_case_id(name: str) -> str:
    """``PANCREAS_0001`` from ``PANCREAS_0001``, ``PANCREAS_0001.h5``, ``pancreas_0001`` or ``image0001_norm.h5``."""
    text = str(name).strip()
    for rx in _ID_RES:
        m = rx.match(text)
        if m:
            return f"PANCREAS_{m.group(1)}"
    raise DatasetError(f"not a Pancreas case id: {name!r} (expected PANCREAS_XXXX[.h5] or imageXXXX_norm[.h5])")


def read_split_lists(splits: str | os.PathLike[str] | None = None) -> tuple[list[str], list[str], Path, Path]:
    """The official lists (package data) or ``splits/{train,test}.list``: ``(train, test, train_path, test_path)``.

    Ids are normalised to ``PANCREAS_XXXX``; a case in both lists, or twice in one, is an error.
    """
    folder = SPLITS_DIR if splits is None else Path(os.fspath(splits)).expanduser()
    paths = []
    for name in ("train.list", "test.list"):
        p = folder / name
        if not p.is_file():
            raise DatasetError(f"split list {p} not found (splits= must be a folder holding train.list and test.list)")
        paths.append(p)
    lists = []
    for p in paths:
        ids = [normalize_case_id(i) for i in read_id_list(p)]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DatasetError(f"{p} lists a case twice: {', '.join(dup)}")
        lists.append(ids)
    overlap = sorted(set(lists[0]) & set(lists[1]))
    if overlap:
        raise DatasetError(f"ids in both train and test lists: {', '.join(overlap)} (the test set must stay unseen)")
    return lists[0], lists[1], paths[0], paths[1]


# --------------------------------------------------------------------------------------------- geometry


def canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip array axes to the closest RAS+ orientation; the affine follows (voxels keep their position)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    out = apply_orientation(array, ornt)
    return out, affine @ inv_ornt_aff(ornt, array.shape)


def _corners(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    idx = np.array([[a, b, c, 1.0] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)])
    return (affine @ idx.T).T[:, :3]


def _fmt_aff(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


def check_same_grid(
    case_id: str,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    tolerance: float = GRID_TOLERANCE_MM,
) -> None:
    """DatasetError naming ``case_id`` unless both grids (in canonical orientation) have the same shape and every
    corner voxel centre within ``tolerance`` mm."""
    if tuple(image_shape) != tuple(label_shape):
        raise DatasetError(
            f"{case_id}: image and label grids differ: the DICOM series reads as {tuple(image_shape)} voxels, the "
            f"label has {tuple(label_shape)} (RAS axis order); a slice missing at an end of the series, or a "
            "label of another scan, gives this"
        )
    dist = float(
        np.max(np.linalg.norm(_corners(image_shape, image_affine) - _corners(label_shape, label_affine), axis=1))
    )
    if not dist <= tolerance:
        raise DatasetError(
            f"{case_id}: image and label grids differ by up to {dist:.3g} mm (tolerance {tolerance} mm): DICOM "
            f"affine {_fmt_aff(image_affine)} vs label affine {_fmt_aff(label_affine)} (RAS)"
        )


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _axcodes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    return "".join(str(c) for c in aff2axcodes(affine))


def convert_case(
    image: np.ndarray, image_affine: np.ndarray, label: np.ndarray, label_affine: np.ndarray, case_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One raw case as :func:`prepare_pancreas` writes it: the image unchanged (HU, the DICOM grid and axis
    order, its RAS affine) and the label moved onto the image's axis order.

    Both grids are compared in the closest RAS+ axis order (:func:`check_same_grid`: same shape, corner voxel
    centres within ``GRID_TOLERANCE_MM``); a label stored with permuted / flipped axes of the same grid is
    reordered to the image's axes (voxels keep their world position). No resampling, windowing, cropping or
    normalisation: that is the bundle's transform chain.

    Args:
        image: HU volume (i, j, k) as :func:`read_dicom_series` returns it.
        image_affine: its 4x4 RAS affine.
        label: {0, 1} volume (3-D).
        label_affine: its 4x4 RAS affine.
        case_id: named in errors.

    Returns:
        ``(image int16 (float32 where the HU values are not integers), label uint8 (same shape), image affine,
        info)``.
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    image_affine = np.asarray(image_affine, dtype=np.float64)
    arr = np.asarray(image)
    img_c, img_aff_c = canonical(arr, image_affine)
    lab_c, lab_aff_c = canonical(np.asarray(label), np.asarray(label_affine, dtype=np.float64))
    check_same_grid(case_id, img_c.shape, img_aff_c, lab_c.shape, lab_aff_c)
    lab = apply_orientation(lab_c, ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(image_affine)))
    if lab.shape != arr.shape:  # guards the orientation algebra
        raise DatasetError(f"{case_id}: label reordered to {lab.shape} != image {arr.shape}")
    integral = bool(np.isfinite(arr).all()) and bool((arr == np.rint(arr)).all())
    dtype = np.int16 if integral and float(arr.min()) >= -32768 and float(arr.max()) <= 32767 else np.float32
    info = {
        "shape": list(arr.shape),
        "spacing": [round(float(z), 6) for z in _zooms(image_affine)],
        "axcodes": _axcodes(image_affine),
        "dtype": np.dtype(dtype).name,
    }
    return arr.astype(dtype), np.ascontiguousarray(lab, dtype=np.uint8), image_affine, info


# ------------------------------------------------------------------------------------------------- DICOM


def _series_files(case_dir: Path) -> list[Path]:
    return sorted(p for p in case_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")


def _floats(ds: Any, keyword: str, n: int, path: Path, case_id: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DatasetError(f"{case_id}: {path} has no valid {keyword} ({value!r}); cannot place the slice")
    return arr


@dataclass
class _SeriesGeometry:
    files: list[Path]  # sorted by position along the slice normal (ascending)
    origin: np.ndarray  # ImagePositionPatient of the first slice (LPS, mm)
    row: np.ndarray  # direction of increasing column index (LPS)
    col: np.ndarray  # direction of increasing row index (LPS)
    normal: np.ndarray
    step: float  # slice spacing (mm)
    pixel_spacing: tuple[float, float]  # (between columns = along row, between rows = along col)
    rows: int
    columns: int


def check_series_headers(files: Sequence[Path], case_id: str) -> _SeriesGeometry:
    """Read every file with pydicom and check that the slices form one uniform grid.

    DatasetError naming the case for: unreadable/truncated files, differing orientations / matrix sizes / pixel
    spacings, several series, two slices at one position, a gap (missing slice, with its expected position),
    non-uniform spacing, or a sheared (gantry-tilted) stack.
    """
    import pydicom

    if not files:
        raise DatasetError(f"{case_id}: no DICOM file (*.dcm) in the case folder")
    entries = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), force=True)
            px = ds.get("PixelData")
        except Exception as err:  # pydicom raises many kinds of errors on truncated / corrupt files
            raise DatasetError(
                f"{case_id}: DICOM file {f} is truncated or corrupt, cannot read it ({type(err).__name__}: {err})"
            ) from err
        if px is None:
            raise DatasetError(f"{case_id}: DICOM file {f} has no pixel data (corrupt or not an image slice)")
        try:
            rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
        except (AttributeError, TypeError, ValueError) as err:
            raise DatasetError(f"{case_id}: DICOM file {f} lacks Rows/Columns/BitsAllocated ({err})") from err
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        needed = rows * cols * spp * bits // 8
        if not (syntax is not None and syntax.is_compressed) and len(px) < needed:
            raise DatasetError(
                f"{case_id}: DICOM file {f} is truncated or corrupt (pixel data has {len(px)} of "
                f"the {needed} bytes its {rows}x{cols} x {bits}-bit header needs)"
            )
        iop = _floats(ds, "ImageOrientationPatient", 6, f, case_id)
        ipp = _floats(ds, "ImagePositionPatient", 3, f, case_id)
        ps = _floats(ds, "PixelSpacing", 2, f, case_id)
        entries.append((f, iop, ipp, ps, rows, cols, str(ds.get("SeriesInstanceUID", ""))))
    f0, iop0, _, ps0, rows0, cols0, _ = entries[0]
    uids = sorted({e[6] for e in entries})
    if len(uids) > 1:
        raise DatasetError(
            f"{case_id}: the case folder holds {len(uids)} DICOM series ({', '.join(uids)}); expected one"
        )
    for f, iop, _, ps, rows, cols, _ in entries[1:]:
        if not np.allclose(iop, iop0, atol=1e-4):
            raise DatasetError(
                f"{case_id}: {f} has ImageOrientationPatient {iop.tolist()} but {f0} has "
                f"{iop0.tolist()}; slices of one volume must share it"
            )
        if (rows, cols) != (rows0, cols0) or not np.allclose(ps, ps0, atol=1e-5):
            raise DatasetError(
                f"{case_id}: {f} is {rows}x{cols} at {ps.tolist()} mm but {f0} is {rows0}x{cols0} at "
                f"{ps0.tolist()} mm"
            )
    row, col = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DatasetError(f"{case_id}: ImageOrientationPatient {iop0.tolist()} is not two orthonormal directions")
    normal = np.cross(row, col)
    order = sorted(range(len(entries)), key=lambda n: float(entries[n][2] @ normal))
    entries = [entries[n] for n in order]
    pos = np.array([float(e[2] @ normal) for e in entries])
    origin = entries[0][2]
    lateral = np.array([np.linalg.norm((e[2] - origin) - ((e[2] - origin) @ normal) * normal) for e in entries])
    if lateral.max(initial=0.0) > 0.01:
        n = int(np.argmax(lateral))
        raise DatasetError(
            f"{case_id}: slice {entries[n][0]} is shifted {lateral[n]:.3g} mm off the slice normal "
            "(gantry tilt or sheared stack); such series are not supported"
        )
    if len(entries) == 1:
        raise DatasetError(f"{case_id}: the series has a single slice; a 3-D volume is expected")
    diffs = np.diff(pos)
    same = np.nonzero(diffs < 1e-3)[0]
    if same.size:
        a, b = entries[same[0]][0], entries[same[0] + 1][0]
        raise DatasetError(
            f"{case_id}: two DICOM files at the same position {entries[same[0]][2].tolist()}: {a} and "
            f"{b} (duplicate or corrupt slice)"
        )
    step = float(np.median(diffs))
    tol = max(0.01, 0.01 * step)
    bad = np.nonzero(np.abs(diffs - step) > tol)[0]
    if bad.size:
        gaps = []
        for n in bad:
            ratio = diffs[n] / step
            if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
                for t in range(1, int(round(ratio))):
                    gaps.append(entries[n][2] + normal * step * t)
            else:
                raise DatasetError(
                    f"{case_id}: non-uniform slice spacing in the DICOM series: {diffs[n]:.4g} mm between "
                    f"{entries[n][0].name} and {entries[n + 1][0].name} where the series steps {step:.4g} mm "
                    "(corrupt slice position); refusing to read it"
                )
        shown = "; ".join("(" + ", ".join(f"{v:.6g}" for v in g) + ")" for g in gaps[:5])
        raise DatasetError(
            f"{case_id}: missing slice{'s' if len(gaps) > 1 else ''} in the DICOM series "
            f"({len(entries)} files, slices every {step:.4g} mm): nothing at ImagePositionPatient {shown}"
            f"{' ...' if len(gaps) > 5 else ''}; refusing to read it (ITK would only warn 'non uniform sampling' "
            "and the volume would no longer match the label)"
        )
    return _SeriesGeometry(
        files=[e[0] for e in entries],
        origin=origin,
        row=row,
        col=col,
        normal=normal,
        step=step,
        pixel_spacing=(float(ps0[1]), float(ps0[0])),
        rows=rows0,
        columns=cols0,
    )


def itk_to_ras(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """An ITK image -> ``(array in ITK index order (i, j, k), 4x4 RAS affine as nibabel uses)``."""
    import itk

    arr = np.asarray(itk.array_from_image(image)).transpose(2, 1, 0)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    direction = np.array(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_dicom_series(case_dir: str | os.PathLike[str], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the one DICOM series under ``case_dir`` with ITK: ``(HU float32 array (i, j, k), RAS affine)``.

    The headers are checked first (:func:`check_series_headers`); ITK's file order and geometry are then
    cross-checked against them.
    """
    import itk

    case_dir = Path(case_dir)
    files = _series_files(case_dir)
    geom = check_series_headers(files, case_id)
    folders = sorted({f.parent for f in files})
    if len(folders) > 1:
        raise DatasetError(
            f"{case_id}: DICOM files in {len(folders)} folders ({', '.join(map(str, folders))}); "
            "expected one series folder"
        )
    try:
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(True)
        names.SetDirectory(str(folders[0]))
        uids = list(names.GetSeriesUIDs())
        if len(uids) != 1:
            raise DatasetError(f"{case_id}: ITK finds {len(uids)} series in {folders[0]}; expected one")
        ordered = [Path(p) for p in names.GetFileNames(uids[0])]
        if sorted(ordered) != sorted(geom.files):
            raise DatasetError(
                f"{case_id}: ITK groups {len(ordered)} of the {len(geom.files)} DICOM files of "
                f"{folders[0]} into the series; the others do not belong to it"
            )
        reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New()
        reader.SetImageIO(itk.GDCMImageIO.New())
        reader.SetFileNames([str(p) for p in ordered])
        reader.Update()
        image = reader.GetOutput()
    except DatasetError:
        raise
    except Exception as err:  # ITK raises RuntimeError with a multi-line text
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{case_id}: ITK cannot read the DICOM series in {folders[0]} ({first})") from err
    arr, affine = itk_to_ras(image)
    # ITK must agree with the headers: origin = first slice along the normal, directions and spacings.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    expected = np.column_stack(
        [geom.row * geom.pixel_spacing[0], geom.col * geom.pixel_spacing[1], geom.normal * geom.step]
    )
    if arr.shape != (geom.columns, geom.rows, len(geom.files)) or not (
        np.allclose(lps[:3, :3], expected, atol=1e-3) and np.allclose(lps[:3, 3], geom.origin, atol=1e-3)
    ):
        raise DatasetError(
            f"{case_id}: ITK's geometry of {folders[0]} ({arr.shape}, LPS {_fmt_aff(lps)}) disagrees with the DICOM "
            f"headers (ImagePositionPatient / ImageOrientationPatient / PixelSpacing); refusing to guess"
        )
    return np.ascontiguousarray(arr, dtype=np.float32), affine


def _outside_01(values: np.ndarray) -> list[Any]:
    """Values other than 0 / 1 (integral floats shown as ints: ``[2]``, not ``[2.0]``)."""
    return [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in (0, 1)]


def read_label(path: str | os.PathLike[str], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A TCIA label NIfTI: ``(uint8 {0, 1} array, RAS affine)``; DatasetError (naming case and file) otherwise."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:
        raise DatasetError(f"{case_id}: cannot read label {path} ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{case_id}: label {path} is {data.ndim}-D {data.shape}; expected 3-D")
    if not np.issubdtype(data.dtype, np.number):
        raise DatasetError(f"{case_id}: label {path} is not numeric ({data.dtype})")
    values = np.unique(data)
    bad = _outside_01(values)
    if bad:
        raise DatasetError(
            f"{case_id}: label {path} has values {bad[:10]} outside {{0, 1}} (binary pancreas mask expected)"
        )
    if not (values == 1).any():
        raise DatasetError(f"{case_id}: label {path} is empty (no pancreas voxel): not a pancreas mask")
    return data.astype(np.uint8), affine


# --------------------------------------------------------------------------------------------------- h5


def load_h5_case(path: str | os.PathLike[str], case_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One preprocessed h5 (keys ``image`` / ``label``): ``(image float32, label uint8 {0, 1})``, arrays as stored."""
    import h5py

    path = Path(path)
    who = f"{case_id}: " if case_id else ""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise DatasetError(f"{who}{path}: h5 file lacks dataset(s) {missing} (has {sorted(f.keys())})")
            image = np.asarray(f["image"][()])
            label = np.asarray(f["label"][()])
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(f"{who}{path}: cannot read h5 file ({type(err).__name__}: {err})") from err
    if image.ndim != 3 or image.shape != label.shape:
        raise DatasetError(
            f"{who}{path}: expected 3-D image and label of one shape, got {image.shape} and {label.shape}"
        )
    if not (np.issubdtype(image.dtype, np.number) and np.issubdtype(label.dtype, np.number)):
        raise DatasetError(f"{who}{path}: non-numeric arrays ({image.dtype}, {label.dtype})")
    if not np.isfinite(image).all():
        raise DatasetError(f"{who}{path}: image has {int(image.size - np.isfinite(image).sum())} NaN/Inf voxel(s)")
    bad = _outside_01(np.unique(label))
    if bad:
        raise DatasetError(f"{who}{path}: label values {bad[:10]} outside {{0, 1}}")
    return image.astype(np.float32, copy=False), label.astype(np.uint8)


# ----------------------------------------------------------------------------------------- source layout


@dataclass
class _Source:
    layout: str  # "dicom" | "h5"
    root: Path  # Pancreas-CT folder (dicom) or the folder scanned for h5 files
    cases: dict[str, Path]  # id -> case folder (dicom) or h5 file
    labels: dict[str, Path] = field(default_factory=dict)  # id -> label file (dicom)
    label_root: Path | None = None

    @property
    def present(self) -> list[str]:
        """Ids with a case folder / h5 file or a label file (an incomplete case is present, and reported)."""
        return sorted(set(self.cases) | set(self.labels))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def _case_dirs(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in _subdirs(folder):
        m = _CASE_DIR_RE.match(p.name)
        if m:
            case_id = f"PANCREAS_{m.group(1)}"
            if case_id in found:
                raise DatasetError(f"two folders for {case_id} in {folder}: {found[case_id].name} and {p.name}")
            found[case_id] = p
    return found


def _find_dicom(src: Path) -> _Source | None:
    roots = []
    for cand in [src, *_subdirs(src), *(g for d in _subdirs(src) for g in _subdirs(d))]:
        if cand.name.lower() == PANCREAS_CT.lower():
            roots.append(cand)
    if not roots and _case_dirs(src):
        roots.append(src)
    if not roots:
        return None
    root = roots[0]
    cases = _case_dirs(root)
    if not cases:
        return None
    label_root = None
    near = list(dict.fromkeys([src, root, root.parent]))
    for d in dict.fromkeys([*near, *(c for n in near for c in _subdirs(n))]):
        if d.name.lower().startswith("tcia_pancreas_labels") and d.is_dir():
            label_root = d
            break
    labels: dict[str, Path] = {}
    if label_root is not None:
        for p in sorted(label_root.iterdir()):
            m = _LABEL_RE.match(p.name)
            if m and p.is_file():
                labels.setdefault(f"PANCREAS_{m.group(1)}", p)
    if label_root is None:
        raise FileNotFoundError(
            f"found the DICOM folder {root} but no label folder '{LABELS_FOLDER}' (labelXXXX.nii.gz) in or next "
            f"to {src}, {root} or {root.parent}"
        )
    return _Source(layout="dicom", root=root, cases=cases, labels=labels, label_root=label_root)


def _find_h5(src: Path) -> _Source | None:
    found: dict[str, Path] = {}
    for folder in [src, *_subdirs(src), *(g for d in _subdirs(src) for g in _subdirs(d))]:
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
        except OSError:
            continue
        for p in files:
            for rx in _H5_RES:
                m = rx.match(p.name)
                if m:
                    case_id = f"PANCREAS_{m.group(1)}"
                    if case_id in found:
                        raise DatasetError(f"two h5 files for {case_id}: {found[case_id]} and {p}")
                    found[case_id] = p
    if not found:
        return None
    roots = sorted({p.parent for p in found.values()})
    return _Source(layout="h5", root=roots[0] if len(roots) == 1 else src, cases=dict(sorted(found.items())))


def _find_source(src: Path, layout: str) -> _Source:
    if not src.is_dir():
        raise FileNotFoundError(f"Pancreas source folder {src} does not exist (or is not a folder)")
    if layout not in ("auto", "dicom", "h5"):
        raise DatasetError(f"layout must be 'auto', 'dicom' or 'h5', got {layout!r}")
    source = None
    if layout in ("auto", "dicom"):
        source = _find_dicom(src)
    if source is None and layout in ("auto", "h5"):
        source = _find_h5(src)
    if source is None or not source.cases:
        want = {
            "auto": f"'{PANCREAS_CT}/PANCREAS_XXXX/...' with '{LABELS_FOLDER}/labelXXXX.nii.gz', or PANCREAS_XXXX.h5 / "
            "imageXXXX_norm.h5",
            "dicom": f"'{PANCREAS_CT}/PANCREAS_XXXX/...' with '{LABELS_FOLDER}/labelXXXX.nii.gz'",
            "h5": "PANCREAS_XXXX.h5 or imageXXXX_norm.h5",
        }[layout]
        raise FileNotFoundError(f"no Pancreas case found under {src}: expected {want}")
    return source


# -------------------------------------------------------------------------------------------------- writing

#: ``datalist["dycon"]["chain"]``: which transform chain of the bundle a prepared dataset needs (see
#: :func:`check_chain`): ``"raw"`` (HU on the scanner grid: the full chain) or ``"h5_prepared"`` (the authors'
#: preprocessed h5: already 1 mm, windowed, cropped, z-scored).
CHAINS = ("raw", "h5_prepared")


def _strip_id(case_id: str, message: str) -> str:
    return message[len(case_id) + 2 :] if message.startswith(f"{case_id}: ") else message


def _convert_one(source: _Source, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read and check one case of ``source``: ``(image, label, affine, info)``; DatasetError naming the case."""
    if source.layout == "h5":
        image, label = load_h5_case(source.cases[case_id], case_id)
        if not label.any():
            raise DatasetError(f"{case_id}: {source.cases[case_id]}: the label is empty (no pancreas voxel)")
        return image, label, np.eye(4), {"shape": list(image.shape), "h5": source.cases[case_id].name}
    if case_id not in source.cases:
        raise DatasetError(
            f"{case_id}: label file {source.labels[case_id].name} but no DICOM series folder {case_id} in "
            f"{source.root}"
        )
    if case_id not in source.labels:
        raise DatasetError(f"{case_id}: no label file label{case_id[-4:]}.nii.gz in {source.label_root}")
    raw, raw_aff = read_dicom_series(source.cases[case_id], case_id)
    lab, lab_aff = read_label(source.labels[case_id], case_id)
    return convert_case(raw, raw_aff, lab, lab_aff, case_id)


def prepare_pancreas(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    val: int = 0,
    splits: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    layout: str = "auto",
    skip_incomplete: bool = False,
) -> Path:
    """Prepare Pancreas-NIH from ``src`` (raw TCIA DICOM + labels, or preprocessed h5) into ``dst``; return the
    datalist path. A format conversion and a split, nothing more: images keep their values and grids.

    Args:
        src: the raw release (a folder holding ``Pancreas-CT`` and ``TCIA_pancreas_labels-02-05-2017``, possibly
            one level down as in the NBIA ``manifest-*`` folder, or ``Pancreas-CT`` itself), or a folder with the
            h5 files (in it or up to two levels down). Never modified.
        dst: output folder, written atomically (``<dst>.partial-<pid>`` renamed at the end): an error in any case
            leaves nothing at ``dst``.
        labeled: number of labeled cases: the FIRST ones of train.list that are present (default 12 = 20 % of 62;
            6 = 10 %). Never clipped.
        fraction: share of the (present, non-validation) training cases to label instead of ``labeled``.
        random: draw labeled (and validation) cases with ``seed`` instead of taking the first (last) ones.
        seed: seed of the random draws.
        val: number of validation cases carved from the END of the training list.
        splits: folder with ``train.list`` / ``test.list`` replacing the official 62 / 20 split shipped with the
            package (ids ``PANCREAS_XXXX[.h5]`` or ``imageXXXX_norm[.h5]``). Train and test must be disjoint.
        overwrite: replace a dataset previously written here with other arguments (same arguments: no-op).
        layout: ``"auto"`` (DICOM if a Pancreas-CT folder is found, else h5), ``"dicom"`` or ``"h5"``.
        skip_incomplete: leave out (and list in the summary and ``dycon.skipped``) the listed cases that cannot
            be prepared, instead of failing: a series folder without label or a label without series folder, an
            empty case folder, unreadable / truncated DICOM files, missing slices or non-uniform slice positions,
            several series in one case, a label whose grid (slice count, spacing, position) disagrees with the
            series, label values outside {0, 1} or an empty label, an unreadable h5.

    Raw release: each DICOM series becomes ``images/<id>.nii.gz`` in HU (int16) on the DICOM grid (the array in
    ITK index order, the RAS affine from the headers), its label ``labels/<id>.nii.gz`` (uint8 {0, 1}) on the same
    grid and axis order. h5 release: arrays copied unchanged (image float32, label uint8) with a 1 mm identity
    affine; the datalist records ``dycon.chain = "h5_prepared"`` and the bundle must run with ``--prepared_h5
    true`` (checked at start-up). Listed ids absent from ``src`` are reported (stderr, ``dycon.missing``); cases
    in no list are ignored and reported. The duplicate cases PANCREAS_0025 / PANCREAS_0070 are kept and flagged.
    """
    src_p = Path(os.fspath(src)).expanduser().resolve()
    dst_p = Path(os.fspath(dst)).expanduser().absolute()
    check_split_arguments(labeled, fraction, random, overwrite, skip_incomplete)
    train_all, test_all, train_path, test_path = read_split_lists(splits)
    source = _find_source(src_p, layout)
    check_outside(src_p, dst_p)

    found, missing, unlisted = present_in_lists({"training": train_all, "test": test_all}, source.present)
    missing_train, missing_test = missing["training"], missing["test"]
    split_args = {"labeled": labeled, "fraction": fraction, "random": random, "seed": seed, "val": val}
    split_training(found["training"], default_labeled=DEFAULT_LABELED, **split_args)  # bad counts fail before reading

    arguments = {
        "src": str(src_p),
        **split_args,
        "splits": None if splits is None else str(Path(os.fspath(splits)).expanduser().resolve()),
        "layout": layout,
        "skip_incomplete": bool(skip_incomplete),
    }
    if check_destination(dst_p, arguments, overwrite=overwrite):
        _info(f"{dst_p} is already prepared with the same arguments; nothing to do (overwrite=True rebuilds it)")
        return dst_p / DATALIST_NAME

    for what, ids, total in (("train.list", missing_train, train_all), ("test.list", missing_test, test_all)):
        if ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            _info(f"{len(ids)} of {len(total)} {what} ids are not in {src_p} and were skipped: {shown}")
    if unlisted:
        _info(f"{len(unlisted)} case(s) in {source.root} are in no list and were ignored: {', '.join(unlisted)}")

    image_rel = lambda i: f"images/{i}.nii.gz"  # noqa: E731
    label_rel = lambda i: f"labels/{i}.nii.gz"  # noqa: E731
    chain = "h5_prepared" if source.layout == "h5" else "raw"
    case_info: dict[str, Any] = {}
    with atomic_dataset(dst_p) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        problems: dict[str, str] = {}
        for case_id in found["training"] + found["test"]:
            try:
                image, label, affine, info = _convert_one(source, case_id)
            except DatasetError as err:
                problems[case_id] = _strip_id(case_id, str(err))
                continue
            write_nifti(image, tmp / image_rel(case_id), affine, image.dtype.type)
            write_nifti(label, tmp / label_rel(case_id), affine, np.uint8)
            case_info[case_id] = info
            del image, label
        skipped = check_complete(problems, skip_incomplete, f"Pancreas release {src_p}")
        for case_id, reason in skipped.items():
            _info(f"skipped {case_id}: {reason}")
        train_ids = [i for i in found["training"] if i not in skipped]
        test_ids = [i for i in found["test"] if i not in skipped]
        split = split_training(train_ids, default_labeled=DEFAULT_LABELED, **split_args)
        cases = split.labeled + split.unlabeled + split.validation + test_ids
        duplicates = [i for i in DUPLICATE_IDS if i in cases]
        if duplicates:
            _info(f"note: {', '.join(duplicates)} duplicate other patients' scans (TCIA); kept as in the literature")
        if not test_ids:
            warnings.warn(f"no test case of the split is present in {src_p}: datalist 'test' is empty", stacklevel=2)
        if source.layout == "dicom":
            preprocessing = (
                "none (format conversion only): DICOM series read with ITK (geometry from ImagePositionPatient / "
                "ImageOrientationPatient, RescaleSlope/Intercept applied: HU), written as int16 NIfTI on the DICOM "
                "grid and axis order with its RAS affine; label (nibabel) checked to lie on the same grid and "
                "written on the image's axis order. Resampling, HU window, crops and z-score are the bundle's "
                "transform chain"
            )
            axes = "the DICOM grid: array (column, row, slice), affine = RAS world position of the voxels"
        else:
            preprocessing = (
                "preprocessed h5 (MC-Net+ lineage: 1 mm, window [-125, 275], x/y crop around the label, "
                "z-score); arrays copied unchanged, label cast to uint8; run the bundle with --prepared_h5 true"
            )
            axes = "array axes as stored in the h5; affine identity (1 mm; the h5 stores no spacing or orientation)"
        metadata: dict[str, Any] = {
            "dataset": "Pancreas",
            "chain": chain,
            "source": {
                "layout": source.layout,
                "path": str(src_p),
                "case_root": str(source.root),
                "label_root": str(source.label_root) if source.label_root else None,
                "train_list": str(train_path),
                "test_list": str(test_path),
                "split_rule": (
                    "official 62 / 20 split (package data)"
                    if splits is None
                    else f"user lists {train_path} and {test_path}"
                ),
            },
            "axes": axes,
            "preprocessing": preprocessing,
            "labeled_rule": (f"seeded random draw (seed {seed})" if random else "first N of the training list")
            + (f"; default N = {DEFAULT_LABELED} (20% of 62)" if labeled is None and fraction is None else ""),
            "validation_rule": (
                "" if not val else (f"seeded random draw (seed {seed})" if random else "last N of the training list")
            ),
            "missing": {"training": missing_train, "test": missing_test},
            "unlisted": unlisted,
            "duplicates_note": _DUPLICATES_NOTE,
            "duplicates_present": duplicates,
            "arguments": arguments,
        }
        datalist = build_datalist(split, test_ids, image_rel, label_rel, metadata, skipped=skipped)
        for case_id in skipped:  # nothing of a skipped case stays on disk
            for rel in (image_rel(case_id), label_rel(case_id)):
                (tmp / rel).unlink(missing_ok=True)
        datalist["dycon"]["cases"] = {i: case_info[i] for i in cases}
        write_datalist(datalist, tmp / DATALIST_NAME)
    c = datalist["dycon"]["counts"]
    _info(
        f"wrote {dst_p}: {c['training']} labeled, {c['unlabeled']} unlabeled, {c['validation']} validation, "
        f"{c['test']} test" + (f"; {len(skipped)} skipped: {', '.join(skipped)}" if skipped else "")
    )
    return dst_p / DATALIST_NAME


def check_chain(datalist: str | os.PathLike[str], prepared_h5: Any) -> None:
    """Start-up check of the bundles: the chain option ``prepared_h5`` must fit the prepared dataset.

    The raw chain (``prepared_h5: false``) windows HU values to [-125, 275]: on the h5 release's z-scored values
    it would destroy the image; the h5 chain (``true``) skips the window and the body crop: on HU data the network
    would see unwindowed values. A dataset prepared by dycon 1.x (windowed and cropped offline) must be prepared
    again. Raises DatasetError (one line) on a wrong combination; a datalist without ``dycon`` metadata (written
    by hand) is accepted as it is, and so is anything but a ``.json`` file (inference inputs).
    """
    from ..flags import as_bool
    from .datalist import read_datalist

    want_h5 = as_bool(prepared_h5, "prepared_h5")
    if not isinstance(datalist, (str, os.PathLike)):
        return  # a list of inference inputs
    path = Path(os.fspath(datalist))
    if not (path.is_file() and path.name.lower().endswith(".json")):
        return  # an image / DICOM folder input (inference), or a missing datalist (the dataset checks name it)
    meta = read_datalist(path).get("dycon")
    if not isinstance(meta, dict) or meta.get("dataset") != "Pancreas":
        return
    chain = meta.get("chain")
    if chain not in CHAINS:
        raise DatasetError(
            f"{path} was written by an older 'dycon prepare pancreas' (resampled, windowed and cropped offline); "
            "this bundle (2.x) preprocesses raw studies itself: prepare the dataset again from the raw release"
        )
    if chain == "h5_prepared" and not want_h5:
        raise DatasetError(
            f"{path} holds the preprocessed h5 release (1 mm, windowed, z-scored): run the bundle with "
            "--prepared_h5 true (the raw chain's HU window would destroy these values)"
        )
    if chain == "raw" and want_h5:
        raise DatasetError(
            f"{path} holds raw CT in HU: run the bundle with --prepared_h5 false (the h5 chain skips the HU window)"
        )


# ------------------------------------------------------------------------------------------------ synthetic


@dataclass(frozen=True)
class SynthGeometry:
    """Geometry of one synthetic series (as the real headers: IOP 1\\0\\0\\0\\-1\\0, IPP 0\\0\\-k * step)."""

    pixel_spacing: float
    slice_step: float
    shape: tuple[int, int, int]  # (columns, rows, slices) = ITK index order (i, j, k)

    @property
    def lps_affine(self) -> np.ndarray:
        a = np.diag([self.pixel_spacing, -self.pixel_spacing, -self.slice_step, 1.0])
        return a

    @property
    def ras_affine(self) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps_affine


def synth_geometry(case_index: int, seed: int, shape: Sequence[int], slice_step: float | None = None) -> SynthGeometry:
    """The per-case geometry :func:`synth_pancreas` uses (pixel spacing a multiple of 1/128 mm in [0.7, 0.9],
    slice step 1 mm for the first case as in the real header dump, else 1.0-2.5 mm; ``slice_step`` fixes it)."""
    rng = np.random.default_rng([seed, case_index, 7])
    ps = round(rng.uniform(0.7, 0.9) * 128) / 128
    step = 1.0 if case_index == 0 else float(rng.choice([1.0, 1.5, 2.0, 2.5]))
    if slice_step is not None:
        step = float(slice_step)
    shp = tuple(int(s) for s in shape)
    return SynthGeometry(pixel_spacing=ps, slice_step=step, shape=shp)  # type: ignore[arg-type]


def _synth_volume(rng: np.random.Generator, geom: SynthGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Body-like CT in HU (int16, index order (i, j, k)) and a pancreas-like label (uint8 {0, 1})."""
    from scipy.ndimage import gaussian_filter

    nx, ny, nz = geom.shape
    ps, dz = geom.pixel_spacing, geom.slice_step
    # physical coordinates (mm) of the voxel centres, relative to the field of view
    x = (np.arange(nx)[:, None, None] + 0.5) * ps
    y = (np.arange(ny)[None, :, None] + 0.5) * ps
    z = (np.arange(nz)[None, None, :] + 0.5) * dz
    fx, fy, fz = nx * ps, ny * ps, nz * dz
    hu = np.full(geom.shape, -1000.0)  # air
    body = ((x - fx / 2) / (0.47 * fx)) ** 2 + ((y - fy / 2) / (0.40 * fy)) ** 2 <= 1
    inner = ((x - fx / 2) / (0.40 * fx)) ** 2 + ((y - fy / 2) / (0.33 * fy)) ** 2 <= 1
    hu = np.where(body, -100.0, hu)  # subcutaneous fat
    hu = np.where(inner & np.ones_like(z, dtype=bool), 40.0, hu)  # soft tissue
    # spine (bone) near j = 0 (posterior: the column direction points anterior), aorta-like vessel beside it
    spine = ((x - fx / 2) / (0.07 * fx)) ** 2 + ((y - 0.22 * fy) / (0.07 * fy)) ** 2 <= 1
    hu = np.where(spine & np.ones_like(z, dtype=bool), 500.0, hu)
    aorta = ((x - 0.42 * fx) ** 2 + (y - 0.36 * fy) ** 2) <= (0.05 * min(fx, fy)) ** 2
    hu = np.where(aorta & np.ones_like(z, dtype=bool), 160.0, hu)
    # pancreas: an elongated, slightly curved blob lying across the abdomen, off-centre, ~40-60 HU
    cx, cy, cz = fx * rng.uniform(0.55, 0.62), fy * rng.uniform(0.55, 0.62), fz * rng.uniform(0.40, 0.55)
    ax, ay, az = 0.22 * fx, max(0.07 * fy, 3.5 * ps), max(0.28 * fz, 1.6 * dz)
    bend = 0.5 * ay * ((x - cx) / ax) ** 2
    # peripancreatic fat around it, as in real abdomens (gives the organ its visible boundary)
    pad = ((x - cx) / (ax + 6)) ** 2 + ((y - cy - bend) / (ay + 5)) ** 2 + ((z - cz) / (az + 4)) ** 2 <= 1
    hu = np.where(pad & inner, -90.0, hu)
    mask = ((x - cx) / ax) ** 2 + ((y - cy - bend) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1
    hu = np.where(mask, rng.uniform(50.0, 60.0), hu)
    hu = gaussian_filter(hu, sigma=(0.6, 0.6, 0.3)) + rng.normal(0.0, 4.0, geom.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask.astype(np.uint8)


def _write_slice(
    path: Path, pixels: np.ndarray, k: int, geom: SynthGeometry, case_id: str, uids: dict[str, str], intercept: float
) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ImplicitVRLittleEndian, generate_uid

    sop = generate_uid(entropy_srcs=[uids["series"], str(k)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = True
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "CT"
    ds.PatientID = case_id
    ds.PatientName = case_id
    ds.StudyDescription = "Pancreas"
    ds.SeriesDescription = "Pancreas"
    ds.SeriesNumber = None  # empty, as in the real headers
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [0, 0, pydicom.valuerep.format_number_as_ds(-k * geom.slice_step)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    ds.SliceLocation = pydicom.valuerep.format_number_as_ds(-k * geom.slice_step)
    ds.SliceThickness = None  # empty, as in the real headers
    ds.PixelSpacing = [geom.pixel_spacing, geom.pixel_spacing]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed
    ds.RescaleIntercept = pydicom.valuerep.format_number_as_ds(float(intercept))
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(str(path), write_like_original=False)


def synth_pancreas(
    dst: str | os.PathLike[str],
    n_train: int = 4,
    n_test: int = 2,
    shape: Sequence[int] = (64, 64, 24),
    seed: int = 0,
    ids: Sequence[str] | None = None,
    missing_slice: Sequence[int] | None = None,
    slice_step: float | None = None,
) -> Path:
    """Write a fake raw TCIA release in the exact layout of the real one::

        dst/Pancreas-CT/PANCREAS_XXXX/<study UID>/<series UID>/1-001.dcm ...   one file per slice
        dst/TCIA_pancreas_labels-02-05-2017/labelXXXX.nii.gz

    Cases: the first ``n_train`` ids of the official train.list (PANCREAS_0001, ...) and the first ``n_test`` of
    test.list (PANCREAS_0063, ...), or ``ids``. DICOM as the real headers: implicit VR little endian, CT, signed
    int16 with RescaleSlope 1 / RescaleIntercept 0 (HU), except the second case whose stored values are HU + 1024
    with RescaleIntercept -1024 (exercises the rescale path); ImageOrientationPatient 1\\0\\0\\0\\-1\\0,
    ImagePositionPatient 0\\0\\-k * step (file ``1-(k+1)``, zero-padded to 3 digits, holds slice k+1),
    SliceThickness and SeriesNumber empty; pixel spacing a multiple of 1/128 mm in [0.7, 0.9], slice step 1 mm
    for the first case, 1.0-2.5 mm for the others (:func:`synth_geometry`). ``shape`` = (columns, rows, slices).
    Image: air, fat, soft tissue, spine, a vessel and an elongated pancreas-like blob (50-60 HU, in a pad of
    peripancreatic fat) that the label
    (uint8 {0, 1}, array (column, row, slice)) marks, on exactly the grid ITK reads (affine from the same
    geometry, RAS). ``missing_slice=(case_index, k)`` deletes file ``1-(k+1)`` of that case; ``slice_step`` (mm)
    gives every case that slice spacing (e.g. 2.5: anisotropic as most real series). Deterministic for a
    given seed. Returns ``dst``.
    """
    import nibabel as nib
    from pydicom.uid import generate_uid

    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in shape[:2])
        and isinstance(shape[2], int)
        and shape[2] >= 3
    ):
        raise DatasetError(f"shape must be (columns >= 8, rows >= 8, slices >= 3), got {shape!r}")
    if ids is None:
        for name, v in (("n_train", n_train), ("n_test", n_test)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DatasetError(f"{name} must be a non-negative integer, got {v!r}")
        train, test, _, _ = read_split_lists()
        case_ids = train[:n_train] + test[:n_test]
    else:
        case_ids = [normalize_case_id(i) for i in ids]
        if len(set(case_ids)) != len(case_ids):
            raise DatasetError(f"ids has duplicates: {case_ids}")
    if missing_slice is not None:
        ci, k = (int(v) for v in missing_slice)
        if not (0 <= ci < len(case_ids) and 0 <= k < shape[2]):
            raise DatasetError(
                f"missing_slice={tuple(missing_slice)} is outside {len(case_ids)} cases x {shape[2]} slices"
            )
    dst_p = new_synthetic_folder(dst)
    with atomic_dataset(dst_p) as tmp:
        labels = tmp / LABELS_FOLDER
        labels.mkdir()
        for n, case_id in enumerate(case_ids):
            geom = synth_geometry(n, seed, shape, slice_step)
            rng = np.random.default_rng([seed, n, 11])
            hu, mask = _synth_volume(rng, geom)
            uids = {k: generate_uid(entropy_srcs=[str(seed), case_id, k]) for k in ("study", "series", "frame")}
            folder = tmp / PANCREAS_CT / case_id / uids["study"] / uids["series"]
            folder.mkdir(parents=True)
            intercept = -1024.0 if n == 1 else 0.0
            stored = hu.astype(np.int32) - int(intercept)
            for k in range(geom.shape[2]):
                # DICOM pixel arrays are (row, column) = (j, i)
                _write_slice(
                    folder / f"1-{k + 1:03d}.dcm", stored[:, :, k].T.astype(np.int16), k, geom, case_id, uids, intercept
                )
            if missing_slice is not None and int(missing_slice[0]) == n:
                (folder / f"1-{int(missing_slice[1]) + 1:03d}.dcm").unlink()
            img = nib.Nifti1Image(mask, geom.ras_affine)
            img.header.set_data_dtype(np.uint8)
            img.header.set_xyzt_units("mm")
            img.set_qform(geom.ras_affine, code=1)
            img.set_sform(geom.ras_affine, code=1)
            nib.save(img, str(labels / f"label{case_id[-4:]}.nii.gz"))
    return dst_p


# python -m scripts.data.pancreas in a bundle folder (custom.data.pancreas here), the options of dycon prepare pancreas
if __name__ == "__main__":
    prepare_main(prepare_pancreas, __spec__.name)
