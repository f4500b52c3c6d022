"""Aggregation functions that combine one tensor's contributions without holding every copy in memory.

A contribution is a :class:`TensorSource`: it yields its float32 values block by block (from a memory-mapped
spool file, with a delta already added to its base), so no aggregator ever needs a contributor's whole tensor
in the heap. :class:`WeightedAverage` folds each contribution into a float64 running sum as it arrives;
:class:`Median` needs every copy, keeps only the sources (backed by files on disk) and reads them block-wise
when the round ends.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedagg.federation.plan import AggregationKind
from fedagg.protocol.codec import FLOAT32, Float32Array, Shape

BLOCK_ELEMENTS = 1 << 20


class TensorSource(Protocol):
    """One contribution's values of one tensor, readable in blocks of the flattened array."""

    @property
    def shape(self) -> Shape: ...

    def block(self, start: int, stop: int) -> Float32Array:
        """The flattened values ``[start, stop)`` as float32."""
        ...


def _blocks(size: int) -> range:
    return range(0, size, BLOCK_ELEMENTS)


class TensorAggregator(ABC):
    """Combines the contributions of one tensor in one round. Not thread-safe: callers serialise ``add``."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.size = math.prod(shape)

    @abstractmethod
    def add(self, source: TensorSource, weight: float) -> None:
        """Take one contribution with its (non-negative) weight."""

    @abstractmethod
    def result(self) -> Float32Array | None:
        """The aggregate, or None when nothing (or only zero weight) was contributed."""


class WeightedAverage(TensorAggregator):
    """``sum(w_i * x_i) / sum(w_i)`` in float64, as OpenFL's WeightedAverage (``np.average``) computes it."""

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._sum: npt.NDArray[np.float64] | None = None
        self._total_weight = 0.0

    def add(self, source: TensorSource, weight: float) -> None:
        if weight == 0:
            return
        if self._sum is None:
            self._sum = np.zeros(self.size, dtype=np.float64)
        factor = np.float64(weight)
        for start in _blocks(self.size):
            stop = min(start + BLOCK_ELEMENTS, self.size)
            self._sum[start:stop] += source.block(start, stop) * factor
        self._total_weight += weight

    def result(self) -> Float32Array | None:
        if self._sum is None or self._total_weight == 0:
            return None
        total, summed = self._total_weight, self._sum
        self._sum = None
        summed /= total
        return summed.astype(FLOAT32).reshape(self.shape)


class Median(TensorAggregator):
    """Element-wise median of the contributions (weights ignored, as in OpenFL's Median)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._sources: list[TensorSource] = []

    def add(self, source: TensorSource, weight: float) -> None:
        self._sources.append(source)

    def result(self) -> Float32Array | None:
        if not self._sources:
            return None
        out = np.empty(self.size, dtype=FLOAT32)
        for start in _blocks(self.size):
            stop = min(start + BLOCK_ELEMENTS, self.size)
            stacked = np.stack([source.block(start, stop) for source in self._sources])
            out[start:stop] = np.median(stacked, axis=0)
        self._sources = []
        return out.reshape(self.shape)


class MetricAverage:
    """Weighted average of a scalar metric over the collaborators that reported it."""

    def __init__(self) -> None:
        self._weighted_sum = 0.0
        self._total_weight = 0.0

    def add(self, value: float, weight: float) -> None:
        """Take one collaborator's value."""
        self._weighted_sum += value * weight
        self._total_weight += weight

    def result(self) -> float | None:
        """The average, or None when the total weight is zero."""
        return None if self._total_weight == 0 else self._weighted_sum / self._total_weight


AGGREGATORS: dict[AggregationKind, type[TensorAggregator]] = {
    AggregationKind.WEIGHTED_AVERAGE: WeightedAverage,
    AggregationKind.MEDIAN: Median,
}
