"""Pictures of a run: overlays of validation / test cases and the training curves, as PNG files.

* :class:`OverlayPNGWriter` - attached to an evaluator. With ``per_case=False`` (validation during training) it
  keeps one axial slice of the first ``max_cases`` cases and at ``EPOCH_COMPLETED`` writes
  ``{prefix}_epoch{epoch:04d}.png``: a row per case with the image, the image + ground truth and the image +
  prediction, titled with the case file name and its Dice. With ``per_case=True`` (evaluation) it writes
  ``{prefix}_{case}.png`` for every case: axial / coronal / sagittal slices x (image, ground truth, prediction).
* :class:`TrainingCurvePNG` - attached to the trainer; records the loss parts (:func:`custom.handlers.loss_parts`),
  beta and the learning rate every iteration and the validator's key metric after every validation, and writes
  ``training_curve.png`` every ``every`` epochs and at ``COMPLETED``.
* :class:`ProgressBarHandler` - Ignite's ``ProgressBar`` (ETA, loss parts as postfix) as a MONAI-style handler with
  a one-argument ``attach(engine)``, so that a bundle config can list it among the handlers.
* :func:`with_lr` - ``output_transform`` that adds the optimizer's learning rate to the loss parts (TensorBoard).
* :func:`mlflow_available` - whether ``mlflow`` can be imported (a config's ``_disabled_`` of ``MLFlowHandler``; an
  expression that contains the word ``import`` would be taken for an import statement by MONAI's config parser).

All of them are no-ops on ranks other than 0, and a failure while drawing is logged as a warning, never raised into
the training. Only matplotlib's Agg canvas is used (no pyplot, no display).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from .checkpoint import loss_parts

try:
    import ignite.distributed as idist
except ImportError:  # pragma: no cover
    idist = None

__all__ = ["OverlayPNGWriter", "TrainingCurvePNG", "ProgressBarHandler", "with_lr", "mlflow_available"]

logger = logging.getLogger(__name__)

_PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))  # slicing axis of a (X, Y, Z) volume in RAS


def _rank() -> int:
    return int(idist.get_rank()) if idist is not None else 0


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _as_mask(x: Any) -> np.ndarray:
    """(C, X, Y, Z) one-hot / probabilities (C > 1) or (1, X, Y, Z) labels -> (X, Y, Z) integer labels."""
    a = _numpy(x)
    if a.ndim == 4:
        a = a.argmax(0) if a.shape[0] > 1 else a[0]
    return np.rint(a).astype(np.int16)


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred > 0, ref > 0
    total = int(p.sum()) + int(r.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(p, r).sum()) / total


def _best_slice(mask: np.ndarray, axis: int, fallback: np.ndarray | None = None) -> int:
    """Index along ``axis`` of the slice with the largest foreground area of ``mask`` (then ``fallback``), else the
    middle slice."""
    for m in (mask, fallback):
        if m is not None and m.any():
            return int((m > 0).sum(axis=tuple(i for i in range(3) if i != axis)).argmax())
    return mask.shape[axis] // 2


def _take(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice, rotated so that the first voxel axis runs left-right and the second bottom-up on screen."""
    return np.rot90(np.take(vol, index, axis=axis))


def _case_name(item: Mapping, index: int) -> str:
    for key in ("image", "pred", "label"):
        meta = getattr(item.get(key), "meta", None) or item.get(f"{key}_meta_dict") or {}
        name = meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        if name:
            base = os.path.basename(str(name))
            for suffix in (".nii.gz", ".nii", ".h5", ".npy", ".npz"):
                if base.endswith(suffix):
                    return base[: -len(suffix)]
            return os.path.splitext(base)[0]
    return f"case{index:03d}"


def _items(output: Any) -> list[Mapping]:
    """``engine.state.output`` of an evaluator -> a list of per-case dicts (decollated or batched)."""
    if isinstance(output, Mapping):
        from monai.data import decollate_batch

        return list(decollate_batch(output, detach=True))
    return [o for o in (output or []) if isinstance(o, Mapping)]


def _image_like_pred(item: Mapping) -> np.ndarray | None:
    """First image channel as (X, Y, Z) in the voxel grid of ``pred``: when the prediction was inverted to the
    file's orientation (evaluate.yaml's ``Invertd``) but the image was not, the image is reoriented to match."""
    image, pred = item.get("image"), item.get("pred")
    if image is None:
        return None
    affine_i, affine_p = getattr(image, "affine", None), getattr(pred, "affine", None)
    if (
        affine_i is not None
        and affine_p is not None
        and not torch.allclose(
            torch.as_tensor(affine_i, dtype=torch.float64), torch.as_tensor(affine_p, dtype=torch.float64), atol=1e-3
        )
    ):
        import nibabel as nib
        from monai.transforms import Orientation

        codes = "".join(nib.aff2axcodes(_numpy(affine_p)))
        image = Orientation(axcodes=codes, labels=None)(image)
    a = _numpy(image)
    return a[0] if a.ndim == 4 else a


