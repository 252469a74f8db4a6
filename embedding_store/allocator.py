"""glibc malloc settings that keep a long-running store's RSS close to the rows it holds.

A training step allocates large temporaries (a lookup of 65,536 ids makes ~20 MB arrays) and
frees them. glibc's default *dynamic* mmap threshold rises to the size of the largest chunk
freed, so after the first few steps such temporaries come from the heap, and freed heap memory
below a live allocation is never returned: RSS creeps up to the high-water mark of every
temporary ever made (the memory benchmark measured 2.0x the raw row bytes per hot row). A
fixed threshold keeps large blocks in their own mappings, unmapped on free; a small arena
count stops each of the store's threads (prefetch, write-back, shard pool, Kafka, RocksDB)
from keeping its own heap. Measured: 1.30x instead of 2.01x per hot row (BENCHMARKS.md).

This changes process-wide state, so the library never does it by itself: the ``freshet``
command calls :func:`tune_allocator` at start (``FRESHET_MALLOC_TUNING=0`` turns it off), and
an application embedding the store may call it first thing. It returns ``False`` and does
nothing where the C library is not glibc.

>>> isinstance(tune_allocator(), bool)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

__all__ = ["DEFAULT_ARENA_MAX", "DEFAULT_MMAP_THRESHOLD", "tune_allocator"]

DEFAULT_MMAP_THRESHOLD: Final = 1 << 20
DEFAULT_ARENA_MAX: Final = 2
_M_MMAP_THRESHOLD: Final = -3  # glibc malloc.h
_M_ARENA_MAX: Final = -8
ENV_SWITCH: Final = "FRESHET_MALLOC_TUNING"


def tune_allocator(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, arena_max: int = DEFAULT_ARENA_MAX
) -> bool:
    """Fix glibc's mmap threshold and cap its arenas; ``True`` if both were applied.

    Does nothing (``False``) on a non-glibc C library or when ``$FRESHET_MALLOC_TUNING`` is
    ``0``. Call it before starting threads: arenas that exist already are kept.
    """
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok_threshold = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1)
    ok_arenas = bool(mallopt(_M_ARENA_MAX, arena_max) == 1)
    return ok_threshold and ok_arenas
