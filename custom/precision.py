"""Mixed precision: the bundles' ``amp: auto`` and ``amp_dtype: auto``.

``auto`` turns bfloat16 autocast on where the device computes bfloat16 natively and off elsewhere:

* CPU: AMX-BF16 (Intel Sapphire Rapids and later). There oneDNN runs the bf16 convolutions on the AMX tiles;
  measured on a 2-core Xeon with AMX (benchmarks/README.md, "CPU training speed"): 1.5x per training iteration over
  fp32 with the same allocator setting, 2.0x with channels-last as well (an option: ``channels_last``); validation
  Dice as fp32 on the seeds checked on the LA protocol (benchmarks/la_protocol.md, "bf16 against fp32"). CPUs with
  AVX512-BF16 but no AMX (AMD Zen 4) stay fp32: there oneDNN's bf16 conv3d backward returned NaN weight gradients
  intermittently (about 1 training run in 4 of the bundles' tiny test network, 32^3 patches, on a 2-core AMD EPYC;
  found with ``torch.autograd.set_detect_anomaly``: ``ConvolutionBackward0``, the bottleneck convolution), which
  the trainer can only skip; fp32 was reproducible bit for bit there. Without either instruction set bf16 is
  emulated and slower than fp32. ``amp: true`` still forces bf16 autocast on any CPU.
* CUDA: GPUs with native bf16 (``torch.cuda.is_bf16_supported()``: Ampere and later).

``amp: false`` forces fp32 everywhere (the flag for reproducing fp32 results); ``amp: true`` forces autocast with
``amp_dtype`` (``auto``: bfloat16 where native, else float16). The losses always run in float32 (the trainer casts
the logits and embeddings back), and validation / inference in MONAI's evaluators autocast on CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch

from .flags import as_bool

__all__ = ["AMP_DTYPES", "native_bf16", "resolve_amp", "resolve_amp_dtype", "resolve_channels_last"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}  # autocast dtypes by name


def native_bf16(device: str | torch.device) -> bool:
    """True when ``device`` computes bfloat16 in hardware where ``auto`` was measured and checked (CPU: AMX; CUDA:
    Ampere or later; see the module docstring for CPUs with AVX512-BF16 only)."""
    device = torch.device(device)
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return probe is not None and bool(probe()) and torch.backends.mkldnn.is_available()
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def resolve_amp(amp: bool | str, device: str | torch.device) -> bool:
    """``amp`` (true / false / "auto", also as command-line strings) as a bool for ``device``."""
    if _is_auto(amp):
        return native_bf16(device)
    return as_bool(amp, "amp")


def resolve_amp_dtype(amp_dtype: str, device: str | torch.device) -> str:
    """``amp_dtype`` ("float16" / "bfloat16" / "auto") as the autocast dtype name for ``device``."""
    if _is_auto(amp_dtype):
        return "bfloat16" if native_bf16(device) else "float16"
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {tuple(AMP_DTYPES)} or 'auto', got {amp_dtype!r}")
    return str(amp_dtype)


def resolve_channels_last(channels_last: bool | str, amp: bool, amp_dtype: str, device: str | torch.device) -> bool:
    """``channels_last`` (true / false / "auto") as a bool: "auto" is true for bfloat16 autocast on the CPU, where
    oneDNN's bf16 convolutions, pooling and trilinear upsampling run in the channels-last layout and the iteration
    measured 1.3x faster with it (benchmarks/README.md; the bundles keep it off until its quality check is clean:
    benchmarks/la_protocol.md); false elsewhere (slower on a GPU there)."""
    if _is_auto(channels_last):
        return torch.device(device).type == "cpu" and bool(amp) and amp_dtype == "bfloat16"
    return as_bool(channels_last, "channels_last")
