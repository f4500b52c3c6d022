"""The C library's allocator controls (``malloc_trim``, ``mallopt``), found once for the aggregator and the
collaborator alike. Standard library only, so the light client install imports it too."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def glibc_function(name: str) -> Any | None:
    """The C library's function ``name``, or None where it lacks one (glibc only: musl and macOS have neither)."""
    return getattr(_libc(), name, None)
