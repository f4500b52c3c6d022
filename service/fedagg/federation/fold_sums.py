"""Running weighted sums of a round's contributions, kept in a scratch file rather than in memory.

One float64 sum per (task, tensor) costs 8 bytes per model value: more than the model itself, so it lives in an
unlinked scratch file under the spool directory (page cache, which the kernel may write out or drop; never the
process's resident memory) and is read and written a block at a time. Nothing in it needs to survive a crash: a
round redone after a restart sums its contributions from the spool, with the same bits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fedagg.federation.aggregators.base import Float64Array, add_weighted, blocks
from fedagg.federation.sources import TensorSource

FLOAT64 = np.dtype(np.float64)


class SumFile:
    """A scratch file of float64 values, deleted when closed (or when the process ends). One user at a time: the
    :class:`~fedagg.federation.fold.RoundFold` that owns it, under its lock."""

    def __init__(self, directory: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=directory, prefix="fold-")  # noqa: SIM115 (closed by close())
        self._descriptor = self._file.fileno()
        self._end = 0

    def allocate(self, size: int) -> int:
        """Room for ``size`` values; returns its offset in values."""
        offset, self._end = self._end, self._end + size
        return offset

    def read(self, offset: int, count: int) -> Float64Array:
        """``count`` values from ``offset`` (a fresh array)."""
        values = np.empty(count, FLOAT64)
        wanted = values.nbytes
        done = os.preadv(self._descriptor, [values.data.cast("B")], offset * FLOAT64.itemsize)
        if done != wanted:
            raise OSError(f"the fold's scratch file gave {done} of {wanted} bytes")
        return values

    def write(self, offset: int, values: Float64Array) -> None:
        """Store ``values`` from ``offset``."""
        data = values.data.cast("B")
        position = offset * FLOAT64.itemsize
        while data:
            written = os.pwrite(self._descriptor, data, position)
            data, position = data[written:], position + written

    def close(self) -> None:
        """Delete the file."""
        self._file.close()


class FoldedSum:
    """``sum(w_i * x_i)`` of one tensor over the contributions folded so far, in the order they were folded
    (:class:`~fedagg.federation.aggregators.base.FoldedPrefix`). Used under its fold's lock."""

    def __init__(self, file: SumFile, size: int) -> None:
        self._file = file
        self._offset = file.allocate(size)
        self.size = size
        self.contributors: list[tuple[str, float]] = []
        """(collaborator, weight) of each contribution in the sum, in order."""

    def add(self, collaborator: str, weight: float, values: TensorSource) -> None:
        """Fold one contribution in (block by block; the sum is written back as it goes)."""
        for start, stop in blocks(self.size):
            summed = self.block(start, stop) if self.contributors else np.zeros(stop - start, FLOAT64)
            add_weighted(summed, values.block(start, stop), weight)
            self._file.write(self._offset + start, summed)
        self.contributors.append((collaborator, weight))

    def block(self, start: int, stop: int) -> Float64Array:
        """The sum's values ``[start, stop)``."""
        return self._file.read(self._offset + start, stop - start)

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
