"""custom.allocator: freed large blocks stay mapped after retain_freed_memory (measured on the process's RSS)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from custom.allocator import _glibc

# in a fresh interpreter (the setting is process-wide): RSS after freeing a 256 MiB tensor that was written to
_PROBE = textwrap.dedent(
    """
    import sys, torch
    import custom.allocator as a
    if sys.argv[1] == "retain":
        assert a.retain_freed_memory()
    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    base = rss_mib()
    t = torch.ones(64 * 2**20)  # 256 MiB, every page touched
    held = rss_mib()
    del t
    print(held - base, rss_mib() - base)
    """
)


def _rss_after_free(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    held, after = map(float, out.stdout.split())
    return held, after


@pytest.mark.skipif(_glibc() is None or not sys.platform.startswith("linux"), reason="glibc on Linux only")
def test_retain_freed_memory_keeps_the_pages():
    held, after = _rss_after_free("default")
    assert held > 200 and after < 50  # glibc's default: the mmap'd block is unmapped when freed
    held, after = _rss_after_free("retain")
    assert held > 200 and after > 200  # retained: the next iteration reuses these pages without faulting


def test_restore_defaults_round_trip():
    import custom.allocator as a

    if _glibc() is None:
        assert a.retain_freed_memory() is False and a.restore_defaults() is False
    else:
        assert a.retain_freed_memory() is True
        assert a.restore_defaults() is True
