"""The process's C allocator, set for loops that free and re-make the same buffers every step."""

from __future__ import annotations

import functools
import sys

# Freed memory glibc keeps at the top of the heap instead of returning it to the OS, and the
# size from which an allocation gets its own mmap (glibc's largest dynamic value on 64-bit).
TOP_PAD = 64 << 20
MMAP_THRESHOLD = 32 << 20
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # mallopt parameter numbers, from glibc's malloc.h


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep up to ``TOP_PAD`` bytes of freed memory for reuse.

    PyTorch's CPU tensors come from malloc. A training step frees its activations and gradients
    (several MB for the MNIST model) and allocates them again in the next step. By default glibc
    gives the heap top back to the OS on free, so every step page-faults that memory in again:
    about 140-210 faults per MNIST step, 4-5% of its time (bench/README.md, "allocator").
    Afterwards the process holds at most ``TOP_PAD`` more memory than before.

    Takes effect once per process; elsewhere than Linux with glibc it does nothing. Returns
    whether the allocator was set.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_TOP_PAD, TOP_PAD)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
