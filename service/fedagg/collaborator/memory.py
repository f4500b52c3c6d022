"""Giving freed memory back to the system after a large download.

While a tensor's reply arrives, gRPC's C core and its Python binding allocate it in many pieces (received slices,
their copies, the joined bytes). Freed, most of them stay in the C allocator's heaps, counted in the process's
resident memory, and the next reply is allocated elsewhere: without trimming, a collaborator's memory grows by
several tensors beyond the model. ``malloc_trim`` (glibc) returns the free pages of every heap to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_AFTER_BYTES = 8 * 2**20
"""Trim after a reply at least this large: smaller ones leave too little behind to be worth the walk."""


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return trim


_TRIM = _malloc_trim()


def release_freed_memory(reply_bytes: int) -> None:
    """After a reply of ``reply_bytes`` was dropped: return the allocator's free pages to the system."""
    if _TRIM is not None and reply_bytes >= TRIM_AFTER_BYTES:
        _TRIM(0)
