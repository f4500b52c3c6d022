"""Giving memory back to the operating system once a round's large temporary buffers are gone."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only
    return None if function is None else function


def trim_heap() -> None:
    """Return free heap pages to the system (glibc keeps them otherwise, inflating RSS after a round end)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
