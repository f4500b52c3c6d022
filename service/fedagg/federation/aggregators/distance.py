"""Aggregators that compare whole updates: Krum, Multi-Krum, Bulyan (as Flower's) and the geometric median (as
OpenFL's). Distances are accumulated block by block in passes over the spool, never from whole tensors in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    Emit,
    Float64Array,
    RoundInputs,
    TensorInputs,
    stacked,
    weighted_sum,
    without_overflow,
)
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.protocol.codec import FLOAT32

log = logging.getLogger(__name__)


def log_selection(method: str, inputs: RoundInputs, selected: tuple[int, ...]) -> int:
    """Say which collaborators a selecting method left out of the aggregate; return how many."""
    left_out = [name for index, name in enumerate(inputs.collaborators) if index not in selected]
    if left_out:
        log.warning(
            "round %d, task %r: %s left out %s (kept %s)",
            inputs.round_number,
            inputs.task,
            method,
            ", ".join(left_out),
            ", ".join(inputs.collaborators[index] for index in sorted(selected)),
        )
    return len(left_out)


def squared_distances(tensors: tuple[TensorInputs, ...], count: int) -> Float64Array:
    """``D[i, j] = ||x_i - x_j||^2`` over every value of ``tensors`` (each with all ``count`` contributors)."""
    distances = np.zeros((count, count), dtype=np.float64)
    if not count:
        return distances
    for tensor in tensors:
        for start, stop in tensor.blocks():
            values = stacked(tensor.sources, start, stop).astype(np.float64)
            gram = values @ values.T
            del values  # before the next block's copy is made: one block at a time stays within the budget
            norms = np.diag(gram)
            distances += norms[:, None] + norms[None, :] - 2 * gram
    np.maximum(distances, 0, out=distances)
    np.fill_diagonal(distances, 0)
    return distances


def krum_scores(distances: Float64Array, malicious: int) -> list[float]:
    """Flower's Krum score of each contribution: the sum of its distances to its ``n - f - 2`` nearest others."""
    count = len(distances)
    closest = max(1, count - malicious - 2)
    return [float(np.sum(row[np.argsort(row)[1 : closest + 1]])) for row in distances]


class Krum(Aggregator):
    """Krum (``keep=0``: the single contribution with the lowest score, as it is) and Multi-Krum (``keep=m``: the
    weighted average of the ``m`` lowest-scoring contributions), as Flower's ``aggregate_krum``.

    With fewer than ``m`` contributions Multi-Krum averages them all (Flower's slice, with its negative start,
    then keeps only the ``m - n`` best while ``m < 2n``).

    Args:
        malicious: f, the number of attackers to tolerate.
        keep: m; 0 picks one contribution (Krum).
    """

    privacy_refusal = (
        "it selects contributions by their distances, so one contribution can change the selection and move the "
        "aggregate by up to 2C whatever the number of collaborators"
    )

    def __init__(self, malicious: int = 0, keep: int = 0) -> None:
        if malicious < 0 or keep < 0:
            raise ValueError(f"malicious and keep must be 0 or more, got {malicious} and {keep}")
        self.malicious = malicious
        self.keep = keep
        self._selected: tuple[int, ...] = ()
        self._left_out = 0

    @property
    def selected(self) -> tuple[int, ...]:
        """The contributions the last :meth:`prepare` chose (indices into its collaborators), Flower's order."""
        return self._selected

    def prepare(self, inputs: RoundInputs) -> None:
        count = len(inputs.collaborators)
        scores = krum_scores(squared_distances(inputs.common_tensors(), count), self.malicious)
        if self.keep > 0:
            keep = min(self.keep, count)
            self._selected = tuple(int(i) for i in np.argsort(scores)[::-1][count - keep :])
        else:
            self._selected = (int(np.argmin(scores)),) if scores else ()
        self._left_out = log_selection("Multi-Krum" if self.keep else "Krum", inputs, self._selected)

    def report(self) -> Mapping[str, float]:
        return {"left_out": self._left_out}

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        chosen = tensor.only(self._selected)
        if self.keep > 0:
            return WeightedAverage().combine(chosen, emit)
        if not chosen.sources:
            return False
        for start, stop in tensor.blocks():  # the chosen update itself, whatever its weight
            emit(chosen.sources[0].block(start, stop).astype(FLOAT32))
        return True


