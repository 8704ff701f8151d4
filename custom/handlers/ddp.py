"""Handlers for data-parallel (torchrun / DistributedDataParallel) training.

``BufferSync`` keeps the non-trained state (BatchNorm running statistics) of the student and the teacher identical
on every rank; ``DrawLog`` records, per rank, which cases each iteration drew and fingerprints of the networks at
the end of training (a debugging aid used by the multi-GPU test).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from .ema import unwrap

__all__ = ["BufferSync", "DrawLog", "state_sha256"]


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and the exact bytes of every tensor)."""
    h = hashlib.sha256()
    for name, t in sorted(unwrap(module).state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class BufferSync:
    """Keep modules identical across data-parallel ranks.

    DistributedDataParallel averages the gradients, so the parameters stay in sync, but the buffers (BatchNorm
    running statistics) are updated by every rank's own forward pass (DDP only broadcasts rank 0's at the start of
    the next forward), and the teacher's buffers are copied from the student. After every iteration this handler
    averages the floating-point buffers of ``modules`` over the ranks; when training starts it broadcasts their
    whole state from rank 0 (so a teacher built before DDP's initial broadcast starts equal too). Attach it after
    :class:`custom.handlers.TeacherEMAHandler`. Without an initialised process group it does nothing.

    Args:
        modules: the networks to keep in sync (e.g. the unwrapped student and the teacher).
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.broadcast)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.average_buffers)

    @torch.no_grad()
    def broadcast(self, engine: Engine | None = None) -> None:
        if _dist_rank_world()[1] < 2:
            return
        for module in self.modules:
            for t in unwrap(module).state_dict().values():
                dist.broadcast(t, src=0)

    @torch.no_grad()
    def average_buffers(self, engine: Engine | None = None) -> None:
        world = _dist_rank_world()[1]
        if world < 2:
            return
        for module in self.modules:
            for buf in unwrap(module).buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf.div_(world)


class DrawLog:
    """Per rank, write ``<path>/rank<r>.json``: for every iteration the ``filename_or_obj`` of the labeled batch
    (``engine.state.batch``) and of the unlabeled batch (``engine.state.unlabeled_files``), and at the end the
    sha256 (:func:`state_sha256`) of each of ``networks``. A debugging aid (multi-GPU test).

    Args:
        path: output folder (created).
        networks: name -> module to fingerprint when training completes.
    """

    def __init__(self, path: str | os.PathLike[str], networks: Mapping[str, nn.Module] | None = None) -> None:
        self.path = Path(path)
        self.networks = dict(networks or {})
        self.record: dict[str, Any] = {"iterations": [], "sha256": {}}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @staticmethod
    def _files(batch: Any) -> list[str]:
        image = batch.get("image") if isinstance(batch, Mapping) else None
        names = getattr(image, "meta", {}).get("filename_or_obj", [])
        return [str(n) for n in ([names] if isinstance(names, str) else names)]

    def _write(self) -> None:
        rank, world = _dist_rank_world()
        self.record.update(rank=rank, world_size=world)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rank{rank}.json").write_text(json.dumps(self.record, indent=1))

    def iteration_completed(self, engine: Engine) -> None:
        self.record["iterations"].append(
            {
                "iteration": engine.state.iteration,
                "labeled": self._files(engine.state.batch),
                "unlabeled": [str(f) for f in getattr(engine.state, "unlabeled_files", [])],
            }
        )
        self._write()

    def completed(self, engine: Engine) -> None:
        self.record["sha256"] = {name: state_sha256(net) for name, net in self.networks.items()}
        self._write()
