"""Aggregation functions: one conformance suite every aggregator passes, then each one's own arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fedagg.federation.aggregation import (
    AGGREGATORS,
    BLOCK_ELEMENTS,
    Median,
    MetricAverage,
    TensorAggregator,
    WeightedAverage,
)
from fedagg.protocol.codec import Float32Array


class ArraySource:
    def __init__(self, values: Float32Array) -> None:
        self._flat = np.asarray(values, np.float32).reshape(-1)
        self.size = self._flat.size
        self.reads = 0

    def block(self, start: int, stop: int) -> Float32Array:
        self.reads += 1
        return self._flat[start:stop]


def aggregate(
    aggregator: TensorAggregator, contributions: Sequence[Float32Array], weights: Sequence[float]
) -> Float32Array | None:
    """The aggregate as one flat array, or None when the aggregator says the inputs give none."""
    if not aggregator.usable(weights):
        return None
    blocks: list[Float32Array] = []
    aggregator.aggregate([ArraySource(values) for values in contributions], weights, blocks.append)
    return np.concatenate(blocks) if blocks else np.empty(0, np.float32)


class AggregatorConformance:
    """What every aggregator must do; each aggregator's test class subclasses this."""

    aggregator: TensorAggregator

    def test_identical_contributions_aggregate_to_themselves(self) -> None:
        values = np.random.default_rng(0).standard_normal(12).astype(np.float32)

        result = aggregate(self.aggregator, [values] * 3, [1.0, 2.0, 5.0])

        assert result is not None
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, values, rtol=1e-6)

    def test_no_contribution_gives_no_aggregate(self) -> None:
        assert not self.aggregator.usable([])

    def test_a_scalar_tensor(self) -> None:
        assert aggregate(self.aggregator, [np.array([3.0], np.float32)], [1.0]) == pytest.approx([3.0])

    def test_the_result_does_not_depend_on_the_block_size(self) -> None:
        rng = np.random.default_rng(3)
        contributions = [rng.standard_normal(BLOCK_ELEMENTS * 2 + 5).astype(np.float32) for _ in range(3)]
        weights = [1.0, 2.0, 3.0]

        whole = aggregate(self.aggregator, contributions, weights)
        pieces = [
            aggregate(self.aggregator, [c[start:stop] for c in contributions], weights)
            for start, stop in ((0, 7), (7, BLOCK_ELEMENTS + 1), (BLOCK_ELEMENTS + 1, 2 * BLOCK_ELEMENTS + 5))
        ]

        np.testing.assert_array_equal(whole, np.concatenate(pieces))  # type: ignore[arg-type]

    def test_large_tensors_are_read_block_by_block(self) -> None:
        size = BLOCK_ELEMENTS * 2 + 5
        source = ArraySource(np.ones(size, np.float32))
        blocks: list[Float32Array] = []

        self.aggregator.aggregate([source], [1.0], blocks.append)

        assert source.reads == 3
        assert [len(block) for block in blocks] == [BLOCK_ELEMENTS, BLOCK_ELEMENTS, 5]

    def test_deterministic(self) -> None:
        rng = np.random.default_rng(4)
        contributions = [rng.standard_normal(100).astype(np.float32) for _ in range(5)]

        first = aggregate(self.aggregator, contributions, [1, 2, 3, 4, 5])
        second = aggregate(self.aggregator, contributions, [1, 2, 3, 4, 5])

        np.testing.assert_array_equal(first, second)  # type: ignore[arg-type]


class TestWeightedAverage(AggregatorConformance):
    aggregator = WeightedAverage()

    def test_weights_by_data_size_like_numpy_average(self) -> None:
        rng = np.random.default_rng(1)
        contributions = [rng.standard_normal(10).astype(np.float32) for _ in range(4)]
        sizes = [10, 30, 0, 60]

        result = aggregate(self.aggregator, contributions, sizes)

        expected = np.average(np.array(contributions), weights=sizes, axis=0).astype(np.float32)
        np.testing.assert_array_equal(result, expected)  # type: ignore[arg-type]

    def test_only_zero_weight_gives_no_aggregate(self) -> None:
        assert aggregate(self.aggregator, [np.ones(2, np.float32)], [0.0]) is None


class TestMedian(AggregatorConformance):
    aggregator = Median()

    def test_ignores_weights_and_resists_an_outlier(self) -> None:
        contributions = [np.array(values, np.float32) for values in ([1, 1], [2, 2], [1000, -1000])]

        np.testing.assert_array_equal(aggregate(self.aggregator, contributions, [1, 1, 100]), [2, 1])  # type: ignore[arg-type]


def test_every_configurable_aggregator_has_a_conformance_class() -> None:
    tested = {type(cls.aggregator) for cls in AggregatorConformance.__subclasses__()}

    assert {type(aggregator) for aggregator in AGGREGATORS.values()} <= tested


def test_metric_average() -> None:
    average = MetricAverage()
    average.add(0.5, 10)
    average.add(1.0, 30)

    assert average.result() == pytest.approx(0.875)
    assert MetricAverage().result() is None
