"""glibc's allocator setting for training and benchmarks: applied by the entry points that train or bench
(``ncalab.train.run`` and its DDP processes, ``python -m ncalab.tools.bench``), never by ``import ncalab``.

A training step allocates and frees the same large activation buffers thousands of times; by default glibc
serves each one from a fresh ``mmap`` and unmaps it on free, so every step pays page faults on zeroed pages
(measured 1.5-2x on a 128x128 grid on CPU). :func:`keep_heap` keeps them on the heap instead: the process then
holds on to its peak memory. Off with the config key ``keep_heap=false`` or ``NCALAB_KEEP_HEAP=0``.

Blocks of :data:`MMAP_THRESHOLD` (64 MiB) and more still get an mmap of their own, returned on free: kept on the
heap, such blocks of changing sizes fragment it, and a multi-scale perception at 160x160 (whole-grid tensors of
40-130 MB every step) held 10.5 GB where it needs 2-4 GB (32 steps, checkpointed every 8; docs/performance.md).
"""

from __future__ import annotations

import ctypes
import os

ENV = "NCALAB_KEEP_HEAP"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
# Blocks at least this large are still mmapped (and unmapped on free); smaller ones stay on the heap.
MMAP_THRESHOLD = 64 << 20

# Whether this process's allocator has been changed (by keep_heap).
HEAP_KEPT = False


def keep_heap(enabled: bool = True) -> bool:
    """Stop glibc from returning large buffers to the OS after every free (and faulting them in again), for
    the whole process. Does nothing when ``enabled`` is false, when ``NCALAB_KEEP_HEAP=0``, or without glibc
    (macOS, musl). Returns whether the setting is in effect."""
    global HEAP_KEPT
    if HEAP_KEPT:
        return True
    if not enabled or os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    HEAP_KEPT = bool(ok)
    return HEAP_KEPT
