"""Giving freed memory back to the system after a large download.

While a tensor's reply arrives, gRPC's C core and its Python binding allocate it in many pieces (received slices,
their copies, the joined bytes). Freed, most of them stay in the C allocator's heaps, counted in the process's
resident memory, and the next reply is allocated elsewhere: without trimming, a collaborator's memory grows by
several tensors beyond the model. ``malloc_trim`` (glibc) returns the free pages of every heap to the system.
"""

from __future__ import annotations

from fedagg.glibc import glibc_function

TRIM_AFTER_BYTES = 8 * 2**20
"""Trim after a reply at least this large: smaller ones leave too little behind to be worth the walk."""


_TRIM = glibc_function("malloc_trim")


def release_freed_memory(reply_bytes: int) -> None:
    """After a reply of ``reply_bytes`` was dropped: return the allocator's free pages to the system."""
    if _TRIM is not None and reply_bytes >= TRIM_AFTER_BYTES:
        _TRIM(0)
