"""The aggregator family's contracts: every MUST of the plug-in interface has a conformance test that quotes it
(tests/unit/test_aggregation.py's AggregatorConformance, which every aggregator's test class subclasses, and
tests/unit/test_contracts_privacy.py for the sensitivity share), and the adaptive optimizers survive an attacker's
finite extremes (issue 19, item 6)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from fedagg.federation.aggregators.adaptive import (
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    AdaptiveAggregation,
    YogiAdaptiveAggregation,
)
from fedagg.federation.aggregators.base import Aggregator, BoundedAggregator
from tests.support.aggregation import MemoryState, Model, aggregate
from tests.support.conformance import untested_musts
from tests.unit import test_aggregation, test_contracts_privacy

OPTIMIZERS: dict[str, Callable[..., AdaptiveAggregation]] = {
    "adagrad": AdagradAdaptiveAggregation,
    "adam": AdamAdaptiveAggregation,
    "yogi": YogiAdaptiveAggregation,
}


def test_every_must_of_the_aggregator_interface_has_a_conformance_test() -> None:
    missing = untested_musts(
        [Aggregator, BoundedAggregator], [test_aggregation.AggregatorConformance, test_contracts_privacy]
    )

    assert not missing, "\n".join(missing)


def honest(rng: np.random.Generator, model: Model) -> Model:
    return {
        name: (values + rng.normal(0.01, 0.01, values.shape)).astype(np.float32)
        for name, values in model.items()
    }


def run(optimizer: AdaptiveAggregation, rounds: int) -> tuple[list[Model], list[float]]:
    """Round 0: three honest collaborators and one sending 3e38 everywhere; then honest rounds only. Each
    round's model and how many contributions it left out."""
    rng = np.random.default_rng(3)
    model: Model = {"w": np.zeros(8, np.float32)}
    state, models, left_out = MemoryState(), [], []
    for number in range(rounds):
        contributions = [honest(rng, model) for _ in range(3)]
        if number == 0:
            contributions.append({"w": np.full(8, 3e38, np.float32)})
        result = aggregate(optimizer, contributions, [1.0] * len(contributions), model, state, number)
        assert result is not None
        assert np.isfinite(result["w"]).all(), f"round {number}: the model overflowed"
        assert all(np.isfinite(v).all() for part in state.written.values() for v in part), f"round {number}"
        model, state = result, state.next_round()
        models.append(model)
        left_out.append(optimizer.report().get("left_out", 0.0))
    return models, left_out


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_an_attackers_3e38_update_never_freezes_an_optimizer_with_max_update(kind: str) -> None:
    """With ``max_update`` the 3e38 contribution is left out as content: every later round moves the model,
    towards the honest updates, and nothing is ever inf."""
    optimizer = OPTIMIZERS[kind](learning_rate=0.1, max_update=1e3)

    models, left_out = run(optimizer, 6)

    assert left_out == [1, 0, 0, 0, 0, 0]
    for before, after in itertools.pairwise(models):
        assert not np.array_equal(before["w"], after["w"]), "the model still moves"
    assert float(np.mean(models[-1]["w"])) > 0, "it moves the honest way"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_an_attackers_3e38_update_never_overflows_an_optimizer(kind: str) -> None:
    """Without ``max_update`` the moments still never overflow to inf (they stay within float32's range), so
    the model stays finite and a later round still changes it where the step is not lost to rounding."""
    models, _ = run(OPTIMIZERS[kind](learning_rate=0.1), 6)

    assert all(np.isfinite(model["w"]).all() for model in models)


def test_max_update_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_update"):
        AdamAdaptiveAggregation(max_update=0.0)
