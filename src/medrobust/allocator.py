"""Process-level allocator setting for the command line (never applied by the library itself).

glibc returns freed blocks above its mmap/trim thresholds to the kernel and faults them back in on the next
allocation. Attacks allocate and free the same activation-sized tensors at every step, so on the CPU this
costs up to ~40% of a forward+backward pass (bench/RESULTS.md). Raising both thresholds keeps that memory in
the process instead; peak memory is unchanged, it is only returned at exit. Set MEDROBUST_MALLOC_TUNING=0 to
turn this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30


def tune_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds (both: setting one disables glibc's adaptive tuning of the
    other). Returns True when applied."""
    if os.environ.get("MEDROBUST_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    log.debug("glibc allocator thresholds raised: %s", ok)
    return ok
