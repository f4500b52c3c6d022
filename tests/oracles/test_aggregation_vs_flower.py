"""fedagg's robust aggregators equal Flower's strategies (flwr 1.42.0, tests/oracles/flower_side/aggregate.py).

The same client arrays (float32, three layers, honest clients around a common point, attackers far off,
unequal num_examples) go through Flower's ``aggregate_fit`` and through fedagg's aggregator in memory (one
tensor per layer, the num_examples as data sizes). Median, trimmed mean, Krum and Bulyan compute in float32
like Flower or pick clients, so their results must be Flower's to one float32 spacing; Multi-Krum must select
the same clients in the same order, and average them by num_examples as Flower does, fedagg in float64 (its
result is the exact weighted mean rounded once; Flower's float32 sum agrees to a few spacings of the inputs).

Flower's median and trimmed mean ignore num_examples; so do fedagg's. Each method's cases run in one Flower
process; the processes run a few at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from fedagg.federation.aggregators import Aggregator
from fedagg.federation.aggregators.distance import Bulyan, Krum
from fedagg.federation.aggregators.elementwise import Median, TrimmedMean
from tests.oracles.flower_oracle import FlowerResult, flower_aggregate_many
from tests.oracles.oracles import flower_python
from tests.support.aggregation import Model, aggregate

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(1800)]

LAYERS = ((3, 4), (6,), (2, 2, 2))
Client = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class ClientSet:
    """One aggregation's inputs: the clients in order, their num_examples and which are attackers."""

    clients: list[Client]
    num_examples: list[int]
    attackers: frozenset[int]

    @property
    def honest(self) -> list[int]:
        return [i for i in range(len(self.clients)) if i not in self.attackers]


def client_set(rng: np.random.Generator, count: int, attackers: int) -> ClientSet:
    """``count`` clients, ``attackers`` of them far off in various ways, at random positions."""
    center = [rng.standard_normal(shape).astype(np.float32) for shape in LAYERS]
    clients: list[Client] = []
    for i in range(count):
        honest = [(c + 0.1 * rng.standard_normal(c.shape)).astype(np.float32) for c in center]
        kind = i % 3
        if i >= attackers:
            clients.append(honest)
        elif kind == 0:  # a large random update
            clients.append([(c + 30 * rng.standard_normal(c.shape)).astype(np.float32) for c in center])
        elif kind == 1:  # a sign flip, scaled
            clients.append([(-8 * layer).astype(np.float32) for layer in honest])
        else:  # a constant shift of every value
            clients.append([(layer + 25).astype(np.float32) for layer in honest])
    order = rng.permutation(count)
    return ClientSet(
        [clients[i] for i in order],
        [int(n) for n in rng.integers(1, 500, count)],
        frozenset(int(position) for position, i in enumerate(order) if i < attackers),
    )


def make_sets() -> list[ClientSet]:
    rng = np.random.default_rng(42)
    sizes = ((3, 0), (4, 1), (5, 1), (7, 1), (8, 2), (11, 2), (12, 3), (15, 3), (19, 4))
    return [client_set(rng, count, attackers) for count, attackers in sizes]


SETS = make_sets()


@dataclasses.dataclass(frozen=True)
class Method:
    """A Flower method with its options, the equal fedagg aggregator, and which client sets it can take."""

    flower: str
    options: dict[str, Any]
    make: Callable[[], Aggregator]
    minimum_clients: int = 1

    @property
    def id(self) -> str:
        return "-".join([self.flower, *(f"{key}{value}" for key, value in sorted(self.options.items()))])

    def sets(self) -> list[ClientSet]:
        return [s for s in SETS if len(s.clients) >= self.minimum_clients]


METHODS = [
    Method("median", {}, Median),
    Method("trimmed_avg", {"beta": 0.1}, lambda: TrimmedMean(0.1)),
    Method("trimmed_avg", {"beta": 0.2}, lambda: TrimmedMean(0.2)),
    Method("trimmed_avg", {"beta": 0.34}, lambda: TrimmedMean(0.34)),
    Method("krum", {"num_malicious": 1, "to_keep": 0}, lambda: Krum(1, 0)),
    Method("krum", {"num_malicious": 3, "to_keep": 0}, lambda: Krum(3, 0)),
    Method("krum", {"num_malicious": 1, "to_keep": 2}, lambda: Krum(1, 2), minimum_clients=2),
    Method("krum", {"num_malicious": 2, "to_keep": 5}, lambda: Krum(2, 5), minimum_clients=5),
    Method("bulyan", {"num_malicious": 1}, lambda: Bulyan(1), minimum_clients=7),
    Method("bulyan", {"num_malicious": 2}, lambda: Bulyan(2), minimum_clients=11),
    Method("bulyan", {"num_malicious": 4}, lambda: Bulyan(4), minimum_clients=19),
]


def run_flower(method: Method) -> list[FlowerResult]:
    cases = [(s.clients, s.num_examples) for s in method.sets()]
    return flower_aggregate_many(method.flower, cases, **method.options)


@pytest.fixture(scope="module")
def flower_results() -> dict[str, list[FlowerResult]]:
    """Every method's results on its client sets (one Flower process per method, three at a time)."""
    flower_python()  # build (or find) the venv once, before any concurrent use
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run_flower, METHODS))
    return {method.id: result for method, result in zip(METHODS, results, strict=True)}


