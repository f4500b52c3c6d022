"""Block-wise readers of one contribution's values of one tensor, straight from the spooled upload.

Aggregation never holds a contributor's whole tensor: it asks each :class:`TensorSource` for blocks of the
flattened values. Spooled values are read with ``pread`` into a fresh block (no mapping stays open, so nothing of
the spool counts against the process's memory once a block is dropped); a delta upload is added to its base,
block by block, in float32, as OpenFL adds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from fedagg.federation.integrity import CorruptFile
from fedagg.protocol.codec import FLOAT32, Float32Array


class TensorSource(Protocol):
    """One contribution's values of one tensor, readable in blocks of the flattened array."""

    @property
    def size(self) -> int:
        """Number of values."""
        ...

    def block(self, start: int, stop: int) -> Float32Array:
        """The flattened values ``[start, stop)`` as float32."""
        ...


class SpooledValues:
    """A tensor's values exactly as uploaded, read from the spool file."""

    def __init__(self, path: Path, data_offset: int, size: int) -> None:
        self.path = path
        self.size = size
        self._offset = data_offset

    def block(self, start: int, stop: int) -> Float32Array:
        length = (stop - start) * FLOAT32.itemsize
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(descriptor, length, self._offset + start * FLOAT32.itemsize)
        finally:
            os.close(descriptor)
        if len(data) != length:
            raise CorruptFile(f"{self.path}: ends inside a tensor (wanted {length} bytes at value {start})")
        return np.frombuffer(data, FLOAT32)


class DeltaOnBase:
    """A delta upload's absolute values: base + delta, in float32."""

    def __init__(self, base: Float32Array, delta: TensorSource) -> None:
        self._base = base.reshape(-1)
        self._delta = delta
        self.size = delta.size

    def block(self, start: int, stop: int) -> Float32Array:
        return self._base[start:stop] + self._delta.block(start, stop)


class ArrayValues:
    """An array's values (a model tensor mapped from its file)."""

    def __init__(self, values: Float32Array) -> None:
        self._values = values.reshape(-1)
        self.size = self._values.size

    def block(self, start: int, stop: int) -> Float32Array:
        return self._values[start:stop]
