"""The C library's heap for the aggregator: buffers reused while uploads arrive, free pages given back after.

A fresh page costs a page fault and the kernel zeroing it (and here, on a virtual machine, the host backing it):
measured with perf in the wire benchmark (4 x 191 MiB, mTLS), about a quarter of the server's CPU went to faulting
in memory that gRPC's messages, the spool reads and the fold's products had just freed elsewhere. So buffers below
:data:`MMAP_THRESHOLD_BYTES` (every 2 MiB upload message, a reply buffer, an aggregation block) come from glibc's
heaps and are reused from one message to the next, and up to :data:`TRIM_THRESHOLD_BYTES` of free memory at a heap's
top stays there; the server cost per round fell by 25-40% (bench/results.md, section 2). What the heaps hold free is
returned to the system explicitly instead: after each upload is committed and at each round end
(:func:`trim_heap`, ``malloc_trim``), so resident memory between uploads is what is in use. Buffers of the
threshold and above (a large tensor's reply, a big model's blocks) get mappings of their own, returned when freed.

Both settings are fixed (glibc's dynamic threshold would otherwise move with every large buffer freed); an operator
who sets ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` keeps glibc's reading of the environment.
"""

from __future__ import annotations

import os

from fedagg.glibc import glibc_function

MMAP_THRESHOLD_BYTES = 64 << 20
"""Allocations from this size on get their own mapping; smaller ones come from (and go back to) the heaps."""
TRIM_THRESHOLD_BYTES = 64 << 20
"""Free memory at a heap's top kept for the next buffers instead of being returned at once."""
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_heap() -> bool:
    """Fix glibc's mmap and trim thresholds (module docstring) unless the environment sets either; True when the
    settings took effect."""
    mallopt = glibc_function("mallopt")
    if mallopt is None or any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def trim_heap() -> None:
    """Return free heap pages to the system (glibc keeps them otherwise, inflating RSS after a round end)."""
    trim = glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