def layers_of(client: Client) -> Model:
    return {f"layer{j}": layer for j, layer in enumerate(client)}


def fedagg_aggregate(aggregator: Aggregator, clients: ClientSet) -> list[np.ndarray]:
    result = aggregate(aggregator, [layers_of(c) for c in clients.clients], clients.num_examples)
    assert result is not None
    return [result[f"layer{j}"] for j in range(len(LAYERS))]


def assert_within_spacings(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], spacings: float, scale: Sequence[np.ndarray]
) -> None:
    """Layer by layer, within ``spacings`` float32 spacings of ``max(|expected|, scale)``."""
    for j, (ours, theirs, magnitude) in enumerate(zip(actual, expected, scale, strict=True)):
        assert ours.dtype == np.float32
        assert ours.shape == theirs.shape
        reach = np.maximum(np.abs(theirs.astype(np.float64)), magnitude).astype(np.float32)
        tolerance = spacings * np.spacing(reach).astype(np.float64)
        error = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        assert np.all(error <= tolerance), f"layer {j}: {np.sum(error > tolerance)} values differ"


def no_scale(clients: ClientSet) -> list[np.ndarray]:
    return [np.zeros(shape) for shape in LAYERS]


def input_scale(clients: ClientSet, chosen: Sequence[int]) -> list[np.ndarray]:
    """The largest magnitude among the chosen clients, per value."""
    return [np.max(np.abs([clients.clients[i][j] for i in chosen]), axis=0) for j in range(len(LAYERS))]


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.id)
def test_equals_flower(method: Method, flower_results: dict[str, list[FlowerResult]]) -> None:
    results = flower_results[method.id]
    sets = method.sets()
    assert len(results) == len(sets) > 0
    for number, (clients, theirs) in enumerate(zip(sets, results, strict=True)):
        aggregator = method.make()
        ours = fedagg_aggregate(aggregator, clients)
        where = f"{method.id}, set {number} ({len(clients.clients)} clients)"
        if isinstance(aggregator, Krum | Bulyan):
            assert list(aggregator.selected) == theirs.selected, where
        if isinstance(aggregator, Krum) and aggregator.keep > 0:
            assert theirs.selected is not None
            chosen = theirs.selected
            exact = [
                np.average(
                    [clients.clients[i][j] for i in chosen],
                    axis=0,
                    weights=[clients.num_examples[i] for i in chosen],
                )
                for j in range(len(LAYERS))
            ]
            assert_within_spacings(ours, exact, 1, no_scale(clients))  # the weighted mean, rounded once
            assert_within_spacings(ours, theirs.aggregate, 8, input_scale(clients, chosen))
        elif isinstance(aggregator, Krum):
            for j, layer in enumerate(ours):  # the chosen client's values, unchanged
                np.testing.assert_array_equal(layer, theirs.aggregate[j], err_msg=where)
        else:
            assert_within_spacings(ours, theirs.aggregate, 1, no_scale(clients))


def test_the_robust_methods_keep_the_attackers_out(flower_results: dict[str, list[FlowerResult]]) -> None:
    """With f attackers far off, Krum, Multi-Krum and Bulyan choose honest clients only, and every robust result
    stays near the honest clients while the plain mean does not (so the cases really test robustness)."""
    for method in METHODS:
        for clients, theirs in zip(method.sets(), flower_results[method.id], strict=True):
            malicious = int(method.options.get("num_malicious", 0))
            if (
                theirs.selected is not None
                and len(clients.attackers) <= malicious
                and len(theirs.selected) <= len(clients.honest)
            ):
                assert not set(theirs.selected) & clients.attackers, (method.id, len(clients.clients))
    for clients in SETS:
        if not clients.attackers or len(clients.attackers) * 2 >= len(clients.clients):
            continue
        honest = [clients.clients[i] for i in clients.honest]
        low = [np.min([c[j] for c in honest], axis=0) for j in range(len(LAYERS))]
        high = [np.max([c[j] for c in honest], axis=0) for j in range(len(LAYERS))]
        mean = [np.mean([c[j] for c in clients.clients], axis=0) for j in range(len(LAYERS))]
        assert any(np.any((m < lo) | (m > hi)) for m, lo, hi in zip(mean, low, high, strict=True))
        for aggregator in (Median(), Krum(len(clients.attackers), 0)):
            result = fedagg_aggregate(aggregator, clients)
            for value, lo, hi in zip(result, low, high, strict=True):
                assert np.all((value >= lo) & (value <= hi)), (
                    type(aggregator).__name__,
                    len(clients.clients),
                )


def test_multi_krum_with_fewer_clients_than_it_keeps_averages_them_all() -> None:
    """Flower's ``argsort(scores)[::-1][n - m:]`` starts from the end when m > n (then it keeps m - n clients);
    fedagg keeps every client, as ``m`` asks for at least that many."""
    clients = SETS[0]  # 3 clients

    aggregator = Krum(malicious=0, keep=5)
    ours = fedagg_aggregate(aggregator, clients)

    assert sorted(aggregator.selected) == [0, 1, 2]
    expected = [
        np.average([c[j] for c in clients.clients], axis=0, weights=clients.num_examples)
        for j in range(len(LAYERS))
    ]
    assert_within_spacings(ours, expected, 1, no_scale(clients))
