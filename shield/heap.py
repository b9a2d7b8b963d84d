"""Handing freed memory back to the system once an attack's leftovers are gone."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand freed heap back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    glibc keeps freed memory for reuse until trimmed, so without this the process's resident
    size stays at its peak after an attack although what it held is gone (measured: 11 MB of
    52 MB kept after a sweep of throttle buckets). It walks the whole heap, so it is called
    after a large drop, not on a timer.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
