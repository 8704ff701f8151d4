"""OverlayPNGWriter / TrainingCurvePNG / ProgressBarHandler on tiny in-memory engines, and the pictures of a short
LA bundle run from the bundle folder (train + evaluate, small network, [32,32,32] patches)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine  # noqa: E402
from monai.data import DataLoader, Dataset, MetaTensor  # noqa: E402
from monai.engines import SupervisedEvaluator  # noqa: E402
from monai.handlers import MeanDice, ValidationHandler, from_engine  # noqa: E402
from monai.inferers import SimpleInferer  # noqa: E402
from monai.transforms import AsDiscreted, Compose  # noqa: E402

from custom.handlers import (  # noqa: E402
    OverlayPNGWriter,
    ProgressBarHandler,
    TrainingCurvePNG,
    mlflow_available,
    with_lr,
)
from custom.handlers.pictures import _image_like_pred  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LA = REPO / "bundles" / "dycon_la"
SHAPE = (16, 16, 12)


class Threshold(torch.nn.Module):
    """Two-class 'logits' [0.5 - x, x - 0.5]: foreground where the image is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def _cases(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    data = []
    for i in range(n):
        label = np.zeros(SHAPE, np.float32)
        label[4 + i : 11, 3:12, 2 : 8 + i] = 1
        image = (label * 0.8 + rng.normal(0.1, 0.15, SHAPE)).astype(np.float32)  # noisy: the prediction is not perfect
        meta = {"filename_or_obj": f"/data/case_{i}.nii.gz"}
        data.append(
            {
                "image": MetaTensor(torch.from_numpy(image)[None], meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(label)[None], meta=dict(meta)),
            }
        )
    return data


def _evaluator(handlers: list) -> SupervisedEvaluator:
    post = Compose([AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=2)])
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_cases()), batch_size=1, shuffle=False),
        network=Threshold(),
        inferer=SimpleInferer(),
        postprocessing=post,
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=handlers,
    )


def check_png(path: Path, min_shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    """A real PNG (signature), readable, large enough and not blank."""
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= min_shape[0] and img.shape[1] >= min_shape[1]
    assert float(img[..., :3].std()) > 0.01, f"{path} looks blank"
    return img


def test_overlay_per_epoch_and_per_case(tmp_path: Path):
    val = OverlayPNGWriter(str(tmp_path / "val"), prefix="val", max_cases=2)
    test = OverlayPNGWriter(str(tmp_path / "test"), prefix="test", per_case=True)
    evaluator = _evaluator([val, test])
    evaluator.run()
    one = check_png(tmp_path / "val" / "val_epoch0001.png")
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["val_epoch0001.png"]
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [f"test_case_{i}.png" for i in range(3)]
    for i in range(3):
        panel = check_png(tmp_path / "test" / f"test_case_{i}.png")
        assert panel.shape[0] > panel.shape[1] * 0.9  # 3 rows (planes) x 3 columns
    assert one.shape[1] > one.shape[0]  # 2 rows of 3 pictures: wider than high

    # the evaluator's epoch (= the trainer's during training) names the file; max_cases=0 draws every case
    every = OverlayPNGWriter(str(tmp_path / "all"), max_cases=0, every=2)
    evaluator = _evaluator([every])
    evaluator.run(global_epoch=2)
    three = check_png(tmp_path / "all" / "val_epoch0002.png")
    assert three.shape[0] > one.shape[0] * 1.3
    evaluator.run(global_epoch=3)  # not a multiple of every
    assert not (tmp_path / "all" / "val_epoch0003.png").exists()


def test_overlay_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    writer = OverlayPNGWriter(str(blocker / "sub"), per_case=True)
    with caplog.at_level(logging.WARNING):
        _evaluator([writer]).run()
    assert writer.written == []
    assert "could not write" in caplog.text


def test_image_reoriented_to_inverted_prediction():
    """evaluate.yaml inverts pred / label to the file's orientation but not the image: the image is reoriented."""
    arr = torch.arange(np.prod(SHAPE), dtype=torch.float32).reshape(1, *SHAPE)
    ras = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    las = ras.clone()
    las[0, 0], las[0, 3] = -1.0, SHAPE[0] - 1  # x flipped, same world positions
    image = MetaTensor(arr, affine=ras)
    pred = MetaTensor(torch.zeros(1, *SHAPE), affine=las)
    np.testing.assert_array_equal(_image_like_pred({"image": image, "pred": pred}), arr[0].numpy()[::-1])
    same = MetaTensor(torch.zeros(1, *SHAPE), affine=ras)
    np.testing.assert_array_equal(_image_like_pred({"image": image, "pred": same}), arr[0].numpy())


def _trainer(epoch_length: int = 3) -> Engine:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)

    def step(engine: Engine, batch):
        i = engine.state.iteration
        for g in opt.param_groups:
            g["lr"] = 0.01 * (1 - i / 10)
        parts = {"supervised": 1.0 / i, "uncl": 2.0 / i, "fecl": 0.5, "mse": 0.0, "beta": 5.0 - 0.4 * i, "eta": 0.5}
        parts["loss"] = parts["supervised"] + parts["uncl"]
        return {k: torch.tensor(v) for k, v in parts.items()}

    trainer = Engine(step)
    trainer.optimizer = opt
    return trainer


