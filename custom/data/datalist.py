"""Dataset-independent pieces of data preparation: labeled/unlabeled/validation split, ``datalist.json``, and an
atomic, idempotent dataset writer. Used by every ``dycon prepare <dataset>`` command.

Split conventions (shared by LA, BraTS, Pancreas, ISLES):

* The labeled set is the FIRST ``N`` ids of the official (ordered) training list, as in the semi-supervised
  literature, so that numbers stay comparable. ``random=True`` draws them instead with a seeded, platform- and
  version-independent rule (ids ranked by ``sha256("<seed>:<salt>:<id>")``), reported in the metadata.
* ``labeled`` (a count) and ``fraction`` (a share of the training cases that remain after carving validation
  cases) are mutually exclusive; the count is never clipped: asking for more labeled cases than exist is an error.
* ``val`` cases are carved out of the training list BEFORE the labeled set is chosen (so they are neither labeled
  nor unlabeled): the LAST ``val`` ids of the list, or a seeded random draw when ``random=True``.

``datalist.json`` (paths relative to the dataset folder, as MONAI's ``load_decathlon_datalist`` expects with
``base_dir`` = that folder, which is its default)::

    {
      "training":   [{"image": "images/A.nii.gz", "label": "labels/A.nii.gz", "id": "A"}, ...],   # labeled
      "unlabeled":  [{"image": "images/B.nii.gz", "id": "B"}, ...],                              # no label key
      "validation": [{"image": ..., "label": ..., "id": ...}, ...],                              # may be []
      "test":       [{"image": ..., "label": ..., "id": ...}, ...],                              # may be []
      "dycon":      {"writer": "custom.data.datalist", "format_version": 1, "dataset": ..., "counts": ...,
                     "labeled_ids": [...], "arguments": {...}, ...}
    }

Note: MONAI 1.6's ``load_decathlon_datalist(..., data_list_key="test")`` raises IndexError on an EMPTY list (it
peeks at ``expected_data[0]``); callers that may see ``"test": []`` should read the json themselves first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATALIST_NAME",
    "FORMAT_VERSION",
    "SPLIT_KEYS",
    "WRITER",
    "DatasetError",
    "Split",
    "assert_disjoint",
    "atomic_dataset",
    "build_datalist",
    "carve_validation",
    "check_complete",
    "check_destination",
    "read_datalist",
    "read_id_list",
    "select_labeled",
    "split_training",
    "write_datalist",
]

DATALIST_NAME = "datalist.json"
WRITER = "custom.data.datalist"
FORMAT_VERSION = 1
SPLIT_KEYS = ("training", "unlabeled", "validation", "test")


class DatasetError(ValueError):
    """A problem with the input data or the requested split that the user can fix (the CLI prints it, exit 2)."""


# --------------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    """Training ids divided into labeled / unlabeled / validation (each in the order of the training list)."""

    labeled: list[str]
    unlabeled: list[str]
    validation: list[str]


def _check_ids(ids: Sequence[str], what: str = "training list") -> list[str]:
    ids = [str(i) for i in ids]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DatasetError(f"{what} has duplicate ids: {', '.join(dup)}")
    return ids


def _rank(ids: Sequence[str], seed: int, salt: str) -> list[str]:
    """Seeded shuffle that only depends on (seed, salt, id): stable across Python/NumPy versions and list order."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{salt}:{i}".encode()).hexdigest())


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DatasetError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise DatasetError(f"{name} must be True or False, got {value!r}")
    return value


