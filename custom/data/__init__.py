"""Data preparation from the public releases, datalists and the loaders the bundles use.

The loaders (torch / MONAI) are imported on first use, so ``dycon prepare`` / ``dycon synth`` start quickly.
"""

from __future__ import annotations

from typing import Any

from .datalist import DatasetError

__all__ = ["DatasetError", "check_dataset", "check_inputs", "inference_inputs", "load_split", "stream_loader"]

_LAZY = {"inference_inputs", "load_split", "stream_loader"}


def __getattr__(name: str) -> Any:
    if name in ("check_dataset", "check_inputs"):
        from . import validation

        return getattr(validation, name)
    if name in _LAZY:
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'custom.data' has no attribute {name!r}")
