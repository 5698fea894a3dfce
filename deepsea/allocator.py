"""The process's memory allocator, tuned for jitted steps on the CPU (no JAX import: the command line calls it
before anything else).

:func:`keep_freed_memory` makes glibc's ``malloc`` keep large freed buffers for reuse.  XLA:CPU allocates a jitted
step's temporary buffers on each execution; above glibc's mapping threshold (128 KiB, adapting up to 32 MiB) each
one is a fresh mapping whose pages the kernel zero-fills on first touch, inside whichever operation writes it
first, every step, and is unmapped again when freed.  Served from the heap and kept there, the same memory is
reused step after step; the process holds on to its peak memory in return.  Those thresholds govern the heaps, not
their size: allocations made on other threads (XLA's) come from per-thread arenas whose heaps stop at 64 MiB, so a
larger buffer is mapped afresh anyway; the command line's XLA flags keep a step's temporaries in smaller blocks
(:data:`deepsea.cli.CPU_XLA_FLAGS`).  The training step's time with and without it: docs/results.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["KEEP_FREED_BYTES", "keep_freed_memory"]

KEEP_FREED_BYTES = 1 << 30
"""Allocations up to this size come from the heap after :func:`keep_freed_memory`, and up to this much freed
memory stays there (a training step's largest temporary buffers are tens of megabytes)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h


def keep_freed_memory(max_bytes: int = KEEP_FREED_BYTES) -> bool:
    """Makes glibc serve allocations up to ``max_bytes`` (at most 2 GiB) from its heap and keep up to that much
    freed memory there instead of returning it to the system.  Affects the whole process from then on.  Returns
    whether glibc took both settings; False, changing nothing, where the C library is not glibc."""
    if not 0 < max_bytes < 2**31:
        raise ValueError(f"max_bytes must be between 1 and 2**31 - 1 (mallopt takes a C int); got {max_bytes}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(max_bytes)) == 1
    trimmed = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(max_bytes)) == 1
    return mapped and trimmed