def select_labeled(
    ids: Sequence[str],
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    default: int | None = None,
) -> list[str]:
    """Choose the labeled ids from an ordered id list.

    ``labeled`` is a count, ``fraction`` a share of ``len(ids)`` in (0, 1] rounded half up (at least one case must
    result); at most one of them may be given, and ``default`` (a count) is used when neither is. The default rule
    takes the FIRST ids of ``ids``; ``random=True`` takes a seeded draw. The result keeps the order of ``ids``.
    Raises DatasetError when more labeled cases are asked than exist (never clips).
    """
    ids = _check_ids(ids)
    _check_bool(random, "random")
    _check_int(seed, "seed", minimum=-(2**63))
    if labeled is not None and fraction is not None:
        raise DatasetError(
            f"give either labeled (a count) or fraction (a share), not both (got labeled={labeled!r}, "
            f"fraction={fraction!r})"
        )
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise DatasetError(f"fraction must be a number in (0, 1], got {fraction!r}")
        n = math.floor(fraction * len(ids) + 0.5)
        if n < 1:
            raise DatasetError(
                f"fraction={fraction} of {len(ids)} training cases is less than one labeled case; "
                "give a larger fraction or a labeled count"
            )
    elif labeled is not None:
        n = _check_int(labeled, "labeled", minimum=1)
    elif default is not None:
        n = _check_int(default, "default labeled count", minimum=1)
    else:
        raise DatasetError("give labeled (a count) or fraction (a share) of labeled training cases")
    if n > len(ids):
        raise DatasetError(
            f"{n} labeled cases asked but only {len(ids)} training cases are available "
            "(after removing validation cases and cases absent from the source)"
        )
    chosen = set(_rank(ids, seed, "labeled")[:n]) if random else set(ids[:n])
    return [i for i in ids if i in chosen]


def carve_validation(
    ids: Sequence[str], val: int = 0, random: bool = False, seed: int = 1337
) -> tuple[list[str], list[str]]:
    """Remove ``val`` cases from an ordered training list: the LAST ``val`` ids, or a seeded draw if ``random``.

    Returns ``(remaining, validation)``, both in the order of ``ids``. At least one training case must remain.
    """
    ids = _check_ids(ids)
    val = _check_int(val, "val", minimum=0)
    _check_bool(random, "random")
    if val == 0:
        return list(ids), []
    if val >= len(ids):
        raise DatasetError(
            f"val={val} validation cases asked but only {len(ids)} training cases are available "
            "(at least one must stay for training)"
        )
    chosen = set(_rank(ids, seed, "validation")[:val]) if random else set(ids[len(ids) - val :])
    return [i for i in ids if i not in chosen], [i for i in ids if i in chosen]


def split_training(
    ids: Sequence[str],
    labeled: int | None = None,
    fraction: float | None = None,
    random: bool = False,
    seed: int = 1337,
    val: int = 0,
    default_labeled: int | None = None,
) -> Split:
    """Carve validation cases, then select labeled cases from what remains; the rest is unlabeled."""
    remaining, validation = carve_validation(ids, val=val, random=random, seed=seed)
    lab = select_labeled(
        remaining, labeled=labeled, fraction=fraction, random=random, seed=seed, default=default_labeled
    )
    lab_set = set(lab)
    return Split(labeled=lab, unlabeled=[i for i in remaining if i not in lab_set], validation=validation)


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Read a ``train.list``-style file: one id per line; blank lines and surrounding whitespace ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read id list {path}: {err}") from err
    return _check_ids([line.strip() for line in text.splitlines() if line.strip()], what=str(path))


# ------------------------------------------------------------------------------------------------ datalist


def check_complete(problems: Mapping[str, str], skip_incomplete: Any, what: str = "release") -> dict[str, str]:
    """The common rule for cases that cannot be prepared (missing or empty files, a listed case absent, a label
    whose geometry disagrees with its image, ...): ``problems`` maps each such case id to its reason.

    Without ``skip_incomplete`` any problem is a :class:`DatasetError` that names every case and its reason (the
    caller raises it before writing anything). With it, the cases are returned (``id -> reason``, sorted) for the
    caller to leave out, print in its summary and record in the datalist (``build_datalist(..., skipped=...)``).
    """
    skip = _check_bool(skip_incomplete, "skip_incomplete")
    problems = {str(k): str(v) for k, v in sorted(problems.items())}
    if problems and not skip:
        listed = "; ".join(f"{i}: {r}" for i, r in problems.items())
        raise DatasetError(
            f"{what}: {len(problems)} case(s) cannot be prepared ({listed}); nothing was written. Fix them, or pass "
            "--skip-incomplete to leave them out (they are then listed in the summary and the datalist)"
        )
    return problems


