"""Process heap policy for batched CPU inference: keep freed memory instead of handing it back to the kernel.

torch's CPU tensors come from glibc malloc. By default a block over the (adaptive) mmap threshold is mapped
fresh and unmapped on free, and the top of the heap is trimmed as soon as it is free, so a network run batch
after batch faults in every activation's pages again each time: on EfficientNet-Lite0 that page-fault
churn was more kernel time than the convolutions themselves. ``keep_freed_memory`` fixes the thresholds
(blocks up to 32 MB, the most glibc allows, come from the heap; the heap is never trimmed), so a steady
loop reuses the same pages. The cost is that the process keeps its peak heap until it exits.

It changes the whole process, so the library never calls it on import: the processes that own their
run call it (`index_paths`). Elsewhere (musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2); larger values are refused

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once). True if they were set."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold is an int parameter: the largest positive int stands for "never"
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        LOG.debug("mallopt refused the heap thresholds; freed memory goes back to the kernel as usual")
    _done = ok
    return ok
