"""Aggregators that combine each value on its own: weighted average, median, trimmed mean, FedCurv's sum."""

from __future__ import annotations

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    BoundedAggregator,
    Emit,
    RoundInputs,
    TensorInputs,
    finite_float32,
    in_order,
    stacked,
    weighted_sum,
    without_overflow,
)
from fedagg.protocol.codec import FLOAT32, Float32Array


class WeightedAverage(BoundedAggregator):
    """``sum(w_i * x_i) / sum(w_i)`` in float64, summed in contribution order (OpenFL's ``np.average``).

    Sensitivity: contribution i moves tensor t's aggregate by ``w_i / sum_t(w)`` times its own move, so the share
    is the largest weight share in any tensor (``1 / n`` with equal weights, more when data sizes differ).
    """

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        return max(
            (
                max(tensor.weights) / sum(tensor.weights)
                for tensor in inputs.tensors
                if sum(tensor.weights) > 0
            ),
            default=1.0,
        )

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        total = float(sum(tensor.weights))
        if not tensor.sources or total <= 0:
            return False
        weights = np.asarray(tensor.weights, dtype=np.float64)

        def average(start: int, stop: int) -> Float32Array:
            return (weighted_sum(tensor.sources, weights, start, stop, tensor.folded) / total).astype(FLOAT32)

        for block in in_order(average, tensor.blocks()):
            emit(block)
        return True


def middle_mean_share(inputs: RoundInputs, trimmed: float) -> float:
    """The sensitivity share of a mean of the middle order statistics (median, trimmed mean), value by value.

    Sorting is non-expansive in L1: moving one contribution's value by ``d`` moves the sorted values by at most
    ``|d|`` in total, so the mean of the ``m`` middle ones moves by at most ``|d| / m``; over all values (L2), by
    at most ``||d|| / m``. ``m`` is the fewest values averaged in any tensor.
    """
    counts = [len(tensor.sources) for tensor in inputs.tensors if tensor.sources]
    return max((1.0 / kept_in_middle(count, trimmed) for count in counts), default=1.0)


def kept_in_middle(count: int, trimmed: float) -> int:
    """How many middle values a mean that cuts ``int(trimmed * count)`` at each end averages (median: 1 or 2)."""
    if trimmed >= 0.5:
        return 2 - count % 2
    return count - 2 * int(trimmed * count)


class Median(BoundedAggregator):
    """Element-wise median (weights ignored), as OpenFL's Median and Flower's FedMedian.

    Sensitivity: the mean of the one (odd n) or two (even n) middle values, so a share of 1 or 1/2
    (:func:`middle_mean_share`): as much noise as one contribution released alone.
    """

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        return middle_mean_share(inputs, 0.5)

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if not tensor.sources:
            return False
        for start, stop in tensor.blocks():
            emit(without_overflow(lambda rows: np.median(rows, axis=0), stacked(tensor.sources, start, stop)))
        return True


class TrimmedMean(BoundedAggregator):
    """Coordinate-wise trimmed mean (Flower's FedTrimmedAvg): drop ``int(beta * n)`` lowest and highest, average.

    Sensitivity: ``1 / (n - 2 int(beta n))``, the mean of the middle values (:func:`middle_mean_share`).

    Args:
        beta: the share cut at each end, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.2) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        count = len(tensor.sources)
        if not count:
            return False
        low = int(self.beta * count)
        high = count - low
        for start, stop in tensor.blocks():
            values = np.partition(stacked(tensor.sources, start, stop), (low, high - 1), axis=0)
            emit(without_overflow(lambda rows: np.mean(rows, axis=0), values[low:high]))
        return True

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        return middle_mean_share(inputs, self.beta)


FISHER_SUFFIXES = ("_u", "_v", "_w")


class FedCurvWeightedAverage(WeightedAverage):
    """OpenFL's FedCurv: FedCurv's Fisher terms (names ending ``_u``, ``_v``, ``_w``) are summed, unweighted;
    everything else is a weighted average.

    Sensitivity: a sum moves by as much as one contribution, so the share is 1 when the task has Fisher terms.
    """

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        summed = any(tensor.name.endswith(FISHER_SUFFIXES) for tensor in inputs.tensors)
        return 1.0 if summed else super().sensitivity_share(inputs)

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if not tensor.name.endswith(FISHER_SUFFIXES):
            return super().combine(tensor, emit)
        if not tensor.sources:
            return False
        for start, stop in tensor.blocks():
            emit(
                finite_float32(
                    without_overflow(lambda rows: np.sum(rows, axis=0), stacked(tensor.sources, start, stop))
                )
            )
        return True


def sums_by_weight(aggregator: Aggregator, tensor: str) -> bool:
    """Whether ``aggregator`` aggregates ``tensor`` as the plain weighted average, so that a running weighted sum
    of its contributions (in plan order) may stand in for them (a subclass that overrides ``combine`` or
    ``prepare``, a clipping or privacy wrapper: no)."""
    kind = type(aggregator)
    if kind.prepare is not Aggregator.prepare:
        return False
    if kind.combine is WeightedAverage.combine:
        return True
    return kind.combine is FedCurvWeightedAverage.combine and not tensor.endswith(FISHER_SUFFIXES)
