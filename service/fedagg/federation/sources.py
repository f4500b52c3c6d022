"""Block-wise readers of one contribution's values of one tensor, straight from the spooled upload.

Aggregation never holds a contributor's whole tensor: it asks each :class:`TensorSource` for blocks of the
flattened values. Spooled values are read with ``pread`` into a fresh block (no mapping stays open, so nothing of
the spool counts against the process's memory once a block is dropped); a delta upload is added to its base,
block by block, in float32, as OpenFL adds it.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.integrity import CorruptFile
from fedagg.protocol.codec import FLOAT32, Float32Array
from fedagg.protocol.model_file import LoadedModel


class TensorSource(Protocol):
    """One contribution's values of one tensor, readable in blocks of the flattened array.

    Each member states its contract in MUST sentences (tests/unit/test_contracts_plugins.py quotes each).
    """

    @property
    def size(self) -> int:
        """Number of values.

        It MUST stay the same for the source's life.
        """
        ...

    def block(self, start: int, stop: int) -> Float32Array:
        """The flattened values ``[start, stop)`` as float32.

        It MUST return a float32 array of ``stop - start`` values, which later reads never change. Reading the
        same range again MUST give the same values. Blocks read in any order MUST
        together be the tensor's values. Blocks read from several threads at once MUST be the same values (the
        round end reads a tensor's blocks side by side).
        """
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

    def mapped(self) -> Float32Array:
        """All the values as a read-only view of the mapped spool file (no copy). The mapping is this array's
        own: it is unmapped when the last view of it goes."""
        if not self.size:
            return np.empty(0, FLOAT32)
        with self.path.open("rb") as file:
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        if len(mapping) < self._offset + self.size * FLOAT32.itemsize:
            raise CorruptFile(f"{self.path}: ends inside a tensor")
        return np.frombuffer(mapping, FLOAT32, self.size, self._offset)


class ModelValues:
    """A tensor of a model file: each block is copied out and its pages released from resident memory, so a
    pass over a model-sized tensor never leaves the model counted in the process's RSS."""

    def __init__(self, model: LoadedModel, name: str) -> None:
        self._model = model
        self._values = model.tensors[name].reshape(-1)
        self.size = self._values.size

    def block(self, start: int, stop: int) -> Float32Array:
        view = self._values[start:stop]
        values = view.copy()
        self._model.release_values(view)
        return values


class DeltaOnBase:
    """A delta upload's absolute values: base + delta, in float32."""

    def __init__(self, base: TensorSource, delta: TensorSource) -> None:
        self._base = base
        self._delta = delta
        self.size = delta.size

    def block(self, start: int, stop: int) -> Float32Array:
        values = self._base.block(start, stop)
        values += self._delta.block(start, stop)
        return values


def uploaded_values(path: Path, tensor: UploadedTensor, model: LoadedModel) -> TensorSource:
    """The absolute values of an uploaded weight tensor spooled at ``path`` (a delta is added to ``model``'s)."""
    values = SpooledValues(path, tensor.data_offset, tensor.size)
    if tensor.is_delta:
        assert tensor.name in model.tensors, "a delta's base was checked at upload time"
        return DeltaOnBase(ModelValues(model, tensor.name), values)
    return values
