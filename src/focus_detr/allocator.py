"""Keep freed memory in the process instead of returning it to the operating system.

A detector's forward pass on a CPU allocates and frees tensors of tens of megabytes (an
R-50 800x1333 ``res2`` map is 68 MB). glibc's ``malloc`` serves anything above its mmap
threshold (at most 32 MB by default) with a fresh ``mmap`` and unmaps it on ``free``, and
trims the heap top above 128 KB: every forward then faults its large buffers in again, page
by page, and zero-fills them. On the 2-core reference machine that is ~15% of the eager
model's time (R-50 800x1333: 2.0 s -> 1.7 s, see docs/benchmarks.md). Raising both
thresholds keeps the pages mapped and reused, as jemalloc or tcmalloc would, at the cost of
the process keeping its peak heap.

The CLI applies it at start-up; Python users call :func:`retain_freed_memory` themselves
(it changes process-wide behaviour, so importing the package never does). Set
``FOCUS_DETR_RETAIN_FREED_MEMORY=0`` to switch the CLI's call off. Other C libraries than
glibc (macOS, musl, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap and freed heap memory up to it is kept.
DEFAULT_THRESHOLD = 1 << 30
#: The CLI's switch: ``0`` leaves the allocator as it is.
ENVIRONMENT_VARIABLE = "FOCUS_DETR_RETAIN_FREED_MEMORY"


def retain_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Keep freed memory up to ``threshold`` bytes mapped for reuse (glibc only).

    Returns True when the allocator was changed, False where this C library has no
    ``mallopt`` (the call is then a no-op).
    """
    if not 0 < threshold < 2**31:
        raise ValueError(f"threshold must be in (0, 2**31), got {threshold}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    changed = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return mallopt(_M_TRIM_THRESHOLD, threshold) == 1 and changed


def retain_freed_memory_unless_disabled() -> bool:
    """:func:`retain_freed_memory` unless the environment switches it off (CLI start-up)."""
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return retain_freed_memory()
