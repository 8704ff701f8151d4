"""custom.precision: the bundles' ``amp: auto`` resolves from what the CPU really supports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from custom.precision import native_bf16, resolve_amp, resolve_amp_dtype


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's instruction sets from")
    return {f for line in info.read_text().splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}


def test_native_bf16_matches_the_cpu_flags():
    flags = _cpu_flags()
    # AMX only: AVX512-BF16 without AMX (AMD Zen 4) gave NaN weight gradients in oneDNN's bf16 conv3d backward
    expected = "amx_bf16" in flags and torch.backends.mkldnn.is_available()
    assert native_bf16("cpu") is expected
    assert native_bf16(torch.device("cpu")) is expected
    assert native_bf16("meta") is False


def test_resolve_amp():
    assert resolve_amp("auto", "cpu") is native_bf16("cpu")
    assert resolve_amp(" AUTO ", "cpu") is native_bf16("cpu")
    for off in (False, "false", "0", 0):
        assert resolve_amp(off, "cpu") is False  # the flag that forces fp32
    for on in (True, "true", 1):
        assert resolve_amp(on, "cpu") is True
    with pytest.raises(ValueError, match="amp"):
        resolve_amp("bf16", "cpu")


def test_resolve_amp_dtype():
    assert resolve_amp_dtype("auto", "cpu") == ("bfloat16" if native_bf16("cpu") else "float16")
    assert resolve_amp_dtype("float16", "cpu") == "float16"
    assert resolve_amp_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="amp_dtype"):
        resolve_amp_dtype("float64", "cpu")


def test_resolve_channels_last():
    from custom.precision import resolve_channels_last

    assert resolve_channels_last("auto", True, "bfloat16", "cpu") is True
    assert resolve_channels_last("auto", False, "bfloat16", "cpu") is False  # fp32: slower in channels-last
    assert resolve_channels_last("auto", True, "float16", "cpu") is False
    assert resolve_channels_last("auto", True, "bfloat16", "cuda") is False  # measured slower on a GPU
    assert resolve_channels_last("true", False, "float16", "cuda") is True
    assert resolve_channels_last(False, True, "bfloat16", "cpu") is False
