"""Aggregation functions: shared conformance, weighting by data size, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from fedagg.federation.aggregation import (
    AGGREGATORS,
    BLOCK_ELEMENTS,
    MetricAverage,
    TensorAggregator,
    WeightedAverage,
)
from fedagg.federation.plan import AggregationKind
from fedagg.protocol.codec import Float32Array, Shape


class ArraySource:
    def __init__(self, values: Float32Array) -> None:
        self._flat = values.reshape(-1)
        self.shape: Shape = values.shape
        self.reads = 0

    def block(self, start: int, stop: int) -> Float32Array:
        self.reads += 1
        return self._flat[start:stop]


@pytest.fixture(params=list(AggregationKind))
def kind(request: pytest.FixtureRequest) -> AggregationKind:
    return request.param  # type: ignore[no-any-return]


def test_identical_contributions_aggregate_to_themselves(kind: AggregationKind) -> None:
    values = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    aggregator: TensorAggregator = AGGREGATORS[kind]((3, 4))
    for weight in (1.0, 2.0, 5.0):
        aggregator.add(ArraySource(values), weight)

    result = aggregator.result()

    assert result is not None
    assert result.dtype == np.float32
    assert result.shape == (3, 4)
    np.testing.assert_allclose(result, values, rtol=1e-6)


def test_nothing_contributed_gives_none(kind: AggregationKind) -> None:
    assert AGGREGATORS[kind]((2,)).result() is None


def test_scalar_tensors(kind: AggregationKind) -> None:
    aggregator = AGGREGATORS[kind](())
    aggregator.add(ArraySource(np.array(3.0, np.float32)), 1.0)

    result = aggregator.result()

    assert result is not None
    assert result.shape == ()


def test_weighted_average_weights_by_data_size_like_numpy_average() -> None:
    rng = np.random.default_rng(1)
    contributions = [rng.standard_normal(10).astype(np.float32) for _ in range(4)]
    sizes = [10, 30, 0, 60]
    aggregator = WeightedAverage((10,))
    for values, size in zip(contributions, sizes, strict=True):
        aggregator.add(ArraySource(values), size)

    result = aggregator.result()

    expected = np.average(np.array(contributions), weights=np.array(sizes) / sum(sizes), axis=0).astype(
        np.float32
    )
    np.testing.assert_allclose(result, expected, rtol=1e-7, atol=0)  # type: ignore[arg-type]


def test_weighted_average_with_only_zero_weight_gives_none() -> None:
    aggregator = WeightedAverage((2,))
    aggregator.add(ArraySource(np.ones(2, np.float32)), 0)

    assert aggregator.result() is None


def test_median_ignores_weights_and_resists_an_outlier() -> None:
    aggregator = AGGREGATORS[AggregationKind.MEDIAN]((2,))
    for values, weight in (([1, 1], 1), ([2, 2], 1), ([1000, -1000], 100)):
        aggregator.add(ArraySource(np.array(values, np.float32)), weight)

    np.testing.assert_array_equal(aggregator.result(), [2, 1])  # type: ignore[arg-type]


def test_large_tensors_are_read_block_by_block(kind: AggregationKind) -> None:
    size = BLOCK_ELEMENTS * 2 + 5
    source = ArraySource(np.ones(size, np.float32))
    aggregator = AGGREGATORS[kind]((size,))
    aggregator.add(source, 1.0)

    result = aggregator.result()

    assert source.reads == 3
    assert result is not None
    assert float(result.sum()) == size


def test_metric_average() -> None:
    average = MetricAverage()
    average.add(0.5, 10)
    average.add(1.0, 30)

    assert average.result() == pytest.approx(0.875)
    assert MetricAverage().result() is None
