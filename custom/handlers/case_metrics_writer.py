"""Ignite handlers for per-case segmentation metrics.

* :class:`CaseMetricsHandler` - an ``IgniteMetricHandler`` wrapping :class:`custom.metrics.CaseMetrics`, usable as
  ``key_val_metric`` / ``additional_metrics`` of a MONAI ``SupervisedEvaluator``. Its value in
  ``engine.state.metrics[name]`` is the mean of ONE metric (``key``, default ``"dice"``) so that MONAI can compare
  it for the best checkpoint; the means of all its metrics are also put in ``engine.state.metrics`` as
  ``f"{name}_{metric}"``, and the per-case ``(N, 6)`` rows in ``engine.state.metric_details[name]``. With
  ``lesion_metrics=True`` the ISLES'22 lesion-wise figures (``lesion_f1, lesion_count_diff, n_ref_lesions,
  n_pred_lesions, volume_diff_ml``) follow as five more columns (``(N, 11)``); the column names of every handler
  are in ``engine.state.case_metric_columns[name]``.
* :class:`CaseMetricsWriter` - at ``Events.COMPLETED`` writes ``metrics_per_case.csv`` (one row per case, with the
  case file name from the batch meta data ``filename_or_obj``; one column per metric the handler reports),
  ``metrics_summary.json`` (mean, std, median, count, nan_count and the unit of every metric; with lesion-wise
  columns also the empty-mask rules of every column) and logs a plain-text table.

MONAI's ``MetricsSaver`` is not reused for the files because it names the detail columns ``class0..classN``,
writes no JSON and cannot say which columns are millimetres and which are paper-compatible voxel figures; its
file-name collection logic (``ITERATION_COMPLETED``, all-gather across ranks) is mirrored here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.handlers import IgniteMetricHandler
from monai.utils import ImageMetaKey, string_list_all_gather

from ..metrics.case_metrics import (
    EMPTY_RULES,
    INTEGER_METRICS,
    LESION_METRIC_UNITS,
    METRIC_UNITS,
    CaseMetrics,
    metric_names,
    summarize_case_metrics,
)
from ..metrics.lesion import LESION_METRIC_NAMES
from ..metrics.surface import CASE_METRIC_NAMES

try:
    import ignite.distributed as idist
except ImportError:  # pragma: no cover
    idist = None

__all__ = [
    "CaseMetricsHandler",
    "CaseMetricsWriter",
    "PRIMARY_METRICS",
    "PAPER_COMPATIBLE_METRICS",
    "LESION_WISE_METRICS",
]

#: spacing-aware figures reported as the project's primary numbers (dice/iou are unit-free)
PRIMARY_METRICS = ("dice", "iou", "hd95_mm", "asd_mm")
#: medpy-without-spacing figures that reproduce the papers' tables
PAPER_COMPATIBLE_METRICS = ("hd95_voxel", "asd_voxel")
#: ISLES'22 lesion-wise detection figures (``CaseMetricsHandler(lesion_metrics=True)``)
LESION_WISE_METRICS = LESION_METRIC_NAMES

#: attribute of ``engine.state`` mapping a handler's name to its column names
COLUMNS_ATTR = "case_metric_columns"

LESION_NOTES = (
    "Lesion-wise (ISLES'22 evaluation): lesions = connected components with 26-connectivity; lesion_f1 = TP / (TP + "
    "(FP + FN) / 2) with TP = reference lesions overlapping the prediction in >= 1 voxel, FN = the other reference "
    "lesions, FP = predicted components touching no reference voxel; lesion_count_diff = |#pred - #ref lesions|; "
    "volume_diff_ml = |pred - ref| volume in ml. Empty masks (never NaN): both empty -> lesion_f1 = 1 (perfect), "
    "count difference 0, volume difference 0; exactly one empty -> lesion_f1 = 0 (all lesions missed / all predicted "
    "components false positives), count difference = the other mask's lesion count, volume difference = its volume. "
    "So lesion-free cases are included in the means of the lesion-wise columns. See 'empty_rules' for every column."
)


def _default_names(width: int) -> tuple[str, ...]:
    """Column names of a CaseMetrics buffer of ``width`` columns (6: default, 11: with lesion-wise columns)."""
    for lesion in (False, True):
        names = metric_names(lesion)
        if len(names) == width:
            return names
    raise ValueError(
        f"cannot name {width} metric columns (expected {len(CASE_METRIC_NAMES)} or "
        f"{len(CASE_METRIC_NAMES) + len(LESION_METRIC_NAMES)}); pass columns= to CaseMetricsWriter."
    )


class CaseMetricsHandler(IgniteMetricHandler):
    """Ignite metric computing :class:`custom.metrics.CaseMetrics` over an evaluation epoch.

    Args:
        key: the metric whose nanmean is the handler's value (``engine.state.metrics[name]``); one of
            ``dice, iou, hd95_mm, asd_mm, hd95_voxel, asd_voxel`` (and, with ``lesion_metrics=True``, of
            ``lesion_f1, lesion_count_diff, n_ref_lesions, n_pred_lesions, volume_diff_ml``). Default ``"dice"``.
        spacing: fixed spacing for all cases; ``None`` (default) reads it per case from the MetaTensor affine.
        channel: foreground channel; ``None`` = 1 for 2-channel one-hot, 0 for 1-channel maps.
        threshold: foreground threshold (default 0.5).
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: put the per-case rows into ``engine.state.metric_details[name]`` (needed by
            :class:`CaseMetricsWriter`). Default True.
        flatten: also put every metric's mean into ``engine.state.metrics[f"{name}_{metric}"]``. Default True.
        lesion_metrics: also compute the ISLES'22 lesion-wise figures per case (five more columns, same spacing;
            see :mod:`custom.metrics.lesion`). Default False.
    """

    def __init__(
        self,
        key: str = "dice",
        spacing: Sequence[float] | None = None,
        channel: int | None = None,
        threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        flatten: bool = True,
        lesion_metrics: bool = False,
    ) -> None:
        names = metric_names(bool(lesion_metrics))
        if key not in names:
            raise ValueError(f"key must be one of {names}, got {key!r}.")
        self.key = key
        self.flatten = flatten
        self.names = names
        metric_fn = CaseMetrics(spacing=spacing, channel=channel, threshold=threshold, lesion_metrics=lesion_metrics)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    def compute(self) -> float:
        means = self.metric_fn.aggregate()
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call the attach() function to connect expected engine first.")
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()  # type: ignore[attr-defined]
        if self._engine is not None and self._name is not None:
            columns = getattr(self._engine.state, COLUMNS_ATTR, None)
            if not isinstance(columns, dict):
                columns = {}
                setattr(self._engine.state, COLUMNS_ATTR, columns)
            columns[self._name] = tuple(self.names)
        if self.flatten and self._engine is not None and self._name is not None:
            for k, v in means.items():
                self._engine.state.metrics[f"{self._name}_{k}"] = v
        return float(means[self.key])


def _cell(name: str, v: float) -> str:
    """CSV text of one value: ``nan``, an integer for the lesion counts, else ``repr`` of the float."""
    if math.isnan(v):
        return "nan"
    if name in INTEGER_METRICS and float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _filename_of(meta: Any) -> str | None:
    if isinstance(meta, Mapping):
        v = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        return None if v is None else f"{v}"
    if isinstance(meta, str):
        return meta
    return None


class CaseMetricsWriter:
    """Write per-case and summary files of a :class:`CaseMetricsHandler` when an evaluator run completes.

    Files (in ``output_dir``, overwritten at every run of the engine):

    * ``{filename_prefix}metrics_per_case.csv``: columns ``filename, dice, iou, hd95_mm, asd_mm, hd95_voxel,
      asd_voxel`` (+ ``lesion_f1, lesion_count_diff, n_ref_lesions, n_pred_lesions, volume_diff_ml`` when the
      handler has ``lesion_metrics=True``: whatever columns the handler reports); one row per case in evaluation
      order; undefined values are written as ``nan``, lesion counts as integers.
    * ``{filename_prefix}metrics_summary.json``: ``{"metrics": {metric: {mean, std, median, count, nan_count}},
      "num_cases", "units", "primary", "paper_compatible", ...}``; ``count`` is the number of non-NaN values the
      statistics use; statistics of an all-NaN metric are ``null``; ``std`` is the population std (ddof=0). With
      lesion-wise columns also ``"lesion_wise"`` (their names) and ``"empty_rules"`` (the value of every column
      when the prediction and / or the reference is empty, :data:`custom.metrics.EMPTY_RULES`).

    The column names are taken from ``columns``, else from the :class:`CaseMetricsHandler` attached under
    ``metric_name`` (``engine.state.case_metric_columns``), else from the number of columns (6 or 11).

    Args:
        output_dir: directory for the files (created if needed).
        metric_name: the name under which the :class:`CaseMetricsHandler` is attached (its per-case rows are read
            from ``engine.state.metric_details[metric_name]``).
        filename_prefix: prefix of both file names.
        batch_transform: optional callable mapping ``engine.state.batch`` to the meta data of the images (a meta
            dict of a collated batch, a list of meta dicts, or a list of file names). By default the file names
            are read from ``batch[image_key].meta`` (MetaTensor) or ``batch[f"{image_key}_meta_dict"]``, for a
            collated dict or a decollated list of dicts.
        image_key: key of the image in the batch (default ``"image"``).
        save_rank: rank that writes the files in distributed evaluation.
        logger_name: logger for the table (default ``"CaseMetricsWriter"``).
        columns: names of the metric columns (default: see above).
        protocol: how the inputs were made (``custom.transforms.protocol_name``: ``"label_free"``, or a note that the
            images were cropped around their ground-truth label); when given, a ``protocol`` column of the CSV and
            the ``"protocol"`` key of the summary carry it, so no figure made with the label reads as label-free.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_name: str = "case_metrics",
        filename_prefix: str = "",
        batch_transform: Callable | None = None,
        image_key: str = "image",
        save_rank: int = 0,
        logger_name: str | None = None,
        columns: Sequence[str] | None = None,
        protocol: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.columns = None if columns is None else tuple(str(c) for c in columns)
        self.output_dir = str(output_dir)
        self.metric_name = metric_name
        self.filename_prefix = filename_prefix
        self.batch_transform = batch_transform
        self.image_key = image_key
        self.save_rank = save_rank
        self.logger = logging.getLogger(logger_name or "CaseMetricsWriter")
        self._filenames: list[str] = []
        self.last_summary: dict[str, Any] | None = None

    # -- ignite wiring -----------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_filenames)
        engine.add_event_handler(Events.COMPLETED, self)

    def _started(self, _engine: Engine) -> None:
        self._filenames = []

    def _filenames_from_batch(self, batch: Any) -> list[str | None]:
        if self.batch_transform is not None:
            meta = self.batch_transform(batch)
            if isinstance(meta, Mapping):
                meta = decollate_batch(meta)
            if isinstance(meta, str):
                meta = [meta]
            return [_filename_of(m) for m in meta]
        if isinstance(batch, Mapping):  # collated batch: one entry per batch item
            fn, n = self._item_filename(batch)
            fns = list(fn) if isinstance(fn, (list, tuple)) else [fn] * n
            return [None if f is None else f"{f}" for f in fns]
        names: list[str | None] = []
        for item in batch if isinstance(batch, (list, tuple)) else []:  # decollated list of dicts
            fn = self._item_filename(item)[0] if isinstance(item, Mapping) else None
            names.append(None if fn is None else f"{fn}")
        return names

    def _item_filename(self, item: Mapping) -> tuple[Any, int]:
        img = item.get(self.image_key)
        meta = getattr(img, "meta", None)
        if not isinstance(meta, Mapping):
            meta = item.get(f"{self.image_key}_meta_dict")
        fn = meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(meta, Mapping) else None
        n = int(img.shape[0]) if isinstance(img, torch.Tensor) and img.ndim > 0 else 1
        return fn, n

    def _collect_filenames(self, engine: Engine) -> None:
        self._filenames.extend("" if f is None else f for f in self._filenames_from_batch(engine.state.batch))

    # -- output ------------------------------------------------------------------------------------------------------
    def __call__(self, engine: Engine) -> None:
        ws = idist.get_world_size() if idist is not None else 1
        names = string_list_all_gather(strings=self._filenames) if ws > 1 else list(self._filenames)
        rank = idist.get_rank() if idist is not None else 0
        if rank != self.save_rank:
            return
        details = getattr(engine.state, "metric_details", {}) or {}
        if self.metric_name not in details:
            self.logger.warning(
                f"CaseMetricsWriter: no per-case details for metric {self.metric_name!r} in engine.state.metric_details "
                f"(attach a CaseMetricsHandler under that name with save_details=True); nothing written."
            )
            return
        values = details[self.metric_name]
        columns = self.columns or (getattr(engine.state, COLUMNS_ATTR, None) or {}).get(self.metric_name)
        arr = (
            np.zeros((0, len(columns or CASE_METRIC_NAMES)))
            if values is None
            else np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=float)
        )
        if columns is None:  # no handler told its columns: name them by their number
            columns = _default_names(arr.shape[-1] if arr.ndim == 2 else len(CASE_METRIC_NAMES))
        columns = tuple(columns)
        arr = arr.reshape(-1, len(columns))
        if len(names) != arr.shape[0]:
            if names:
                self.logger.warning(
                    f"CaseMetricsWriter: {len(names)} file names for {arr.shape[0]} cases; using case indices."
                )
            names = [""] * arr.shape[0]
        names = [n if n else f"case_{i:04d}" for i, n in enumerate(names)]
        self.write(arr, names, columns)

    def write(
        self, values: np.ndarray, filenames: Sequence[str], columns: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Write the CSV and JSON files for ``values`` ``(N, len(columns))`` and ``filenames`` and log the table;
        returns the summary dict written to JSON. ``columns`` defaults to the writer's ``columns``, else the
        names implied by the number of columns (6 or 11)."""
        values = np.asarray(values, dtype=float)
        if columns is None:
            columns = self.columns or _default_names(values.shape[-1] if values.ndim == 2 else len(CASE_METRIC_NAMES))
        columns = tuple(columns)
        values = values.reshape(-1, len(columns))
        os.makedirs(self.output_dir, exist_ok=True)
        csv_path = os.path.join(self.output_dir, f"{self.filename_prefix}metrics_per_case.csv")
        json_path = os.path.join(self.output_dir, f"{self.filename_prefix}metrics_summary.json")
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            extra = [] if self.protocol is None else [self.protocol]
            w.writerow(["filename", *columns, *(["protocol"] if extra else [])])
            for fn, row in zip(filenames, values):
                w.writerow([fn, *(_cell(name, v) for name, v in zip(columns, row)), *extra])
        stats = summarize_case_metrics(values, columns)
        all_units = {**METRIC_UNITS, **LESION_METRIC_UNITS}
        summary: dict[str, Any] = {
            "metric_name": self.metric_name,
            "num_cases": int(values.shape[0]),
            "metrics": stats,
            "units": {name: all_units.get(name, "unknown") for name in columns},
            "primary": list(PRIMARY_METRICS),
            "paper_compatible": list(PAPER_COMPATIBLE_METRICS),
            "notes": (
                "*_mm: spacing-aware (voxel spacing from the image affine), primary figures; NaN when exactly one "
                "of prediction / reference is empty, 0 when both are empty. *_voxel: paper-compatible medpy "
                "definitions without spacing (hd95 = 95th percentile of pooled symmetric surface distances, asd = "
                "mean directed pred->ref distance); an empty prediction scores 0, an empty reference with a "
                "prediction is NaN. dice/iou: both empty = 1. mean/std/median ignore NaN; count = non-NaN values; "
                "std is the population std (ddof=0)."
            ),
        }
        if self.protocol is not None:
            summary["protocol"] = self.protocol
        lesion_cols = [c for c in columns if c in LESION_WISE_METRICS]
        if lesion_cols:
            summary["lesion_wise"] = lesion_cols
            summary["notes"] += " " + LESION_NOTES
            summary["empty_rules"] = {
                case: {c: rule[c] for c in columns if c in rule} for case, rule in EMPTY_RULES.items()
            }
        with open(json_path, "w") as f:
            json.dump(summary, f, indent=2, allow_nan=False)
        self.logger.info(self.format_table(stats, int(values.shape[0])))
        self.last_summary = summary
        return summary

    @staticmethod
    def format_table(stats: Mapping[str, Mapping[str, Any]], num_cases: int) -> str:
        """Plain-text table of the summary statistics."""

        def fmt(v: Any) -> str:
            return "nan" if v is None else f"{v:.4f}"

        width = max([12, *(len(n) + 1 for n in stats)])
        lines = [
            f"Per-case metrics summary ({num_cases} cases; *_mm = millimetres, primary; "
            f"*_voxel = paper-compatible voxel units)",
            f"{'metric':<{width}}{'mean':>10}{'std':>10}{'median':>10}{'count':>7}{'nan':>6}",
        ]
        for name, s in stats.items():
            lines.append(
                f"{name:<{width}}{fmt(s['mean']):>10}{fmt(s['std']):>10}{fmt(s['median']):>10}"
                f"{s['count']:>7d}{s['nan_count']:>6d}"
            )
        return "\n".join(lines)
