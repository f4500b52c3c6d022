"""Aggregators that combine each value on its own: weighted average, median, trimmed mean, FedCurv's sum."""

from __future__ import annotations

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    Emit,
    TensorInputs,
    stacked,
    weighted_sum,
)
from fedagg.protocol.codec import FLOAT32


class WeightedAverage(Aggregator):
    """``sum(w_i * x_i) / sum(w_i)`` in float64, summed in contribution order (OpenFL's ``np.average``)."""

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        total = float(sum(tensor.weights))
        if not tensor.sources or total <= 0:
            return False
        weights = np.asarray(tensor.weights, dtype=np.float64)
        for start, stop in tensor.blocks():
            emit((weighted_sum(tensor.sources, weights, start, stop) / total).astype(FLOAT32))
        return True


class Median(Aggregator):
    """Element-wise median (weights ignored), as OpenFL's Median and Flower's FedMedian."""

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if not tensor.sources:
            return False
        for start, stop in tensor.blocks():
            emit(np.median(stacked(tensor.sources, start, stop), axis=0).astype(FLOAT32))
        return True


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Flower's FedTrimmedAvg): drop ``int(beta * n)`` lowest and highest, average.

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
            emit(np.mean(values[low:high], axis=0).astype(FLOAT32))
        return True


FISHER_SUFFIXES = ("_u", "_v", "_w")


class FedCurvWeightedAverage(WeightedAverage):
    """OpenFL's FedCurv: FedCurv's Fisher terms (names ending ``_u``, ``_v``, ``_w``) are summed, unweighted;
    everything else is a weighted average."""

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if not tensor.name.endswith(FISHER_SUFFIXES):
            return super().combine(tensor, emit)
        if not tensor.sources:
            return False
        for start, stop in tensor.blocks():
            emit(np.sum(stacked(tensor.sources, start, stop), axis=0).astype(FLOAT32))
        return True
