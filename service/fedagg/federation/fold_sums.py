"""Running weighted sums of a round's contributions, kept in a scratch file rather than in memory.

One float64 sum per (task, tensor) costs 8 bytes per model value: more than the model itself, so it lives in an
unlinked scratch file under the spool directory (page cache, which the kernel may write out or drop; never the
process's resident memory) and is read and written a block at a time, through buffers reused from block to block
(fresh memory costs a page fault per 4 KiB). The file is kept from round to round (each round's sums are written
over the last one's, whose pages are still cached: cheaper than new pages, :mod:`fedagg.federation.file_pool`)
and deleted only when a round end fails, in case it is what filled the disk. Nothing in it needs to survive a
crash: a round redone after a restart sums its contributions from the spool, with the same bits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedagg.federation.aggregators.base import BLOCK_ELEMENTS, Float64Array, add_weighted, blocks
from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.integrity import CorruptFile
from fedagg.protocol.codec import FLOAT32, Float32Array
from fedagg.protocol.model_file import LoadedModel

FLOAT64 = np.dtype(np.float64)


def _read_exactly(descriptor: int, target: memoryview, position: int, what: str) -> None:
    done = os.preadv(descriptor, [target], position)
    if done != len(target):
        raise CorruptFile(f"{what}: ends early ({done} of {len(target)} bytes at {position})")


class SumFile:
    """A scratch file of float64 values, created when first used and deleted when closed (or when the process
    ends). One user at a time: the round's :class:`~fedagg.federation.fold.RoundFold`, under its lock; the round
    end resets or closes it once that fold has stopped (:class:`~fedagg.federation.round_ends.RoundEnds`)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None
        self._descriptor = -1
        self._end = 0

    def allocate(self, size: int) -> int:
        """Room for ``size`` values; returns its offset in values."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory, prefix="fold-")  # noqa: SIM115 (close())
            self._descriptor = self._file.fileno()
        offset, self._end = self._end, self._end + size
        return offset

    def reset(self) -> None:
        """Start again from offset 0: the next round's sums are written over this round's."""
        self._end = 0

    def read(self, offset: int, into: Float64Array) -> None:
        """Fill ``into`` with the values from ``offset``."""
        _read_exactly(
            self._descriptor, into.data.cast("B"), offset * FLOAT64.itemsize, "the fold's scratch file"
        )

    def write(self, offset: int, values: Float64Array) -> None:
        """Store ``values`` from ``offset``."""
        data = values.data.cast("B")
        position = offset * FLOAT64.itemsize
        while data:
            written = os.pwrite(self._descriptor, data, position)
            data, position = data[written:], position + written

    def close(self) -> None:
        """Delete the file (a later :meth:`allocate` creates another)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._end = 0


class Contribution:
    """One upload's values of one tensor, read from its spool file into a caller's buffer (a delta is added to
    the model's values in float32, as :class:`~fedagg.federation.sources.DeltaOnBase` does)."""

    def __init__(
        self, collaborator: str, weight: float, path: Path, tensor: UploadedTensor, model: LoadedModel
    ):
        self.collaborator = collaborator
        self.weight = weight
        self._path = path
        self._offset = tensor.data_offset
        self.size = tensor.size
        self._base = model.tensors[tensor.name].reshape(-1) if tensor.is_delta else None
        self._model = model
        self._descriptor: int | None = None

    def read(self, start: int, into: Float32Array) -> Float32Array:
        """The values from ``start`` on, as many as ``into`` holds, in ``into``."""
        if self._descriptor is None:
            self._descriptor = os.open(self._path, os.O_RDONLY)
        position = self._offset + start * FLOAT32.itemsize
        _read_exactly(self._descriptor, into.data.cast("B"), position, str(self._path))
        if self._base is not None:
            base = self._base[start : start + into.size]
            np.add(into, base, out=into)
            self._model.release_values(base)
        return into

    def close(self) -> None:
        """Close the spool file."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class FoldedSum:
    """``sum(w_i * x_i)`` of one tensor over the contributions folded so far, in the order they were folded
    (:class:`~fedagg.federation.aggregators.base.FoldedPrefix`). Used under its fold's lock."""

    def __init__(self, file: SumFile, size: int) -> None:
        self._file = file
        self._offset = file.allocate(size)
        self.size = size
        self.contributors: list[tuple[str, float]] = []
        """(collaborator, weight) of each contribution in the sum, in order."""

    def add(self, contributions: list[Contribution]) -> None:
        """Fold ``contributions`` in, in order, in one pass over the sum (read and written a block at a time)."""
        step = min(self.size, BLOCK_ELEMENTS)
        summed, product, values = np.empty(step, FLOAT64), np.empty(step, FLOAT64), np.empty(step, FLOAT32)
        for start, stop in blocks(self.size):
            count = stop - start
            block = summed[:count]
            if self.contributors:
                self._file.read(self._offset + start, block)
            else:
                block.fill(0.0)
            for contribution in contributions:
                add_weighted(block, contribution.read(start, values[:count]), contribution.weight, product)
            self._file.write(self._offset + start, block)
        self.contributors.extend((c.collaborator, c.weight) for c in contributions)

    def block(self, start: int, stop: int) -> Float64Array:
        """The sum's values ``[start, stop)`` (a fresh array)."""
        values = np.empty(stop - start, FLOAT64)
        self._file.read(self._offset + start, values)
        return values

    def prefix(self, expected: list[tuple[str, float]]) -> FoldedPrefix | None:
        """This sum as the prefix of a round end's ``expected`` contributions, if it is one (and not empty)."""
        count = len(self.contributors)
        if not count or self.contributors != expected[:count]:
            return None
        return FoldedPrefix(self, count)


class FoldedPrefix:
    """A :class:`FoldedSum` frozen at its first ``count`` contributions, as the round end reads it."""

    def __init__(self, summed: FoldedSum, count: int) -> None:
        self._sum = summed
        self.count = count

    def block(self, start: int, stop: int) -> Float64Array:
        return self._sum.block(start, stop)
