"""What the bundle configs call to read a prepared dataset and build the training streams.

train#dataset#data:    $custom.data.load_split(@datalist, 'training')
train#dataloader:      $custom.data.stream_loader(@train#dataset, @labeled_batch_size, @seed, @num_workers)
inference inputs:      $custom.data.inference_inputs(@input_path)   (files, DICOM series folders, datalist.json)
output names:          SaveImaged(output_name_formatter=$custom.data.loaders.output_name)
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from monai.data import DataLoader

from ..samplers import InfiniteSeededSampler, SeededDataset
from .datalist import DatasetError

logger = logging.getLogger(__name__)

__all__ = [
    "NIFTI_SUFFIXES",
    "check_dicom_series",
    "dicom_series_folders",
    "inference_inputs",
    "load_split",
    "output_name",
    "stream_loader",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_PATH_KEYS = ("image", "label")


def load_split(
    datalist: str | os.PathLike[str], key: str, base_dir: str | os.PathLike[str] | None = None, check_files: bool = True
) -> list[dict[str, Any]]:
    """The entries of one list of a ``datalist.json`` with absolute paths.

    Unlike ``monai.data.load_decathlon_datalist`` an empty or absent list gives ``[]`` (LA has no validation list),
    and every referenced file is checked, so a wrong path fails at start-up with the file named.

    Args:
        datalist: path of ``datalist.json``.
        key: ``training``, ``unlabeled``, ``validation`` or ``test``.
        base_dir: folder the relative paths are relative to (default: the datalist's folder).
        check_files: raise :class:`DatasetError` when a referenced file does not exist.

    Entries of every list but ``unlabeled`` must have a ``label``; a ``label`` in an ``unlabeled`` entry is dropped
    (with a warning), so the labels of unlabeled cases are never loaded.

    Returns:
        list of dicts with ``image`` (and ``label`` where the list has labels) as absolute paths.
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path} (prepare the dataset first, e.g. 'dycon prepare la')")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable datalist JSON ({err})") from err
    entries = content.get(key) or []
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
    base = Path(base_dir) if base_dir is not None else path.parent
    labeled = key != "unlabeled"
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{path}: entry {i} of '{key}' has no 'image'")
        item = dict(entry)
        if labeled and "label" not in item:
            raise DatasetError(f"{path}: entry {i} of '{key}' ({item['image']}) has no 'label'")
        if not labeled and item.pop("label", None) is not None:
            logger.warning(
                "%s: dropped the 'label' of unlabeled entry %d: unlabeled cases are used without labels", path, i
            )
        for k in _PATH_KEYS:
            if k in item:
                p = Path(item[k])
                p = p if p.is_absolute() else base / p
                if check_files and not p.is_file():
                    raise DatasetError(f"{path}: '{key}' entry {i} points to a missing file: {p}")
                item[k] = str(p)
        out.append(item)
    return out


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def stream_loader(
    dataset: Any,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    shuffle: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    what: str = "training",
) -> DataLoader | None:
    """An endless, seeded, resumable loader over ``dataset`` (see :mod:`custom.samplers`), or None when the dataset
    is empty (the trainer then trains without it: no unlabeled data -> supervised).

    Under ``torch.distributed`` each rank gets a disjoint shard of every pass (rank / world size are read from the
    process group unless given).
    """
    if len(dataset) == 0:
        if what == "training":
            raise DatasetError("the labeled training list is empty: at least one labeled case is needed")
        return None
    if batch_size < 1:
        raise DatasetError(f"batch size must be >= 1, got {batch_size}")
    r, w = _dist_rank_world()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    salt = {"training": 0, "unlabeled": 1}.get(what, 2)
    sampler = InfiniteSeededSampler(
        len(dataset), seed=seed * 4 + salt, shuffle=shuffle, rank=rank, world_size=world_size
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
    )


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble magic (``DICM`` at byte 128: series without suffix)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_series_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """The folders at or below ``folder`` that directly hold DICOM files (each one series = one study), sorted."""
    root = Path(folder)
    found = []
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        try:
            files = [p for p in d.iterdir() if p.is_file()]
        except OSError:
            continue
        if any(_is_dicom_file(p) for p in files):
            found.append(d)
    return found


def check_dicom_series(folder: str | os.PathLike[str]) -> Path:
    """One DICOM series folder as an inference input: DatasetError unless its DICOM files share one
    SeriesInstanceUID (ITK would silently read only one of several series) and are at least two slices."""
    import itk

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_dicom_file(p))
    try:  # GDCM (through ITK, which reads the series) groups the files by SeriesInstanceUID
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(False)
        names.SetDirectory(str(folder))
        uids = set(names.GetSeriesUIDs())
    except Exception as err:  # ITK raises RuntimeError on unreadable folders / files
        raise DatasetError(f"{folder}: unreadable DICOM series ({type(err).__name__}: {err})") from err
    if len(uids) > 1:
        raise DatasetError(f"{folder} holds {len(uids)} DICOM series; give one series folder per study")
    if len(files) < 2:
        raise DatasetError(f"{folder}: a DICOM series of {len(files)} slice(s) is not a 3-D study")
    return folder.resolve()


def inference_inputs(input_path: str | os.PathLike[str] | Sequence[str], key: str = "test") -> list[dict[str, str]]:
    """Inference inputs as ``[{"image": path}, ...]``.

    ``input_path`` is an image file (NIfTI, nrrd, mha), a DICOM series folder (the folder holding the slices of
    one series: one study, read by MONAI's ITKReader), a folder of image files, a folder with DICOM series
    folders below it (e.g. ``Pancreas-CT``: one input per series folder), a ``datalist.json`` (its ``key`` list,
    default ``test``) or a list of files / series folders.
    """
    if isinstance(input_path, (list, tuple)):
        return [{"image": str(check_dicom_series(p) if Path(p).is_dir() else Path(p).resolve())} for p in input_path]
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"inference input not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
        if files:
            return [{"image": str(p.resolve())} for p in files]
        series = dicom_series_folders(path)
        if not series:
            raise DatasetError(f"no image files ({', '.join(NIFTI_SUFFIXES)}) or DICOM series in {path}")
        return [{"image": str(check_dicom_series(p))} for p in series]
    if path.name.lower().endswith(".json"):
        return [{"image": e["image"]} for e in load_split(path, key)]
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise DatasetError(
            f"{path}: not an image file ({', '.join(NIFTI_SUFFIXES)}), DICOM series folder, folder or datalist.json"
        )
    return [{"image": str(path.resolve())}]


_UID_RE = re.compile(r"^[0-9.]+$")


def output_name(metadict: dict[str, Any] | None, saver: Any) -> dict[str, Any]:
    """``SaveImaged(output_name_formatter=...)``: MONAI's file naming, except for a DICOM series folder input,
    named after its folder (a UID-like folder name, digits and dots, gives way to its parent's, so the synthetic
    ``PANCREAS_0063/<study UID>/<series UID>`` gives ``PANCREAS_0063_seg.nii.gz``)."""
    from monai.data.folder_layout import default_name_formatter

    out = default_name_formatter(metadict or {}, saver)
    path = Path(str(out["subject"]))
    if path.is_dir():
        named = path
        while _UID_RE.match(named.name) and named.parent != named:
            named = named.parent
        out["subject"] = f"{named.name if not _UID_RE.match(named.name) else path.name}.dicom"
    return out
