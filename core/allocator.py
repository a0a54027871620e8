"""CPU allocator tuning: keep freed memory for reuse instead of handing it back to the OS.

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold
(at most 32 MB; the DPT heads' full-resolution maps are 50-100 MB at 512x384) with a fresh
``mmap`` and unmaps it on free, and trims freed heap memory back to the OS. Each large tensor
then pays a page fault and a zeroing for every 4 KB page it touches. Measured on a 2-core CPU, 3
images at 512x384 in fp32: about 1,000,000 page faults per inference run without the tuning,
about 4,000 with it (from the second run on; ~150,000 in the first), and a run 5-10% faster
(``bench/bench_inference.py --no-allocator-tuning`` compares whole runs).

:func:`tune_cpu_allocator` sets, with glibc's ``mallopt``:

- ``M_MMAP_MAX = 0``: large blocks come from the heap, where freed memory is reused;
- ``M_TRIM_THRESHOLD`` = 2 GB: freed memory at the top of the heap stays mapped;
- ``M_ARENA_MAX = 1``: threads started afterwards (the web app's job threads) use the main heap,
  where the two settings above apply in full (a thread heap is at most 64 MB and blocks larger
  than that are still mapped one by one).

The cost: the process keeps its peak resident memory after a run instead of shrinking. It is a
process-wide setting, applied once (later calls are no-ops); on other C libraries or systems it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

__all__ = ["tune_cpu_allocator"]

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt's int takes (~2 GB)


@functools.lru_cache(maxsize=1)
def tune_cpu_allocator() -> bool:
    """Apply the settings above once per process. Returns True when glibc accepted all of them."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("no mallopt in the C library; CPU allocator left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES), (_M_ARENA_MAX, 1))
    accepted = all(mallopt(param, value) == 1 for param, value in settings)
    logger.info("CPU allocator tuned (large blocks reused, freed memory kept): %s", accepted)
    return accepted
