"""Host memory: how the CPU paths (training steps, feature extraction) allocate."""
from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)


@functools.cache   # process-wide: applied once
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a step frees for the next step instead of giving it back to the kernel.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with ``mmap`` and unmaps them on ``free``, so a CPU
    training step (or a batch of feature extraction) whose activations are that large has the kernel fault in and
    zero every page of them again, each time. ``M_MMAP_MAX=0`` serves them from the heap and a high
    ``M_TRIM_THRESHOLD`` keeps the freed heap for reuse, as jemalloc and tcmalloc do: the process holds on to its peak
    instead of handing it back between steps. Process-wide (DataLoader workers forked afterwards inherit it).
    Returns whether it applied: only under glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
