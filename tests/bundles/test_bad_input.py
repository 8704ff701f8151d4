"""Bad input through ``python -m monai.bundle run`` of the LA bundle: a non-zero exit, one clear message naming the
file and the problem (raised by ``scripts.data.check_dataset``, the first ``initialize`` step), and no output written
(neither --output_dir nor --ckpt_dir is created). Run from the bundle folder, as users do.

MONAI wraps an exception of a config expression in ``RuntimeError: Failed to evaluate ConfigExpression ...``; the
bundles install ``scripts.errors.install_excepthook`` first, so the user sees one line ``dycon: error: <message>``
and no traceback (``DYCON_TRACEBACK=1`` brings it back).
In-process cases: tests/data/test_validation.py; preparation-side cases: tests/data/test_{la,pancreas,brats19}.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_utils import ENV, Bundle

LA = Bundle("dycon_la")
SHAPE = (16, 16, 12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made prepared LA-like dataset: 1 labeled, 1 unlabeled, 1 test case."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "unlabeled": [], "validation": [], "test": []}
    for k, key in enumerate(("training", "unlabeled", "test")):
        img, lab = f"images/c{k}.nii.gz", f"labels/c{k}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), np.eye(4)), str(root / img))
        nib.save(nib.Nifti1Image((rng.random(SHAPE) > 0.5).astype(np.uint8), np.eye(4)), str(root / lab))
        lists[key].append({"image": img, "label": lab} if key != "unlabeled" else {"image": img})
    (root / "datalist.json").write_text(json.dumps(lists))
    return root


def _write_nifti(path: Path, fn: Callable[[np.ndarray], None]) -> None:
    img = nib.load(path)
    a = np.asanyarray(img.dataobj).copy()
    fn(a)
    nib.save(nib.Nifti1Image(a, img.affine), str(path))


def _nan(a: np.ndarray) -> None:
    a[1, 2, 3] = np.nan


def _three(a: np.ndarray) -> None:
    a[0, 0, 0] = 3


def _empty_labeled(ds: Path) -> None:
    lists = json.loads((ds / "datalist.json").read_text())
    lists["training"] = []
    (ds / "datalist.json").write_text(json.dumps(lists))


CASES = {
    # name: (mutation of the copied dataset, extra args, exception type, pattern the message must match)
    "missing_dataset_dir": (lambda ds: shutil.rmtree(ds), (), "FileNotFoundError", r"dataset folder not found: .*ds"),
    "missing_file": (
        lambda ds: (ds / "labels" / "c0.nii.gz").unlink(),
        (),
        "DatasetError",
        r"points to a missing file: .*labels/c0\.nii\.gz",
    ),
    "wrong_channels": (lambda ds: None, ("--in_channels", "2"), "DatasetError", r"images/c0\.nii\.gz: .*in_channels=2"),
    "nan_voxel": (
        lambda ds: _write_nifti(ds / "images" / "c1.nii.gz", _nan),
        (),
        "DatasetError",
        r"images/c1\.nii\.gz: image has non-finite voxels",
    ),
    "label_value_3": (
        lambda ds: _write_nifti(ds / "labels" / "c0.nii.gz", _three),
        (),
        "DatasetError",
        r"labels/c0\.nii\.gz: label values 3 outside",
    ),
    "empty_labeled": (_empty_labeled, (), "DatasetError", r"'training' list is empty"),
}


def _failed_run(bundle: Bundle, *args: str) -> str:
    """``python -m monai.bundle run <args>`` from ``bundle``'s folder, which must fail: returns its single
    ``dycon: error:`` line (and there is no traceback)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=bundle.root, env=ENV, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("dycon: error: ")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(tiny: Path, tmp_path: Path, case: str):
    mutate, extra, exc, pattern = CASES[case]
    ds = tmp_path / "ds"
    shutil.copytree(tiny, ds)
    mutate(ds)
    out_dir, ckpt_dir = tmp_path / "out" / "eval", tmp_path / "out" / "models"
    last = _failed_run(
        LA,
        "--bundle_root", ".",
        "--config_file", LA.train_yaml,
        "--dataset_dir", str(ds),
        "--output_dir", str(out_dir),
        "--ckpt_dir", str(ckpt_dir),
        "--patch_size", "[16,16,12]",
        "--num_workers", "0",
        *extra,
    )  # fmt: skip
    assert re.search(pattern, last), f"{case}: {last!r} does not match {pattern!r}"
    assert not (tmp_path / "out").exists(), f"{case}: output written: {list((tmp_path / 'out').rglob('*'))}"


def test_evaluate_checks_test_list(tiny: Path, tmp_path: Path):
    """evaluate.yaml checks the test list only (labeled-list problems do not block an evaluation)."""
    ds = tmp_path / "ds"
    shutil.copytree(tiny, ds)
    _write_nifti(ds / "labels" / "c2.nii.gz", _three)
    last = _failed_run(
        LA,
        "--bundle_root", ".",
        "--config_file", f"['{LA.train_yaml}','{LA.evaluate_yaml}']",
        "--dataset_dir", str(ds),
        "--output_dir", str(tmp_path / "out" / "eval"),
        "--ckpt_dir", str(tmp_path / "out" / "models"),
        "--num_workers", "0",
    )  # fmt: skip
    assert re.search(r"labels/c2\.nii\.gz: label values 3 outside", last), last
    assert not (tmp_path / "out").exists()


def test_full_traceback_on_request(tiny: Path, tmp_path: Path):
    """DYCON_TRACEBACK=1 keeps MONAI's chained traceback, with our exception at its origin."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--bundle_root", ".", "--config_file", LA.train_yaml,
        "--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out"), "--num_workers", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=LA.root, env={**ENV, "DYCON_TRACEBACK": "1"}, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" in out and "FileNotFoundError" in out


def _flat(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), str(path))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _two_channels(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((16, 16, 12, 2), np.float32), np.eye(4)), str(path))


def _nan_study(path: Path) -> None:
    a = np.ones((16, 16, 12), np.float32)
    a[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(path))


INFERENCE_CASES = {
    # name: (bundle, writer of the bad raw study, pattern of the one error line)
    "2d_image": ("dycon_la", _flat, r"study\.nii\.gz: image must be 3-D .* got shape \(16, 16\)"),
    "empty_file": ("dycon_brats19", _empty, r"study\.nii\.gz: unreadable or corrupt image file"),
    "wrong_modality_count": (
        "dycon_isles22",
        _two_channels,
        r"study\.nii\.gz: input has 2 channel\(s\) but the bundle expects in_channels=1",
    ),
    "nan_voxel": ("dycon_pancreas", _nan_study, r"study\.nii\.gz: image has non-finite voxels"),
}


@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_inference_bad_raw_study_fails_cleanly(tmp_path: Path, case: str):
    """inference.yaml checks its raw inputs first (scripts.data.check_inputs): one line naming the file, nothing
    written."""
    name, write, pattern = INFERENCE_CASES[case]
    bundle = Bundle(name)
    study = tmp_path / "study.nii.gz"
    write(study)
    out = tmp_path / "out"
    last = _failed_run(
        bundle,
        "--config_file", bundle.inference_yaml,
        "--input_path", str(study), "--output_dir", str(out), "--ckpt_path", str(tmp_path / "no_model.pt"),
        "--num_workers", "0",
    )  # fmt: skip
    assert re.search(pattern, last), f"{case}: {last!r} does not match {pattern!r}"
    assert not out.exists()