def test_training_curve_with_validation(tmp_path: Path):
    trainer = _trainer()
    evaluator = _evaluator([])
    ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
    curve = TrainingCurvePNG(str(tmp_path), every=1, smooth=2)
    curve.attach(trainer)
    trainer.run(range(3), max_epochs=2)
    check_png(tmp_path / "training_curve.png", (300, 500))
    assert curve.iterations == list(range(1, 7))
    assert {"loss", "supervised", "uncl", "fecl", "mse", "beta", "eta", "lr"} <= set(curve.values)
    assert curve.values["lr"][0] == pytest.approx(0.009)
    assert [it for it, _ in curve.val_points] == [3, 6]  # the validator was found through the ValidationHandler
    assert curve.val_name == "val_mean_dice"
    assert all(0.0 < d <= 1.0 for _, d in curve.val_points)


def test_training_curve_without_validation_and_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    trainer = _trainer()
    TrainingCurvePNG(str(tmp_path), every=0).attach(trainer)
    trainer.run(range(2), max_epochs=1)
    check_png(tmp_path / "training_curve.png")

    blocker = tmp_path / "file"
    blocker.write_text("x")
    trainer = _trainer()
    TrainingCurvePNG(str(blocker / "sub")).attach(trainer)
    with caplog.at_level(logging.WARNING):
        trainer.run(range(2), max_epochs=1)  # a drawing failure is a warning, not an exception
    assert "could not write" in caplog.text


def test_progress_bar_and_helpers(capsys: pytest.CaptureFixture):
    trainer = _trainer()
    bar = ProgressBarHandler()
    bar.attach(trainer)
    trainer.run(range(2), max_epochs=1)
    assert "loss=" in capsys.readouterr().err
    transform = with_lr(trainer.optimizer)
    out = transform({"loss": torch.tensor(1.0), "beta": torch.tensor(2.0)})
    assert out == {"loss": 1.0, "beta": 2.0, "lr": pytest.approx(trainer.optimizer.param_groups[0]["lr"])}
    assert isinstance(mlflow_available(), bool)


def test_rank_nonzero_is_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import custom.handlers.pictures as pictures

    monkeypatch.setattr(pictures, "_rank", lambda: 1)
    trainer = _trainer()
    TrainingCurvePNG(str(tmp_path)).attach(trainer)
    ProgressBarHandler().attach(trainer)
    trainer.run(range(2), max_epochs=1)
    _evaluator([OverlayPNGWriter(str(tmp_path), per_case=True)]).run()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- a short LA bundle run

NET = ["--network_def#features", "[4,8,16,32,64]", "--network_def#embed_dim", "16", "--network_def#proj_hidden", "32"]


def _run(*args: str | Path, cwd: Path = REPO) -> str:
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def test_la_bundle_pictures(tmp_path: Path):
    from custom.data.la import synth_la

    synth_la(tmp_path / "raw", n_train=4, n_test=2, shape=(48, 48, 32), seed=0)
    prep, out = tmp_path / "prep", tmp_path / "out"
    _run("-m", "custom", "prepare", "la", "--src", tmp_path / "raw", "--dst", prep, "--labeled", "2", "--val", "1")
    common = ["--bundle_root", ".", "--dataset_dir", prep, "--output_dir", out / "eval"]
    common += ["--ckpt_dir", out / "models", "--patch_size", "[32,32,32]", "--num_workers", "0", *NET]
    train = _run(
        "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", *common,
        "--max_epochs", "2", "--epoch_length", "2", "--val_interval", "1",
        "--labeled_batch_size", "1", "--unlabeled_batch_size", "1",
        cwd=LA,
    )  # fmt: skip
    assert "Epoch [2/2]: [2/2] 100%" in train  # the progress bar with the loss parts
    assert "loss=" in train
    pictures = out / "eval" / "pictures"
    for name in ("val_epoch0001.png", "val_epoch0002.png"):
        check_png(pictures / name)
    check_png(out / "eval" / "training_curve.png", (600, 1000))
    assert list((out / "eval").glob("events.out.tfevents.*"))  # TensorBoard
    assert not (out / "eval" / "mlruns").exists() or mlflow_available()

    evaluate = _run(
        "-m", "monai.bundle", "run", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", *common,
        cwd=LA,
    )  # fmt: skip
    assert "Iteration: [2/2] 100%" in evaluate
    tests = sorted(pictures.glob("test_*.png"))
    assert len(tests) == 2
    for p in tests:
        check_png(p, (600, 600))
