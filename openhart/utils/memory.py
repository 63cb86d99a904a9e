"""Giving freed host memory back to the operating system.

glibc's allocator keeps freed blocks below its (adaptive, up to 32 MiB) mmap threshold in its
heap arenas for reuse. After a one-off step that frees gigabytes in such blocks — replacing bf16
weights by int8 ones, or dropping the text encoder's weights before sampling — the process's
resident set would stay at its old size although nothing uses that memory. ``malloc_trim(0)``
returns the free pages at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _glibc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS (glibc on Linux); False where that is not available."""
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
