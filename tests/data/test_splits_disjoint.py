"""The test cases are never training cases, for every dataset.

* Every preparation (``prepare_la``, ``prepare_brats19``, ``prepare_pancreas``, ``prepare_isles22``, each on a tiny
  synthetic release of its raw layout) writes a datalist whose ``test`` list shares no case id and no image file with
  ``training`` / ``unlabeled`` / ``validation`` (nor do those three with each other), whose ``unlabeled`` entries
  carry no label, and whose labeled lists do. This is checked here independently of
  ``custom.data.datalist.assert_disjoint`` (which the preparations call themselves).
* The official split lists shipped as package data (BraTS 2019 train/val/test.txt, Pancreas train/test.list,
  ISLES 2022 folds 0-2) are read directly from the files and must be pairwise disjoint, without duplicates. The
  released DyCON code tests Pancreas on PANCREAS_0001-0020 (inside its training list): here those are training
  cases, and the test list is PANCREAS_0063-0082.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from custom.data import brats19, isles22, la, pancreas

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type (SwigPy|swigvarlink):DeprecationWarning"),  # ITK's SWIG
    pytest.mark.filterwarnings("ignore:no test case of the split:UserWarning"),
]

SPLITS = Path(pancreas.__file__).resolve().parent / "splits"
LISTS = ("training", "unlabeled", "validation", "test")


# ------------------------------------------------------------------------------------------- prepared datalists


def _case_id(entry: dict) -> str:
    if "id" in entry:
        return str(entry["id"])
    name = Path(entry["image"]).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _check_datalist(dataset: Path) -> dict:
    """Disjointness (ids and resolved image paths), no label in unlabeled entries, a label in every other entry
    (pointing at an existing file); returns the datalist."""
    dl = json.loads((dataset / "datalist.json").read_text())
    entries = {k: list(dl.get(k) or []) for k in LISTS}
    ids = {k: [_case_id(e) for e in v] for k, v in entries.items()}
    images = {k: [os.path.realpath(dataset / e["image"]) for e in v] for k, v in entries.items()}
    for key in LISTS:
        assert len(set(ids[key])) == len(ids[key]), f"{dataset}: a case twice in {key!r}: {ids[key]}"
        assert len(set(images[key])) == len(images[key]), f"{dataset}: an image twice in {key!r}"
    for a, b in itertools.combinations(LISTS, 2):
        assert not set(ids[a]) & set(ids[b]), f"{dataset}: ids in both {a!r} and {b!r}: {set(ids[a]) & set(ids[b])}"
        assert not set(images[a]) & set(images[b]), f"{dataset}: images in both {a!r} and {b!r}"
    train_side = set().union(*(ids[k] for k in ("training", "unlabeled", "validation")))
    assert ids["test"] and not train_side & set(ids["test"])
    labels = {k: {os.path.realpath(dataset / e["label"]) for e in entries[k] if "label" in e} for k in LISTS}
    assert not labels["test"] & (labels["training"] | labels["validation"]), f"{dataset}: a test label is trained on"
    for e in entries["unlabeled"]:
        assert "label" not in e, f"{dataset}: unlabeled entry with a label: {e}"
    for key in ("training", "validation", "test"):
        for e in entries[key]:
            assert "label" in e and (dataset / e["label"]).is_file(), f"{dataset}: {key} entry without label: {e}"
            assert (dataset / e["image"]).is_file()
    assert entries["training"] and entries["unlabeled"], f"{dataset}: {[len(v) for v in entries.values()]}"
    return dl


def _synth_la(raw: Path) -> Path:
    return la.synth_la(raw, n_train=4, n_test=2, shape=(32, 32, 16), seed=0)


def _synth_brats19(raw: Path) -> Path:
    lists, _ = brats19.official_splits()
    ids = lists["training"][:3] + lists["validation"][:1] + lists["test"][:1]
    return brats19.synth_brats19(raw, ids=ids, shape=(24, 24, 16), seed=0)


def _synth_pancreas(raw: Path) -> Path:
    return pancreas.synth_pancreas(raw, n_train=4, n_test=2, shape=(24, 24, 6), seed=0)


def _synth_isles22(raw: Path) -> Path:
    return isles22.synth_isles22(raw, n_train=3, n_val=1, n_test=1, shape=(24, 24, 8), seed=0)


DATASETS: dict[str, tuple[Callable[[Path], Path], Callable[[Path, Path], Path]]] = {
    # name: (synthetic raw release, preparation with 2 labeled cases: training + unlabeled + validation + test)
    "la": (_synth_la, lambda src, dst: la.prepare_la(src, dst, labeled=2, val=1)),
    "brats19": (_synth_brats19, lambda src, dst: brats19.prepare_brats19(src, dst, labeled=2)),
    "pancreas": (_synth_pancreas, lambda src, dst: pancreas.prepare_pancreas(src, dst, labeled=2, val=1)),
    "isles22": (_synth_isles22, lambda src, dst: isles22.prepare_isles22(src, dst, fold=0, labeled=2)),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_prepared_datalist_disjoint(name: str, tmp_path: Path):
    synth, prepare = DATASETS[name]
    raw = synth(tmp_path / "raw")
    prepare(raw, tmp_path / "prep")
    dl = _check_datalist(tmp_path / "prep")
    counts = [len(dl.get(k) or []) for k in LISTS]
    assert counts[0] == 2 and counts[1] >= 1 and counts[2] >= 1 and counts[3] >= 1, counts


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_isles22_every_fold_disjoint(fold: int, tmp_path: Path):
    """Each DyCON fold prepared from a release holding the head of that fold's own lists."""
    lists = json.loads((SPLITS / "ISLES2022" / f"splits_fold{fold}.json").read_text())
    ids = lists["train"][:3] + lists["val"][:1] + lists["test"][:1]
    raw = isles22.synth_isles22(tmp_path / "raw", ids=ids, shape=(24, 24, 8), seed=fold)
    isles22.prepare_isles22(raw, tmp_path / "prep", fold=fold, labeled=2)
    dl = _check_datalist(tmp_path / "prep")
    assert [_case_id(e) for e in dl["test"]] == lists["test"][:1]
    assert [_case_id(e) for e in dl["validation"]] == lists["val"][:1]