class Bulyan(Aggregator):
    """Bulyan (Flower's ``aggregate_bulyan`` with Krum): select ``n - 2f`` contributions by repeated Krum, then
    average, value by value, the ``n - 4f`` selected values closest to their median. Needs ``n >= 4f + 3``.

    Args:
        malicious: f, the number of attackers to tolerate.
    """

    privacy_refusal = (
        "it selects contributions by their distances, so one contribution can change the selection and move the "
        "aggregate by up to 2C whatever the number of collaborators"
    )

    def __init__(self, malicious: int = 0) -> None:
        if malicious < 0:
            raise ValueError(f"malicious must be 0 or more, got {malicious}")
        self.malicious = malicious
        self._selected: tuple[int, ...] = ()
        self._left_out = 0

    @property
    def selected(self) -> tuple[int, ...]:
        """The contributions the last :meth:`prepare` selected by repeated Krum, in selection order."""
        return self._selected

    def prepare(self, inputs: RoundInputs) -> None:
        count, malicious = len(inputs.collaborators), self.malicious
        self._selected = ()
        self._left_out = 0
        if not count:
            return
        if count < 4 * malicious + 3:
            raise ValueError(
                f"Bulyan with malicious={malicious} needs at least {4 * malicious + 3} contributions, got {count}"
            )
        distances = squared_distances(inputs.common_tensors(), count)
        remaining = list(range(count))
        selected = []
        for _ in range(count - 2 * malicious):
            scores = krum_scores(distances[np.ix_(remaining, remaining)], malicious)
            selected.append(remaining.pop(int(np.argmin(scores))))
        self._selected = tuple(selected)
        self._left_out = log_selection("Bulyan", inputs, self._selected)

    def report(self) -> Mapping[str, float]:
        return {"left_out": self._left_out}

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        chosen = tensor.only(self._selected)
        if not chosen.sources:
            return False
        closest = max(1, len(chosen.sources) - 2 * self.malicious)
        for start, stop in tensor.blocks():
            values = stacked(chosen.sources, start, stop)
            with np.errstate(
                over="ignore"
            ):  # extreme finite values: their distance is inf, still the farthest
                distance = np.abs(np.median(values, axis=0) - values)
            nearest = np.argpartition(distance, kth=closest - 1, axis=0)
            closest_values = np.take_along_axis(values, nearest, axis=0)[:closest]
            emit(without_overflow(lambda rows: np.mean(rows, axis=0), closest_values))
        return True


class GeometricMedian(Aggregator):
    """OpenFL's GeometricMedian: Weiszfeld's algorithm per tensor, weighted by data size, in passes over the spool.

    Args:
        maxiter: at most this many reweighting steps.
        eps: the smallest distance a weight divides by.
        ftol: stop when the objective changes by less than this share.
    """

    privacy_refusal = (
        "its weights are recomputed from the distances to the contributions, so one contribution can move the "
        "median by more than its own share of C"
    )

    def __init__(self, maxiter: int = 4, eps: float = 1e-5, ftol: float = 1e-6) -> None:
        self.maxiter = maxiter
        self.eps = eps
        self.ftol = ftol

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if not tensor.sources or sum(tensor.weights) <= 0:
            return False
        weights = np.asarray(tensor.weights, dtype=np.float64)
        weights /= weights.sum()
        distances = self._distances(tensor, weights)
        objective = float(weights @ distances)
        for _ in range(self.maxiter):
            previous = objective
            weights = weights / np.maximum(self.eps, distances)
            weights /= weights.sum()
            distances = self._distances(tensor, weights)
            objective = float(weights @ distances)
            if abs(previous - objective) < self.ftol * objective:
                break
        for start, stop in tensor.blocks():
            emit(weighted_sum(tensor.sources, weights, start, stop).astype(FLOAT32))
        return True

    @staticmethod
    def _distances(tensor: TensorInputs, weights: Float64Array) -> Float64Array:
        """``||median - x_i||`` for the median these weights make, one pass over the values."""
        squared = np.zeros(len(tensor.sources), dtype=np.float64)
        for start, stop in tensor.blocks():
            median = weighted_sum(tensor.sources, weights, start, stop)
            for index, source in enumerate(tensor.sources):
                squared[index] += float(np.sum((median - source.block(start, stop)) ** 2))
        return np.sqrt(squared)
