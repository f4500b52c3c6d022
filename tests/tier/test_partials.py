"""Partial sums at the replicas, merged and divided at the root, against a single pod's aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from fedagg.federation.aggregators.adaptive import AdamAdaptiveAggregation
from fedagg.federation.aggregators.elementwise import FedCurvWeightedAverage, WeightedAverage
from fedagg.tier.division import divide
from fedagg.tier.partials import RoundPartial, merge
from tests.support.aggregation import MemoryState, Model, aggregate, model_of

SITES = ("site-0", "site-1", "site-2", "site-3")
WEIGHTS = (120.0, 7.0, 33.0, 1.0)


def contributions(seed: int) -> list[Model]:
    rng = np.random.default_rng(seed)
    return [model_of(rng, shift=index) for index in range(len(SITES))]


def partials_of(models: list[Model], placement: dict[str, int], round_number: int = 0) -> list[RoundPartial]:
    """Each replica's partial: the sites ``placement`` sends to it, folded in arrival order (reversed here)."""
    replicas = [RoundPartial(round_number, f"ingest-{index}", 1) for index in range(2)]
    for site in reversed(SITES):
        index = SITES.index(site)
        replicas[placement[site]].fold(
            "train", site, WEIGHTS[index], models[index], [(("loss", ("trained",)), float(index))]
        )
    return replicas


PLACEMENTS = [
    {"site-0": 0, "site-1": 1, "site-2": 0, "site-3": 1},
    {"site-0": 1, "site-1": 1, "site-2": 1, "site-3": 0},
    {"site-0": 0, "site-1": 0, "site-2": 0, "site-3": 0},
]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_weighted_average_from_partials_equals_a_single_pods_up_to_float32_rounding(
    placement: dict[str, int],
) -> None:
    models = contributions(7)
    standalone = aggregate(WeightedAverage(), models, WEIGHTS)
    assert standalone is not None
    merged = merge(0, partials_of(models, placement))
    tier = divide(WeightedAverage(), 0, "train", merged.tasks["train"], models[0])
    assert set(tier) == set(standalone)
    for name, values in standalone.items():
        assert tier[name].dtype == np.float32
        np.testing.assert_array_max_ulp(tier[name], values, maxulp=1)
    loss = merged.tasks["train"].metric_average(("loss", ("trained",)))
    assert loss == pytest.approx(sum(i * w for i, w in enumerate(WEIGHTS)) / sum(WEIGHTS))


def test_an_adaptive_optimizer_over_rounds_from_partials_equals_a_single_pods() -> None:
    initial = model_of(np.random.default_rng(1))
    pod, pod_state = dict(initial), MemoryState()
    tier, tier_state = dict(initial), MemoryState()
    pod_adam, tier_adam = AdamAdaptiveAggregation(0.01), AdamAdaptiveAggregation(0.01)
    for round_number in range(3):
        models = contributions(100 + round_number)
        expected = aggregate(pod_adam, models, WEIGHTS, pod, pod_state, round_number)
        assert expected is not None
        merged = merge(round_number, partials_of(models, PLACEMENTS[round_number], round_number))
        got = divide(tier_adam, round_number, "train", merged.tasks["train"], tier, tier_state)
        for name, values in expected.items():
            np.testing.assert_allclose(got[name], values, rtol=2e-6, atol=2e-7)
        pod, tier = {**pod, **expected}, {**tier, **got}
        pod_state, tier_state = pod_state.next_round(), tier_state.next_round()
    assert tier_adam.save() == pod_adam.save()


def test_fedcurv_fisher_terms_are_summed_unweighted() -> None:
    rng = np.random.default_rng(3)
    models = [
        {"w": rng.standard_normal(6).astype(np.float32), "w_u": rng.standard_normal(6).astype(np.float32)}
        for _ in SITES
    ]
    standalone = aggregate(FedCurvWeightedAverage(), models, WEIGHTS)
    assert standalone is not None
    replicas = [RoundPartial(0, f"ingest-{index}", 1) for index in range(2)]
    for index, site in enumerate(SITES):
        replicas[index % 2].fold(
            "train", site, WEIGHTS[index], models[index], plain=lambda name: name.endswith("_u")
        )
    tier = divide(FedCurvWeightedAverage(), 0, "train", merge(0, replicas).tasks["train"], models[0])
    for name, values in standalone.items():
        np.testing.assert_array_max_ulp(tier[name], values, maxulp=2)


def test_a_contribution_cannot_be_merged_twice() -> None:
    models = contributions(5)
    first, second = RoundPartial(0, "ingest-0", 1), RoundPartial(0, "ingest-1", 1)
    first.fold("train", "site-0", 1.0, models[0])
    second.fold("train", "site-0", 1.0, models[0])
    with pytest.raises(ValueError, match="repeats contributions already merged"):
        merge(0, [first, second])
    with pytest.raises(ValueError, match="already in the partial"):
        first.fold("train", "site-0", 1.0, models[0])


def test_partials_of_another_round_are_refused() -> None:
    with pytest.raises(ValueError, match="round 3, not 4"):
        merge(4, [RoundPartial(3, "ingest-0", 1)])