def test_checker_catches_overlap(tmp_path: Path):
    """The check above is not vacuous: a test case that is also a training (or unlabeled) case fails it, and so
    does a label in an unlabeled entry."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in "abcd":
        (tmp_path / "images" / f"{i}.nii.gz").write_bytes(b"")
        (tmp_path / "labels" / f"{i}.nii.gz").write_bytes(b"")

    def entry(i: str, label: bool = True) -> dict:
        return {"image": f"images/{i}.nii.gz", **({"label": f"labels/{i}.nii.gz"} if label else {}), "id": i}

    good = {"training": [entry("a")], "unlabeled": [entry("b", False)], "validation": [entry("c")],
            "test": [entry("d")]}
    bad = [
        {**good, "test": [entry("a")]},  # test case = labeled training case
        {**good, "test": [entry("b")]},  # test case = unlabeled case
        {**good, "test": [{**entry("d"), "image": "images/c.nii.gz"}]},  # other id, same image as a validation case
        {**good, "unlabeled": [entry("b")]},  # unlabeled entry with a label
    ]
    (tmp_path / "datalist.json").write_text(json.dumps(good))
    _check_datalist(tmp_path)
    for dl in bad:
        (tmp_path / "datalist.json").write_text(json.dumps(dl))
        with pytest.raises(AssertionError):
            _check_datalist(tmp_path)


# ---------------------------------------------------------------------------------------- shipped split lists


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _assert_pairwise_disjoint(lists: dict[str, list[str]], where: str) -> None:
    for key, ids in lists.items():
        assert ids, f"{where}: {key} is empty"
        dup = sorted({i for i in ids if ids.count(i) > 1})
        assert not dup, f"{where}: {key} lists {dup} twice"
    for a, b in itertools.combinations(lists, 2):
        both = sorted(set(lists[a]) & set(lists[b]))
        assert not both, f"{where}: {len(both)} ids in both {a} and {b}: {both[:10]}"


def test_shipped_brats19_split_disjoint():
    folder = SPLITS / "BraTS2019"
    lists = {name: _read_lines(folder / name) for name in ("train.txt", "val.txt", "test.txt")}
    _assert_pairwise_disjoint(lists, str(folder))
    assert [len(v) for v in lists.values()] == [250, 25, 60]


def test_shipped_pancreas_split_disjoint():
    folder = SPLITS / "Pancreas"
    lists = {name: [pancreas.normalize_case_id(i) for i in _read_lines(folder / name)]
             for name in ("train.list", "test.list")}
    _assert_pairwise_disjoint(lists, str(folder))
    assert lists["train.list"] == [f"PANCREAS_{i:04d}" for i in range(1, 63)]
    assert lists["test.list"] == [f"PANCREAS_{i:04d}" for i in range(63, 83)]
    released_test1 = [f"PANCREAS_{i:04d}" for i in range(1, 21)]  # the released DyCON code's test list
    assert not set(released_test1) & set(lists["test.list"])


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_shipped_isles22_fold_disjoint(fold: int):
    path = SPLITS / "ISLES2022" / f"splits_fold{fold}.json"
    data = json.loads(path.read_text())
    lists = {key: list(data[key]) for key in ("train", "val", "test")}
    _assert_pairwise_disjoint(lists, str(path))
    assert [len(v) for v in lists.values()] == [200, 25, 25]


def test_shipped_isles22_folds_cover_the_same_cases():
    """The three folds re-split one set of 250 cases (so each fold's test list is unseen by that fold only)."""
    cases = []
    for fold in range(3):
        data = json.loads((SPLITS / "ISLES2022" / f"splits_fold{fold}.json").read_text())
        cases.append(set(data["train"]) | set(data["val"]) | set(data["test"]))
    assert len(cases[0]) == 250 and cases[0] == cases[1] == cases[2]
