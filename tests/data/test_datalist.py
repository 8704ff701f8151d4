"""Generic split / datalist / atomic-writer helpers (custom.data.datalist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom.data.datalist import (
    DatasetError,
    Split,
    assert_disjoint,
    atomic_dataset,
    build_datalist,
    carve_validation,
    check_destination,
    read_datalist,
    read_id_list,
    select_labeled,
    split_training,
    write_datalist,
)

IDS = [f"case{i:02d}" for i in range(20)]


# ---------------------------------------------------------------------------------------------- selection


def test_default_is_first_n_in_list_order():
    assert select_labeled(IDS, labeled=4) == IDS[:4]
    assert select_labeled(list(reversed(IDS)), labeled=2) == ["case19", "case18"]
    assert select_labeled(IDS, default=3) == IDS[:3]
    assert select_labeled(IDS, labeled=20) == IDS


def test_fraction_rounds_half_up_on_available_cases():
    assert select_labeled(IDS, fraction=0.1) == IDS[:2]
    assert select_labeled(IDS, fraction=0.125) == IDS[:3]  # 2.5 -> 3
    assert len(select_labeled(IDS * 1 + [f"x{i}" for i in range(60)], fraction=0.1)) == 8  # 10 % of 80
    assert select_labeled(IDS, fraction=1) == IDS


def test_random_is_seeded_deterministic_and_keeps_list_order():
    a = select_labeled(IDS, labeled=5, random=True, seed=7)
    assert a == select_labeled(IDS, labeled=5, random=True, seed=7)
    assert a != IDS[:5]
    assert a == [i for i in IDS if i in set(a)]
    assert select_labeled(IDS, labeled=5, random=True, seed=8) != a
    # the draw depends on the ids, not on their order in the list
    assert set(select_labeled(list(reversed(IDS)), labeled=5, random=True, seed=7)) == set(a)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labeled": 2, "fraction": 0.1}, "not both"),
        ({"labeled": 21}, "21 labeled cases asked but only 20"),
        ({"labeled": 0}, "labeled must be >= 1"),
        ({"labeled": 2.5}, "labeled must be an integer"),
        ({"labeled": True}, "labeled must be an integer"),
        ({"fraction": 0.0}, "fraction must be a number in (0, 1]"),
        ({"fraction": 1.5}, "fraction must be a number in (0, 1]"),
        ({"fraction": 0.01}, "less than one labeled case"),
        ({}, "give labeled"),
        ({"labeled": 2, "random": "yes"}, "random must be True or False"),
    ],
)
def test_selection_errors(kwargs, message):
    with pytest.raises(DatasetError, match=None) as err:
        select_labeled(IDS, **kwargs)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI turns ValueError into a one-line error, exit 2


def test_duplicate_ids_rejected():
    with pytest.raises(DatasetError, match="duplicate ids: case01"):
        select_labeled(IDS + ["case01"], labeled=1)


def test_carve_validation_last_n_or_random():
    rest, val = carve_validation(IDS, val=3)
    assert val == IDS[-3:] and rest == IDS[:-3]
    rest, val = carve_validation(IDS, val=3, random=True, seed=1)
    assert len(val) == 3 and set(rest) | set(val) == set(IDS) and not set(rest) & set(val)
    assert (rest, val) == carve_validation(IDS, val=3, random=True, seed=1)
    assert carve_validation(IDS, val=0) == (IDS, [])
    with pytest.raises(DatasetError, match="val=20 validation cases asked but only 20"):
        carve_validation(IDS, val=20)
    with pytest.raises(DatasetError, match="val must be >= 0"):
        carve_validation(IDS, val=-1)


def test_split_training_val_removed_from_labeled_and_unlabeled():
    s = split_training(IDS, labeled=4, val=5)
    assert s.labeled == IDS[:4]
    assert s.validation == IDS[-5:]
    assert s.unlabeled == IDS[4:-5]
    s = split_training(IDS, fraction=0.5, val=10)  # fraction of what remains after validation
    assert s.labeled == IDS[:5] and s.unlabeled == IDS[5:10]
    with pytest.raises(DatasetError, match="6 labeled cases asked but only 5"):
        split_training(IDS[:7], labeled=6, val=2)
    s = split_training(IDS, labeled=3, val=4, random=True, seed=3)
    everything = s.labeled + s.unlabeled + s.validation
    assert sorted(everything) == sorted(IDS) and len(set(everything)) == len(IDS)


def test_read_id_list(tmp_path: Path):
    p = tmp_path / "train.list"
    p.write_bytes(b"\xef\xbb\xbfA1 \r\nB2\r\n\r\n  C3\n")
    assert read_id_list(p) == ["A1", "B2", "C3"]
    p.write_text("A1\nA1\n")
    with pytest.raises(DatasetError, match="duplicate"):
        read_id_list(p)
    with pytest.raises(DatasetError, match="cannot read id list"):
        read_id_list(tmp_path / "nope.list")


# ----------------------------------------------------------------------------------------------- datalist


def _datalist(split: Split, test: list[str]) -> dict:
    return build_datalist(
        split, test, lambda i: f"images/{i}.nii.gz", lambda i: f"labels/{i}.nii.gz", {"dataset": "TOY"}
    )


def test_build_datalist_schema():
    dl = _datalist(split_training(IDS[:10], labeled=2, val=2), IDS[10:13])
    assert list(dl) == ["training", "unlabeled", "validation", "test", "dycon"]
    assert dl["training"][0] == {"image": "images/case00.nii.gz", "label": "labels/case00.nii.gz", "id": "case00"}
    assert all(set(e) == {"image", "id"} for e in dl["unlabeled"])  # no label key at all
    assert all(set(e) == {"image", "label", "id"} for k in ("training", "validation", "test") for e in dl[k])
    meta = dl["dycon"]
    assert meta["writer"] == "custom.data.datalist" and meta["dataset"] == "TOY"
    assert meta["counts"] == {"training": 2, "unlabeled": 6, "validation": 2, "test": 3}
    assert meta["labeled_ids"] == ["case00", "case01"]
    assert meta["validation_ids"] == ["case08", "case09"]


def test_assert_disjoint():
    dl = _datalist(split_training(IDS[:10], labeled=2, val=2), IDS[10:13])
    assert_disjoint(dl)
    bad = json.loads(json.dumps(dl))
    bad["test"].append({"image": "images/case00.nii.gz", "label": "labels/case00.nii.gz", "id": "case00"})
    with pytest.raises(DatasetError, match="'case00' in both 'training' and 'test'"):
        assert_disjoint(bad)
    bad = json.loads(json.dumps(dl))
    bad["unlabeled"].append({"image": "images/case05.nii.gz", "id": "other"})  # same image under another id
    with pytest.raises(DatasetError, match="unlabeled"):
        assert_disjoint(bad)
    bad = json.loads(json.dumps(dl))
    bad["validation"].append(dict(bad["validation"][0]))
    with pytest.raises(DatasetError, match="twice in 'validation'"):
        assert_disjoint(bad)
    # entries without an id are compared by their file name
    with pytest.raises(DatasetError, match="'x' in both"):
        assert_disjoint({"training": [{"image": "a/x.nii.gz"}], "test": [{"image": "b/x.nii.gz"}]})


def test_write_and_read_datalist_is_stable(tmp_path: Path):
    dl = _datalist(split_training(IDS[:6], labeled=2), [])
    p1 = write_datalist(dl, tmp_path / "a.json")
    p2 = write_datalist(json.loads(p1.read_text()), tmp_path / "b.json")
    assert p1.read_bytes() == p2.read_bytes()
    assert read_datalist(p1) == dl
    assert read_datalist(p1)["test"] == []


# ------------------------------------------------------------------------------------------ atomic writer


def _fake_dataset(tmp: Path, arguments: dict) -> None:
    (tmp / "images").mkdir()
    (tmp / "images" / "a.txt").write_text("a")
    dl = build_datalist(Split(["a"], [], []), [], lambda i: f"images/{i}.txt", lambda i: f"images/{i}.txt",
                        {"dataset": "TOY", "arguments": arguments})
    write_datalist(dl, tmp / "datalist.json")


def test_atomic_dataset_success_and_failure(tmp_path: Path, leftovers):
    dst = tmp_path / "out" / "ds"
    with atomic_dataset(dst) as tmp:
        assert tmp.name.startswith("ds.partial-") and tmp.parent == dst.parent
        assert not dst.exists()
        _fake_dataset(tmp, {"x": 1})
    assert (dst / "datalist.json").is_file() and leftovers(dst) == ["ds"]

    dst2 = tmp_path / "out" / "ds2"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_dataset(dst2) as tmp:
                _fake_dataset(tmp, {"x": 1})
                raise exc
        assert leftovers(dst2) == []


def test_check_destination_rules(tmp_path: Path, leftovers):
    dst = tmp_path / "ds"
    args = {"src": "/x", "labeled": 2}
    assert check_destination(dst, args) is False  # absent
    dst.mkdir()
    assert check_destination(dst, args) is False  # empty folder: fine
    with atomic_dataset(dst) as tmp:  # replaces the empty folder
        _fake_dataset(tmp, args)
    assert check_destination(dst, dict(args)) is True  # same arguments: nothing to do
    assert check_destination(dst, args, overwrite=True) is False  # rebuild asked
    with pytest.raises(DatasetError, match="other arguments"):
        check_destination(dst, {"src": "/x", "labeled": 3})
    assert check_destination(dst, {"src": "/x", "labeled": 3}, overwrite=True) is False
    # replacing our own dataset works and leaves no .old / .partial folder
    with atomic_dataset(dst) as tmp:
        _fake_dataset(tmp, {"src": "/x", "labeled": 3})
    assert read_datalist(dst)["dycon"]["arguments"]["labeled"] == 3
    assert leftovers(dst) == ["ds"]


def test_foreign_destination_is_never_touched(tmp_path: Path, leftovers):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match="not a dataset written by dycon prepare"):
            check_destination(foreign, {}, overwrite=overwrite)
    (foreign / "datalist.json").write_text('{"training": []}')  # a datalist, but not ours
    with pytest.raises(DatasetError, match="refusing to touch it"):
        check_destination(foreign, {}, overwrite=True)
    # even without the check, the writer refuses to replace it at the end and cleans up its temp folder
    with pytest.raises(DatasetError, match="not a dataset written by us"):
        with atomic_dataset(foreign) as tmp:
            _fake_dataset(tmp, {})
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert leftovers(foreign) == ["mine"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="not a dataset"):
        check_destination(a_file, {})


def test_check_complete_names_every_case_or_returns_them_for_skipping():
    from custom.data.datalist import check_complete

    problems = {"case07": "label file missing", "case02": "empty case folder"}
    with pytest.raises(DatasetError) as err:
        check_complete(problems, False, "TOY release")
    text = str(err.value)
    assert "2 case(s)" in text and "case02: empty case folder" in text and "case07: label file missing" in text
    assert "nothing was written" in text and "--skip-incomplete" in text
    assert check_complete(problems, True) == {"case02": "empty case folder", "case07": "label file missing"}
    assert check_complete({}, False) == {}
    with pytest.raises(DatasetError, match="skip_incomplete must be True or False"):
        check_complete({}, "yes")
    split = split_training(IDS[:6], labeled=2)
    dl = _datalist(split, [])
    assert dl["dycon"]["skipped"] == {}
    skipped = build_datalist(split, [], str, str, {"dataset": "TOY"}, skipped={"case07": "label file missing"})
    assert skipped["dycon"]["skipped"] == {"case07": "label file missing"}