def build_datalist(
    split: Split,
    test: Sequence[str],
    image_path: Callable[[str], str],
    label_path: Callable[[str], str],
    metadata: Mapping[str, Any],
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Assemble the datalist dict. ``image_path``/``label_path`` map an id to a path relative to the dataset dir.

    ``unlabeled`` entries carry NO ``label`` key (their label files may exist on disk, e.g. to evaluate
    pseudo-labels, but training code must not see them). ``metadata`` goes into the ``dycon`` block, completed
    with the writer marker, counts and the labeled ids; ``skipped`` (case id -> reason, from
    :func:`check_complete` with ``--skip-incomplete``) goes there too, as ``"skipped"``.
    """

    def labeled_entry(i: str) -> dict[str, str]:
        return {"image": image_path(i), "label": label_path(i), "id": i}

    datalist: dict[str, Any] = {
        "training": [labeled_entry(i) for i in split.labeled],
        "unlabeled": [{"image": image_path(i), "id": i} for i in split.unlabeled],
        "validation": [labeled_entry(i) for i in split.validation],
        "test": [labeled_entry(i) for i in test],
    }
    meta: dict[str, Any] = {"writer": WRITER, "format_version": FORMAT_VERSION}
    meta.update(metadata)
    meta["counts"] = {k: len(datalist[k]) for k in SPLIT_KEYS}
    meta["labeled_ids"] = list(split.labeled)
    meta["validation_ids"] = list(split.validation)
    meta["skipped"] = dict(skipped or {})
    datalist["dycon"] = meta
    assert_disjoint(datalist)
    return datalist


def _entry_id(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if "id" in entry:
        return str(entry["id"])
    name = Path(str(entry["image"])).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".h5", ".npy"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def assert_disjoint(datalist: Mapping[str, Any]) -> None:
    """Raise DatasetError if a case (by id, and by image path) is in two of training/unlabeled/validation/test,
    or twice in one of them."""
    owner: dict[str, str] = {}
    problems: list[str] = []
    for key in SPLIT_KEYS:
        for entry in datalist.get(key, []) or []:
            names = {_entry_id(entry)}
            if isinstance(entry, Mapping) and "image" in entry:
                names.add(f"image:{os.path.normpath(str(entry['image']))}")
            for name in names:
                if name in owner:
                    problems.append(
                        f"{name!r} in both {owner[name]!r} and {key!r}"
                        if owner[name] != key
                        else f"{name!r} twice in {key!r}"
                    )
                else:
                    owner[name] = key
    if problems:
        raise DatasetError("datalist splits overlap: " + "; ".join(sorted(set(problems))))


def write_datalist(datalist: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``datalist`` as stable, indented JSON (no timestamps: identical input gives identical bytes)."""
    assert_disjoint(datalist)
    path = Path(path)
    path.write_text(json.dumps(datalist, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_datalist(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``datalist.json`` (a file, or a dataset folder containing one)."""
    path = Path(path)
    if path.is_dir():
        path = path / DATALIST_NAME
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------ atomic writer


def _normalize(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _our_metadata(dst: Path) -> dict[str, Any] | None:
    """The ``dycon`` block of ``dst/datalist.json`` if dst is a dataset written by us, else None."""
    try:
        meta = read_datalist(dst / DATALIST_NAME).get("dycon")
    except (OSError, ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("writer") == WRITER else None


def _state(dst: Path) -> str:
    if not os.path.lexists(dst):
        return "absent"
    if dst.is_dir() and not dst.is_symlink():
        if not any(dst.iterdir()):
            return "empty"
        if _our_metadata(dst) is not None:
            return "ours"
    return "foreign"


def check_destination(dst: str | os.PathLike[str], arguments: Mapping[str, Any], overwrite: bool = False) -> bool:
    """Decide what to do with an existing ``dst`` before any work is done.

    Returns True when ``dst`` is a complete dataset written by us with the same ``arguments`` and ``overwrite`` is
    False (nothing to do: the existing result is what this run would write). Returns False when the dataset must
    be (re)written. Raises DatasetError when ``dst`` exists but is not a dataset written by us (never touched,
    whatever ``overwrite`` says), or was written with other arguments and ``overwrite`` is False.
    """
    dst = Path(dst)
    state = _state(dst)
    if state in ("absent", "empty"):
        return False
    if state == "foreign":
        raise DatasetError(
            f"{dst} exists and is not a dataset written by dycon prepare (no {DATALIST_NAME} with a 'dycon' "
            "block); refusing to touch it: choose another dst or remove it yourself"
        )
    old = _our_metadata(dst) or {}
    if _normalize(old.get("arguments")) == _normalize(dict(arguments)):
        return not overwrite
    if not overwrite:
        raise DatasetError(
            f"{dst} holds a dataset prepared with other arguments ({old.get('arguments')}); pass overwrite=True "
            "(--overwrite) to replace it, or choose another dst"
        )
    return False


@contextmanager
def atomic_dataset(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a sibling temp folder ``<dst>.partial-<pid>`` to write a dataset into; rename it to ``dst`` at the end.

    On any error (or KeyboardInterrupt) the temp folder is removed and ``dst`` is left as it was, so no
    half-finished dataset ever exists at ``dst``. An existing ``dst`` is replaced only if it is empty or a dataset
    written by us (call :func:`check_destination` first to apply the argument check). A process killed with
    SIGKILL can leave a ``*.partial-<pid>`` folder behind; it is never mistaken for a dataset and may be deleted.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _install(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, dst: Path) -> None:
    state = _state(dst)
    if state == "foreign":
        raise DatasetError(f"{dst} appeared while writing and is not a dataset written by us; not replacing it")
    if state in ("absent", "empty"):
        os.replace(tmp, dst)  # rename(2) may replace an empty directory
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    if os.path.lexists(old):
        shutil.rmtree(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- shared by every preparation


def check_outside(src: Path, dst: Path) -> None:
    """Refuse a destination inside the source (or the reverse): raw data are never modified in place."""
    src_r, dst_r = Path(src).resolve(), Path(dst).resolve()
    if dst_r == src_r or src_r in dst_r.parents or dst_r in src_r.parents:
        raise DatasetError(f"dst {dst} must be outside src {src} (raw data are never modified in place)")


def present_in_lists(
    lists: Mapping[str, Sequence[str]], present: Any
) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """Match official split lists with the cases found in a release.

    Args:
        lists: list name -> ordered ids (e.g. ``{"training": [...], "test": [...]}``).
        present: the ids found in the release (any container).

    Returns:
        ``(found, missing, unlisted)``: per list the present ids in list order and the absent ids, and the sorted
        present ids that are in no list.
    """
    found = {key: [i for i in ids if i in present] for key, ids in lists.items()}
    missing = {key: [i for i in ids if i not in present] for key, ids in lists.items()}
    listed = {i for ids in lists.values() for i in ids}
    return found, missing, sorted(i for i in present if i not in listed)


def check_split_arguments(
    labeled: Any, fraction: Any, random: Any, overwrite: Any, skip_incomplete: Any = False
) -> None:
    """The argument checks every ``prepare_*`` starts with: boolean flags, and ``labeled`` xor ``fraction``."""
    for name, flag in (("random", random), ("overwrite", overwrite), ("skip_incomplete", skip_incomplete)):
        _check_bool(flag, name)
    if labeled is not None and fraction is not None:
        raise DatasetError(
            f"give either labeled (a count) or fraction (a share), not both (got labeled={labeled!r}, "
            f"fraction={fraction!r})"
        )


def prepare_main(prepare: Callable[..., Any], module: str) -> None:
    """``python -m <module> ...``: ``prepare`` (a ``prepare_<dataset>`` function) on the command line through
    python-fire, its options as those of ``dycon prepare <dataset>``. Prints the datalist's path; an error a user can
    fix (a :class:`DatasetError`, a missing file, a bad option) is one line on stderr with exit status 2."""
    import fire

    try:
        fire.Fire(prepare, name=module)
    except (FileNotFoundError, ValueError) as err:
        print(f"python -m {module}: error: {err}", file=sys.stderr)
        sys.exit(2)
