"""Checkpoints of a mean-teacher run that hold the trainer's own state, for exact resumption.

A bundle config cannot put ``@train#trainer`` into the ``save_dict`` of a handler that the trainer itself is built
with (a reference cycle), so these subclasses of MONAI's handlers add the engine they are attached to under
``"trainer"``; the saver also writes atomically. Everything else (``weights_only=True`` loading, keeping the
engine's ``max_epochs`` when resuming) is MONAI's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["TrainingCheckpointSaver", "TrainingCheckpointLoader", "latest_checkpoint", "loss_parts"]


class TrainingCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose ``save_dict`` also holds the engine it is attached to, and whose
    files are written atomically (a temporary file in the same folder, then ``os.replace``), so that a run killed
    while saving never leaves a truncated checkpoint for ``--resume`` to pick up. MONAI builds Ignite's DiskSaver
    with ``atomic=False`` (for group read permissions, which Ignite >= 0.5 restores after an atomic save)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        super().attach(engine)


class TrainingCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` whose ``load_dict`` also holds the engine it is attached to.

    ``load_path`` may be a checkpoint file or a folder, in which case the newest checkpoint in it is loaded.
    """

    def __init__(self, load_path: str, load_dict: dict, **kwargs: Any) -> None:
        path = Path(load_path)
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise FileNotFoundError(f"no checkpoint (*.pt) to resume from in {path}")
            path = Path(found)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        super().__init__(load_path=str(path), load_dict=dict(load_dict), **kwargs)

    def attach(self, engine: Engine) -> None:
        self.load_dict.setdefault("trainer", engine)
        super().attach(engine)


def latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The most recently written ``*.pt`` file in ``folder`` (None if there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob("*.pt") if p.is_file()]
    return str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else None


_PARTS = ("loss", "supervised", "uncl", "fecl", "mse", "beta", "eta")


def loss_parts(output: Any) -> dict[str, float]:
    """``engine.state.output`` of :class:`custom.engines.MeanTeacherTrainer` -> the loss parts as floats
    (``output_transform`` of StatsHandler / TensorBoardStatsHandler)."""
    if isinstance(output, list):
        output = output[0]
    return {k: float(output[k]) for k in _PARTS if k in output}
