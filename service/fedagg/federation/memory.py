"""Giving memory back to the operating system: large buffers mapped on their own, free heap pages trimmed.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned to the system when it is
freed; below it, from a heap whose free pages it keeps. The threshold starts at 128 KiB but rises (up to 32 MiB) to
the size of every mapped buffer freed, so after the first upload the 2 MiB messages gRPC hands over land in the
heap, and a federation's many concurrent uploads leave hundreds of MiB of free heap resident. Fixing the threshold
keeps them mapped.
"""

from __future__ import annotations

import os

from fedagg.glibc import glibc_function

MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations from this size on get their own mapping (upload messages, reply buffers, aggregation blocks)."""
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def map_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` unless ``MALLOC_MMAP_THRESHOLD_`` sets it;
    True when the setting took effect."""
    mallopt = glibc_function("mallopt")
    if mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim_heap() -> None:
    """Return free heap pages to the system (glibc keeps them otherwise, inflating RSS after a round end)."""
    trim = glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
