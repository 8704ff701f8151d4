"""Helpers shared by the end-to-end bundle tests (``tests/bundles/test_dycon_*.py``).

Every bundle is driven through ``python -m monai.bundle`` in a subprocess from its own folder (the model zoo's way:
``python -m`` puts the working directory on ``sys.path``, which makes the bundle's ``scripts`` package, the configs'
``scripts.<module>.<name>``, importable), exactly as a user types it, with a shrunk network
(``--network_def#features [4,8,16,32,64]`` ...), small patches and its outputs redirected to pytest's tmp dirs.
``Bundle("dycon_la")`` binds the commands to one bundle folder; the ``check_*`` functions assert on what the
commands wrote (model.pt, training checkpoints, metrics files, predictions in the input's geometry). In-process
parsing of the configs (``ConfigParser``, ``ConfigWorkflow``) goes through :func:`bundle_on_path`, which makes
``scripts`` importable the way MONAI Label does.

Imported as ``from bundle_utils import ...``: tests/ has no ``__init__.py`` and pytest's default ``prepend`` import
mode puts the test file's folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from custom.export import bundle_code
from custom.metrics import dice as dice_of
from custom.metrics import iou as iou_of
from custom.networks import UNet3D

REPO = Path(__file__).resolve().parents[2]

SMALL_NET = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
NET_ARGS = [
    "--network_def#features", "[4,8,16,32,64]",
    "--network_def#embed_dim", "16",
    "--network_def#proj_hidden", "32",
]  # fmt: skip
PATCH = "[32,32,32]"
METRICS = ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")
EPOCH_LENGTH = 2  # iterations per epoch (--epoch_length)
TRAIN_EPOCHS = 2  # --max_epochs
TRAIN_ITERS = TRAIN_EPOCHS * EPOCH_LENGTH  # 4 iterations, a validation after each epoch (--val_interval 1)

ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
}


# ------------------------------------------------------------------------------------------------ commands
def free_port() -> int:
    """A free TCP port on 127.0.0.1 (torchrun's rendezvous in the multi-GPU tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def run(*args: str | Path, log: Path | None = None, timeout: int = 600, cwd: Path = REPO) -> str:
    """``python <args>`` in ``cwd`` (the repository root unless told); fails the test (with the output's tail) on a
    non-zero status. Returns stdout + stderr (also written to ``log``)."""
    cmd = [sys.executable, *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(out)
    if proc.returncode != 0:
        pytest.fail(f"exit status {proc.returncode}: {' '.join(cmd)}\n--- output tail ---\n{out[-6000:]}")
    return out


#: parse a bundle's configs in this process with its own ``scripts`` package (MONAI Label's way of switching bundles)
bundle_on_path = bundle_code


def scripts_attr(module: str, name: str) -> Any:
    """``scripts.<module>.<name>`` as the configs parsed inside :func:`bundle_on_path` see it."""
    obj = importlib.import_module(f"scripts.{module}")
    assert Path(obj.__file__).resolve().is_relative_to(REPO / "custom"), obj.__file__  # the bundle's link to custom/
    return getattr(obj, name)


class Bundle:
    """The config files of ``bundles/<name>`` and the ``monai.bundle`` commands on them (small network, small
    patches, all outputs under the given folders), run from the bundle folder as the model zoo does. The config
    attributes are relative to the bundle folder (``configs/train.yaml``); :meth:`path` makes them absolute."""

    def __init__(self, name: str):
        self.name = name
        self.rel = f"bundles/{name}"  # the bundle folder, relative to the repository root
        self.root = REPO / self.rel  # the subprocesses' working directory
        self.train_yaml = "configs/train.yaml"
        self.evaluate_yaml = "configs/evaluate.yaml"
        self.inference_yaml = "configs/inference.yaml"
        self.multi_gpu_yaml = "configs/multi_gpu_train.yaml"
        self.metadata = "configs/metadata.json"
        self.logging_conf = "configs/logging.conf"

    def path(self, rel: str) -> Path:
        """A file of the bundle (``configs/train.yaml``, ``self.train_yaml``) as an absolute path."""
        return self.root / rel

    def run(self, *args: str | Path, log: Path | None = None, timeout: int = 600) -> str:
        """``python <args>`` from the bundle folder (see :func:`run`)."""
        return run(*args, log=log, timeout=timeout, cwd=self.root)

    def on_path(self) -> contextlib.AbstractContextManager[None]:
        """:func:`bundle_on_path` of this bundle."""
        return bundle_on_path(self.root)

    def train(
        self,
        dataset_dir: Path,
        out: Path,
        *extra: str,
        max_epochs: int = TRAIN_EPOCHS,
        epoch_length: int = EPOCH_LENGTH,
        val_interval: int = 1,
        log: Path,
    ) -> str:
        """train.yaml, ``max_epochs`` x ``epoch_length`` iterations, a validation every ``val_interval`` epochs;
        ``out/eval`` = --output_dir (logs, training checkpoints), ``out/models`` = --ckpt_dir."""
        return self.run(
            "-m", "monai.bundle", "run",
            "--bundle_root", ".",
            "--config_file", self.train_yaml,
            "--dataset_dir", dataset_dir,
            "--output_dir", out / "eval",
            "--ckpt_dir", out / "models",
            "--max_epochs", str(max_epochs),
            "--epoch_length", str(epoch_length),
            "--val_interval", str(val_interval),
            "--patch_size", PATCH,
            "--labeled_batch_size", "1",
            "--unlabeled_batch_size", "1",
            "--num_workers", "0",
            *NET_ARGS, *extra,
            log=log,
        )  # fmt: skip

    def evaluate(self, dataset_dir: Path, out: Path, *extra: str, log: Path) -> str:
        """train.yaml + evaluate.yaml with the model of ``out/models``; metrics and predictions in ``out/eval``."""
        return self.run(
            "-m", "monai.bundle", "run",
            "--bundle_root", ".",
            "--config_file", f"['{self.train_yaml}','{self.evaluate_yaml}']",
            "--dataset_dir", dataset_dir,
            "--output_dir", out / "eval",
            "--ckpt_dir", out / "models",
            "--patch_size", PATCH,
            "--num_workers", "0",
            *NET_ARGS, *extra,
            log=log,
        )  # fmt: skip

    def infer(self, input_path: Path, pred_dir: Path, ckpt: Path, *extra: str, log: Path) -> str:
        """inference.yaml on a file, folder or datalist.json; masks and probabilities into ``pred_dir``."""
        return self.run(
            "-m", "monai.bundle", "run",
            "--bundle_root", ".",
            "--config_file", self.inference_yaml,
            "--input_path", input_path,
            "--output_dir", pred_dir,
            "--ckpt_path", ckpt,
            "--patch_size", PATCH,
            "--num_workers", "0",
            "--save_probabilities", "true",
            *NET_ARGS, *extra,
            log=log,
        )  # fmt: skip

    def verify_net_in_out(self, *extra: str) -> str:
        """``verify_net_in_out`` of the inference network (default size) against metadata.json. ``--n 2``: the
        metadata's "16*n" with the default n=1 means a 16^3 input, whose 1x1x1 bottleneck InstanceNorm rejects."""
        return self.run(
            "-m", "monai.bundle", "verify_net_in_out", "network_def",
            "--meta_file", self.metadata,
            "--config_file", self.inference_yaml,
            "--bundle_root", ".",
            "--device", "cpu",
            "--n", "2",
            *extra,
        )  # fmt: skip

    def ckpt_export(self, ts_path: Path, ckpt: Path, *extra: str) -> str:
        """TorchScript export of ``ckpt`` (a state dict of the small network) with the bundle's metadata."""
        return self.run(
            "-m", "monai.bundle", "ckpt_export", "network_def",
            "--filepath", ts_path,
            "--ckpt_file", ckpt,
            "--meta_file", self.metadata,
            "--config_file", self.inference_yaml,
            "--bundle_root", ".",
            "--key_in_ckpt", "",
            *NET_ARGS, *extra,
        )  # fmt: skip

    def output_snapshot(self) -> set[str]:
        """Every file of the bundle folder (configs, docs, and the default output folders ``eval/``, ``models/``),
        without ``scripts`` (the link to custom/) and ``__pycache__``: the commands run from this folder must leave
        it as it was."""
        files = set()
        for folder, dirs, names in os.walk(self.root):  # does not follow the scripts link
            dirs[:] = [d for d in dirs if d != "__pycache__" and not (Path(folder) / d).is_symlink()]
            files.update(str((Path(folder) / n).relative_to(self.root)) for n in names)
        return files

    @contextlib.contextmanager
    def workflow(self, workflow_type: str, **overrides: Any) -> Iterator[Any]:
        """An initialised ``ConfigWorkflow`` of train.yaml (``"train"``) or inference.yaml (``"infer"``) with the
        bundle's metadata and logging config, parsed with the bundle on ``sys.path`` (:func:`bundle_on_path`, for
        the whole block: properties are parsed lazily); the root logger and the global RNG seeding are restored
        afterwards."""
        from monai.bundle import ConfigWorkflow
        from monai.utils import set_determinism

        config = {"train": self.train_yaml, "infer": self.inference_yaml}[workflow_type]
        with logging_restored(), self.on_path():
            workflow = ConfigWorkflow(
                workflow_type=workflow_type,
                config_file=str(self.path(config)),
                meta_file=str(self.path(self.metadata)),
                logging_file=str(self.path(self.logging_conf)),
                **overrides,
            )
            try:
                workflow.initialize()
                yield workflow
            finally:
                set_determinism(seed=None)  # initialize() seeded the global RNGs of this process

    @contextlib.contextmanager
    def checked_workflow(self, workflow_type: str, dataset: Path, model: Path, tmp_path: Path) -> Iterator[Any]:
        """:meth:`workflow` on CPU with ``dataset`` (and ``model`` for inference), after the checks every bundle
        shares: ``check_properties()`` finds nothing missing, dataset_dir / bundle_root are as given, and training
        keeps the configs' defaults: 100 epochs of 200 iterations (the released 20000 iterations, the total of the
        beta schedule), a validation after every epoch."""
        overrides = {
            "bundle_root": str(self.root),
            "dataset_dir": str(dataset),
            "output_dir": str(tmp_path / "eval"),
            "num_workers": 0,
            "device": "$torch.device('cpu')",
        }
        if workflow_type == "train":
            overrides["ckpt_dir"] = str(tmp_path / "models")
        else:
            overrides["ckpt_path"] = str(model)
        with self.workflow(workflow_type, **overrides) as workflow:
            missing = workflow.check_properties()
            assert not missing, f"{workflow_type}: missing or wrongly referenced properties {missing}"
            assert workflow.dataset_dir == str(dataset)
            assert workflow.bundle_root == str(self.root)
            if workflow_type == "train":
                check_training_length(workflow)
            yield workflow


def check_training_length(workflow: Any) -> None:
    """The configs' defaults on an initialised training ``ConfigWorkflow``: 100 epochs x 200 iterations = 20000
    (the trainer's state and the beta schedule's total), ValidationHandler every ``@val_interval`` = 1 epoch."""
    from monai.handlers import ValidationHandler

    parser = workflow.parser
    assert workflow.max_epochs == 100
    assert (parser["max_epochs"], parser["epoch_length"], parser["val_interval"]) == (100, 200, 1)
    state = workflow.trainer.state
    assert (state.max_epochs, state.epoch_length) == (100, 200)
    handlers = parser["train#handlers"]
    validation = [i for i, h in enumerate(handlers) if h.get("_target_") == "ValidationHandler"]
    assert len(validation) == 1, handlers
    assert handlers[validation[0]]["interval"] == "@val_interval" and handlers[validation[0]]["epoch_level"] is True
    parsed = parser.get_parsed_content("train#handlers")  # disabled items are left out
    validators = [h for h in parsed if isinstance(h, ValidationHandler)]
    if validators:  # disabled without a validation list
        assert [(v.interval, v.epoch_level) for v in validators] == [(1, True)]
    betas = [h for h in parsed if getattr(h, "name", None) == "beta"]
    assert len(betas) == 1 and betas[0].schedule.total_steps == 20000


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """ConfigWorkflow(logging_file=...) reconfigures the root logger (stdout handler, INFO): undo it."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


# ------------------------------------------------------------------------------------------------- checks


def case_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """(X, Y, Z) of a 3-D image or of a channel-last 4-D one (X, Y, Z, C)."""
    return tuple(shape[:3])


def small_net(in_channels: int = 1) -> UNet3D:
    return UNet3D(in_channels=in_channels, **SMALL_NET)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def check_model_pt(path: Path, in_channels: int = 1) -> None:
    """model.pt is a plain state dict of the (small) UNet3D: loads with strict=True."""
    assert path.is_file(), f"{path} was not written"
    state = load_weights(path)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    small_net(in_channels).load_state_dict(state, strict=True)


def check_training_checkpoint(folder: Path, iterations: int, in_channels: int = 1) -> Path:
    """The newest training checkpoint of ``folder`` holds network, teacher, optimizer and trainer state at
    ``iterations``; returns its path."""
    files = sorted(folder.glob("*.pt"))
    assert files, f"no training checkpoint in {folder}"
    latest = max(files, key=lambda p: p.stat().st_mtime_ns)
    ckpt = load_weights(latest)
    assert {"network", "teacher", "optimizer", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == iterations
    for key in ("network", "teacher"):
        small_net(in_channels).load_state_dict(ckpt[key], strict=True)
    return latest


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def as_float(v: object) -> float:
    return float("nan") if v is None else float(v)  # JSON null / "nan" -> NaN


def check_metric_values(name: str, values: list[float]) -> None:
    for v in values:
        if name in ("dice", "iou"):
            assert 0.0 <= v <= 1.0, f"{name} = {v} outside [0, 1]"
        else:
            assert math.isnan(v) or v >= 0.0, f"{name} = {v} negative"


def check_evaluation(dataset_dir: Path, eval_dir: Path) -> None:
    """metrics_per_case.csv (one row per test case), metrics_summary.json (mean/std per metric), predictions in
    the label's geometry; dice/iou of the CSV agree with the saved prediction and the label."""
    test = json.loads((dataset_dir / "datalist.json").read_text())["test"]
    assert test, "the prepared dataset has no test case"
    images = {case_name(e["image"]): dataset_dir / e["image"] for e in test}
    labels = {case_name(e["image"]): dataset_dir / e["label"] for e in test}

    rows = read_csv(eval_dir / "metrics_per_case.csv")
    assert len(rows) == len(test)
    assert set(rows[0]) >= set(METRICS)
    assert sorted(case_name(r["filename"]) for r in rows) == sorted(images)
    for m in METRICS:
        check_metric_values(m, [float(r[m]) for r in rows])

    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    assert summary["num_cases"] == len(test)
    for m in METRICS:
        stats = summary["metrics"][m]
        assert {"mean", "std"} <= set(stats), f"{m}: {stats}"
        mean, std = as_float(stats["mean"]), as_float(stats["std"])
        check_metric_values(m, [mean])
        assert math.isnan(std) or std >= 0.0
        column = np.array([float(r[m]) for r in rows])
        if not np.isnan(column).all():
            assert mean == pytest.approx(float(np.nanmean(column)), rel=1e-4, abs=1e-6)

    for r in rows:
        cid = case_name(r["filename"])
        pred_path = eval_dir / "predictions" / f"{cid}_seg.nii.gz"
        assert pred_path.is_file(), f"missing {pred_path}"
        pred, label, image = nib.load(pred_path), nib.load(labels[cid]), nib.load(images[cid])
        assert pred.shape == label.shape == spatial_shape(image.shape)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        p, lab = np.asarray(pred.dataobj), np.asarray(label.dataobj)
        assert set(np.unique(p).tolist()) <= {0, 1}
        assert float(r["dice"]) == pytest.approx(dice_of(p, lab), abs=1e-5)
        assert float(r["iou"]) == pytest.approx(iou_of(p, lab), abs=1e-5)


def check_prediction(image_path: Path, pred_dir: Path, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``<name>_seg`` (uint8 {0, 1}) and ``<name>_prob`` (float in [0, 1]) have the input's (spatial) shape and
    affine; returns (seg, prob) arrays."""
    name = case_name(image_path)
    image = nib.load(image_path)
    shape = spatial_shape(image.shape)
    seg_path = pred_dir / f"{name}_seg.nii.gz"
    assert seg_path.is_file(), f"missing {seg_path}"
    seg_img = nib.load(seg_path)
    assert seg_img.shape == shape, f"{name}: seg shape {seg_img.shape} != input {image.shape}"
    np.testing.assert_allclose(seg_img.affine, image.affine, atol=1e-5, err_msg=f"{name}: seg affine")
    assert seg_img.get_data_dtype() == np.uint8
    seg = np.asarray(seg_img.dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1}
    if not probabilities:
        return seg, np.empty(0)
    prob_path = pred_dir / f"{name}_prob.nii.gz"
    assert prob_path.is_file(), f"missing {prob_path}"
    prob_img = nib.load(prob_path)
    assert prob_img.shape == shape
    np.testing.assert_allclose(prob_img.affine, image.affine, atol=1e-5, err_msg=f"{name}: prob affine")
    prob = np.asarray(prob_img.dataobj, dtype=np.float64)
    assert np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0
    # same voxel grid for both outputs: a foreground voxel of the mask has a foreground probability > 0.5
    if seg.any():
        assert prob[seg == 1].min() > 0.5 - 1e-5
    return seg, prob
