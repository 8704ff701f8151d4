"""glibc malloc settings for training on the CPU: keep freed activation memory instead of unmapping it.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with a fresh ``mmap`` and returns it
with ``munmap`` when freed. A training iteration of a 3D U-Net allocates and frees its activations (tens to
hundreds of MiB each) every iteration, so every iteration page-faults all of them back in and the kernel zeroes
the pages again: a quarter to a third of the CPU time of an iteration was spent in the kernel here
(``../shared/docs/performance_notes.md``; benchmarks/README.md, "CPU training speed", measures what this module
saves). :func:`retain_freed_memory` makes glibc serve large blocks from its heap (``M_MMAP_MAX = 0``) and never
trim the heap's top (``M_TRIM_THRESHOLD``), so the pages of one iteration are reused by the next.

The cost is memory that is not handed back to the system while the process runs: the resident size stays at the
peak of the iteration (plus fragmentation) instead of falling between iterations. It changes nothing numerically.
It is process-wide and cannot be undone by this module (:func:`restore_defaults` sets glibc's defaults back for
later allocations). Other allocators (jemalloc, tcmalloc through ``LD_PRELOAD``) are an alternative set outside
Python; on a non-glibc system this module does nothing and says so.

Environment equivalent (set before the process starts): ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_memory", "restore_defaults"]

logger = logging.getLogger(__name__)

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
# glibc's defaults (malloc(3)): trim at 128 KiB, mmap above 128 KiB (dynamic), up to 65536 mappings
_DEFAULTS = ((_M_TRIM_THRESHOLD, 128 * 1024), (_M_MMAP_THRESHOLD, 128 * 1024), (_M_MMAP_MAX, 65536))


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    return libc


def _mallopt(settings) -> bool:
    libc = _glibc()
    if libc is None:
        logger.info("not glibc: malloc settings left as they are")
        return False
    ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
    if not ok:
        logger.warning("glibc refused a mallopt setting: malloc settings may be partly applied")
    return ok


def retain_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD = INT_MAX``);
    True when glibc accepted both. Call it before the training allocates (the bundles' ``initialize``)."""
    return _mallopt(((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))


def restore_defaults() -> bool:
    """glibc's default settings again, for allocations made from now on (True when accepted)."""
    return _mallopt(_DEFAULTS)