def _draw_row(axes: Sequence[Any], img: np.ndarray, ref: np.ndarray, pred: np.ndarray, label: str = "") -> None:
    lo, hi = np.percentile(img, (0.5, 99.5)) if img.size else (0.0, 1.0)
    for ax in axes:
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(label, fontsize=8)
    from matplotlib.colors import ListedColormap

    for ax, mask, color in ((axes[1], ref, "lime"), (axes[2], pred, "red")):
        m = mask > 0
        if m.any():
            ax.imshow(np.ma.masked_where(~m, m.astype(float)), cmap=ListedColormap([color]), alpha=0.3, vmin=0, vmax=1)
            ax.contour(m.astype(float), levels=[0.5], colors=color, linewidths=0.8)
    if ref.any():  # the ground truth's outline on the prediction too, to see the misses
        axes[2].contour((ref > 0).astype(float), levels=[0.5], colors="lime", linewidths=1.0, linestyles="dashed")


def _save(fig: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=fig.dpi, format="png")
    os.replace(tmp, path)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


class OverlayPNGWriter:
    """Image / ground truth / prediction overlays of an evaluator's cases as PNG files.

    Args:
        output_dir: folder of the PNG files.
        prefix: file name prefix (``"val"``: ``val_epoch0003.png``; ``"test"``: ``test_<case>.png``).
        max_cases: cases drawn per epoch (``per_case=False``); ``None`` or ``0``: all of them.
        every: draw every ``every`` evaluator epochs (the evaluator's epoch is the trainer's during training).
        per_case: one file per case with axial / coronal / sagittal slices instead of one file per epoch.
        image_key, label_key, pred_key: keys of the evaluator's (post-processed) output.
    """

    def __init__(
        self,
        output_dir: str,
        prefix: str = "val",
        max_cases: int | None = 3,
        every: int = 1,
        per_case: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        self.output_dir = str(output_dir)
        self.prefix = prefix
        self.max_cases = max_cases or None
        self.every = max(1, int(every))
        self.per_case = per_case
        self.keys = (image_key, label_key, pred_key)
        self.rows: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]] = []
        self.written: list[str] = []
        self._seen = 0

    def attach(self, engine: Engine) -> None:
        if _rank() > 0:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        if not self.per_case:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_epoch)

    def _active(self, engine: Engine) -> bool:
        return self.per_case or engine.state.epoch % self.every == 0

    def _reset(self, engine: Engine) -> None:
        self.rows, self._seen = [], 0

    def _collect(self, engine: Engine) -> None:
        if not self._active(engine):
            return
        try:
            for item in _items(engine.state.output):
                if not self.per_case and self.max_cases is not None and self._seen >= self.max_cases:
                    return
                self._seen += 1
                self._add(item, self._seen - 1)
        except Exception as e:  # a picture must never stop a run
            logger.warning(f"OverlayPNGWriter: could not draw a case: {e!r}")

    def _add(self, item: Mapping, index: int) -> None:
        image_key, label_key, pred_key = self.keys
        if pred_key not in item:
            return
        pred = _as_mask(item[pred_key])
        ref = _as_mask(item[label_key]) if item.get(label_key) is not None else np.zeros_like(pred)
        img = _image_like_pred({"image": item.get(image_key), "pred": item[pred_key]})
        if img is None or img.shape != pred.shape:
            img = np.zeros(pred.shape, np.float32)  # no image (or not in the prediction's grid): masks only
        if ref.shape != pred.shape:
            logger.warning(f"OverlayPNGWriter: label {ref.shape} and prediction {pred.shape} differ; label left out")
            ref = np.zeros_like(pred)
        name, dice = _case_name(item, index), _dice(pred, ref)
        if self.per_case:
            self._write_case(name, dice, img, ref, pred)
        else:
            k = _best_slice(ref, 2, pred)
            self.rows.append((name, dice, _take(img, 2, k), _take(ref, 2, k), _take(pred, 2, k)))

    def _write_epoch(self, engine: Engine) -> None:
        if not self._active(engine) or not self.rows:
            return
        path = os.path.join(self.output_dir, f"{self.prefix}_epoch{engine.state.epoch:04d}.png")
        try:
            fig = _figure(9.0, 3.0 * len(self.rows) + 0.4)
            axes = fig.subplots(len(self.rows), 3, squeeze=False)
            for r, (name, dice, img, ref, pred) in enumerate(self.rows):
                _draw_row(axes[r], img, ref, pred, label=name)
                axes[r][0].set_title(f"{name}: image", fontsize=9)
                axes[r][1].set_title("ground truth", fontsize=9)
                axes[r][2].set_title(f"prediction (Dice {dice:.3f})", fontsize=9)
            fig.suptitle(f"{self.prefix}, epoch {engine.state.epoch} (axial slice of largest label area)", fontsize=10)
            fig.tight_layout()
            _save(fig, path)
            self.written.append(path)
        except Exception as e:
            logger.warning(f"OverlayPNGWriter: could not write {path}: {e!r}")
        finally:
            self.rows = []

    def _write_case(self, name: str, dice: float, img: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> None:
        path = os.path.join(self.output_dir, f"{self.prefix}_{name}.png")
        try:
            fig = _figure(9.0, 9.4)
            axes = fig.subplots(3, 3, squeeze=False)
            for r, (plane, axis) in enumerate(_PLANES):
                k = _best_slice(ref, axis, pred)
                _draw_row(axes[r], _take(img, axis, k), _take(ref, axis, k), _take(pred, axis, k), f"{plane} {k}")
            for c, title in enumerate(("image", "ground truth", "prediction")):
                axes[0][c].set_title(title, fontsize=9)
            fig.suptitle(f"{name}: Dice {dice:.3f}", fontsize=11)
            fig.tight_layout()
            _save(fig, path)
            self.written.append(path)
        except Exception as e:
            logger.warning(f"OverlayPNGWriter: could not write {path}: {e!r}")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over at most ``window`` previous values (same length as ``values``; NaN-aware)."""
    if window <= 1 or values.size < 2:
        return values
    v = np.nan_to_num(values, nan=0.0)
    ok = (~np.isnan(values)).astype(float)
    cs, cn = np.concatenate([[0.0], np.cumsum(v)]), np.concatenate([[0.0], np.cumsum(ok)])
    idx = np.arange(1, values.size + 1)
    start = np.maximum(0, idx - window)
    n = cn[idx] - cn[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cs[idx] - cs[start]) / n, np.nan)


def _find_validator(engine: Engine) -> Engine | None:
    """The evaluator of a MONAI ``ValidationHandler`` attached to ``engine`` (None if there is none)."""
    from monai.handlers import ValidationHandler

    for handlers in getattr(engine, "_event_handlers", {}).values():
        for entry in handlers:
            h = entry[0]
            parent = getattr(h, "_parent", None)
            for cand in (h, getattr(h, "__wrapped__", None), parent() if callable(parent) else None):
                if isinstance(cand, ValidationHandler) and getattr(cand, "validator", None) is not None:
                    return cand.validator
    return None


class TrainingCurvePNG:
    """The loss parts, beta, the learning rate and the validation metric of a training run in one PNG.

    Args:
        output_dir: folder of the PNG.
        filename: its name.
        validator: the evaluator whose key metric is plotted; ``None``: the one of a ``ValidationHandler`` attached
            to the trainer, if any.
        every: also write the PNG every ``every`` trainer epochs (0: only at ``COMPLETED``).
        smooth: moving-average window (iterations) of the loss curves (the raw values are drawn faintly).
        output_transform: ``engine.state.output`` -> dict of floats (default :func:`custom.handlers.loss_parts`).
    """

    def __init__(
        self,
        output_dir: str,
        filename: str = "training_curve.png",
        validator: Engine | None = None,
        every: int = 1,
        smooth: int = 20,
        output_transform: Callable[[Any], Mapping[str, float]] = loss_parts,
    ) -> None:
        self.path = os.path.join(str(output_dir), filename)
        self.validator = validator
        self.every = int(every)
        self.smooth = int(smooth)
        self.output_transform = output_transform
        self.iterations: list[int] = []
        self.values: dict[str, list[float]] = {}
        self.val_points: list[tuple[int, float]] = []
        self.val_name: str | None = None
        self._trainer: Engine | None = None
        self._hooked = False

    def attach(self, engine: Engine) -> None:
        if _rank() > 0:
            return
        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self._hook_validator)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        if self.every > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self._write)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _hook_validator(self, engine: Engine) -> None:
        if self._hooked:
            return
        self._hooked = True
        try:
            self.validator = self.validator or _find_validator(engine)
            if self.validator is not None:
                # before the trainer's own EPOCH_COMPLETED handlers that run after the validation (this one)
                self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation)
        except Exception as e:
            logger.warning(f"TrainingCurvePNG: no validation curve: {e!r}")

    def _record(self, engine: Engine) -> None:
        try:
            parts = dict(self.output_transform(engine.state.output))
            opt = getattr(engine, "optimizer", None)
            if opt is not None and getattr(opt, "param_groups", None):
                parts["lr"] = float(opt.param_groups[0]["lr"])
        except Exception as e:
            logger.warning(f"TrainingCurvePNG: iteration {engine.state.iteration} not recorded: {e!r}")
            return
        n = len(self.iterations)
        self.iterations.append(int(engine.state.iteration))
        for k, v in parts.items():
            self.values.setdefault(k, [math.nan] * n).append(float(v))
        for seq in self.values.values():
            if len(seq) < n + 1:
                seq.append(math.nan)

    def _record_validation(self, validator: Engine) -> None:
        try:
            metrics = validator.state.metrics or {}
            name = getattr(validator.state, "key_metric_name", None) or next(iter(metrics), None)
            if name is None or name not in metrics:
                return
            self.val_name = str(name)
            iteration = self._trainer.state.iteration if self._trainer is not None else validator.state.epoch
            self.val_points.append((int(iteration), float(metrics[name])))
        except Exception as e:
            logger.warning(f"TrainingCurvePNG: validation metric not recorded: {e!r}")

    def _write(self, engine: Engine) -> None:
        if not self.iterations:
            return
        try:
            self._plot()
        except Exception as e:
            logger.warning(f"TrainingCurvePNG: could not write {self.path}: {e!r}")

    def _plot(self) -> None:
        it = np.asarray(self.iterations)
        losses = [k for k in self.values if k not in ("beta", "eta", "lr")]
        fig = _figure(12.0, 8.0)
        (ax_loss, ax_beta), (ax_lr, ax_val) = fig.subplots(2, 2)
        colors = ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
        for k, color in zip(losses, colors * 2):
            v = np.asarray(self.values[k], float)
            ax_loss.plot(it, v, color=color, alpha=0.2, linewidth=0.6)
            ax_loss.plot(it, _smooth(v, self.smooth), color=color, linewidth=1.4, label=k)
        ax_loss.set_title(f"loss parts (moving average of {self.smooth} iterations)", fontsize=10)
        if losses:
            ax_loss.legend(fontsize=8)
        for ax, keys, title in ((ax_beta, ("beta", "eta"), "beta / eta"), (ax_lr, ("lr",), "learning rate")):
            for k in keys:
                if k in self.values:
                    ax.plot(it, self.values[k], linewidth=1.2, label=k)
            ax.set_title(title, fontsize=10)
            if any(k in self.values for k in keys):
                ax.legend(fontsize=8)
        if self.val_points:
            vx, vy = zip(*self.val_points)
            ax_val.plot(vx, vy, marker="o", color="tab:green")
            best = int(np.nanargmax(vy)) if not all(math.isnan(y) for y in vy) else 0
            ax_val.annotate(f"best {vy[best]:.4f} @ {vx[best]}", (vx[best], vy[best]), fontsize=8)
            ax_val.set_title(f"validation {self.val_name}", fontsize=10)
        else:
            ax_val.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_val.transAxes)
            ax_val.set_title("validation", fontsize=10)
        for ax in (ax_loss, ax_beta, ax_lr, ax_val):
            ax.set_xlabel("iteration", fontsize=9)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, self.path)


class ProgressBarHandler:
    """Ignite's ``ProgressBar`` (``tqdm``: ETA of the epoch, the loss parts as postfix) with ``attach(engine)``.

    Args:
        output_transform: ``engine.state.output`` -> dict shown after the bar (None: nothing, for evaluators).
        persist: keep the finished bar of every epoch on screen.
        desc: label before the bar (Ignite's default: ``Epoch [e/E]`` when there are several epochs).
        tqdm_kwargs: passed to ``tqdm`` (``ncols``, ``mininterval`` ...).
    """

    def __init__(
        self,
        output_transform: Callable[[Any], Any] | None = loss_parts,
        persist: bool = True,
        desc: str | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        self.output_transform = output_transform
        self.persist = persist
        self.tqdm_kwargs = dict(tqdm_kwargs)
        if desc is not None:
            self.tqdm_kwargs["desc"] = desc
        self.bar: Any = None

    def attach(self, engine: Engine) -> None:
        if _rank() > 0:
            return
        try:
            from ignite.handlers import ProgressBar
        except ImportError:  # pragma: no cover - older Ignite
            from ignite.contrib.handlers import ProgressBar
        self.bar = ProgressBar(persist=self.persist, **self.tqdm_kwargs)
        self.bar.attach(engine, output_transform=self.output_transform)


def with_lr(optimizer: torch.optim.Optimizer, output_transform: Callable[[Any], Mapping[str, float]] = loss_parts):
    """``output_transform`` for StatsHandler / TensorBoardStatsHandler: the loss parts plus ``lr`` (first group)."""

    def transform(output: Any) -> dict[str, float]:
        return {**output_transform(output), "lr": float(optimizer.param_groups[0]["lr"])}

    return transform


def mlflow_available() -> bool:
    """Whether the ``mlflow`` package is installed (MONAI's ``MLFlowHandler`` needs it)."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None
