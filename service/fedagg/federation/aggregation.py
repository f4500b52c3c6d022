"""Aggregation functions that combine one tensor's contributions block by block.

Each contribution is a :class:`~fedagg.federation.sources.TensorSource` read from the spool, so no aggregator
holds a contributor's whole tensor, whatever the number of contributors: a round's aggregation needs one output
block and (for the median) one block per contributor. Contributions come in a fixed order (the plan's collaborator
order), so a round aggregated again after a crash gives the very same bits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from fedagg.federation.plan import AggregationKind
from fedagg.federation.sources import TensorSource
from fedagg.protocol.codec import FLOAT32, Float32Array

BLOCK_ELEMENTS = 1 << 20

Emit = Callable[[Float32Array], None]
"""Receives the aggregate's consecutive blocks."""


def blocks(size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``size`` values."""
    return [(start, min(start + BLOCK_ELEMENTS, size)) for start in range(0, size, BLOCK_ELEMENTS)]


class TensorAggregator(ABC):
    """Combines the contributions of one tensor in one round. Stateless and thread-safe."""

    def usable(self, weights: Sequence[float]) -> bool:
        """Whether these contributions produce an aggregate (otherwise the tensor keeps its value)."""
        return bool(weights)

    @abstractmethod
    def aggregate(self, sources: Sequence[TensorSource], weights: Sequence[float], emit: Emit) -> None:
        """Pass the aggregate of ``sources`` (each of the same size, with its non-negative weight) to ``emit``."""


class WeightedAverage(TensorAggregator):
    """``sum(w_i * x_i) / sum(w_i)`` in float64, summed in contribution order (OpenFL's ``np.average``)."""

    def usable(self, weights: Sequence[float]) -> bool:
        return sum(weights) > 0

    def aggregate(self, sources: Sequence[TensorSource], weights: Sequence[float], emit: Emit) -> None:
        total = float(sum(weights))
        for start, stop in blocks(sources[0].size):
            summed = np.zeros(stop - start, dtype=np.float64)
            for source, weight in zip(sources, weights, strict=True):
                if weight:
                    summed += source.block(start, stop) * np.float64(weight)
            summed /= total
            emit(summed.astype(FLOAT32))


class Median(TensorAggregator):
    """Element-wise median of the contributions (weights ignored, as in OpenFL's Median)."""

    def aggregate(self, sources: Sequence[TensorSource], weights: Sequence[float], emit: Emit) -> None:
        for start, stop in blocks(sources[0].size):
            stacked = np.stack([source.block(start, stop) for source in sources])
            emit(np.median(stacked, axis=0).astype(FLOAT32))


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


AGGREGATORS: dict[AggregationKind, TensorAggregator] = {
    AggregationKind.WEIGHTED_AVERAGE: WeightedAverage(),
    AggregationKind.MEDIAN: Median(),
}
