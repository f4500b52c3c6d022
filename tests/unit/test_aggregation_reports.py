"""What a task's aggregator reports after a round (privacy spent, clipping norm) reaches the operator: in the
experiment status (GetExperimentDescription, ``fedagg status``) and as metrics, and it survives a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fedagg.federation.aggregators.accountant import gaussian_epsilon
from fedagg.federation.federation import Federation
from fedagg.federation.plan import AggregationSpec, FederationPlan, default_tasks
from fedagg.ops.state_metrics import FederationStateCollector
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import run_round

PAIR = ("one", "two")
PRIVACY = {"noise_multiplier": 1.1, "clipping_norm": 0.5, "delta": 1e-6}


def private_plan(rounds: int = 3) -> FederationPlan:
    tasks = default_tasks()
    tasks["train"] = dataclasses.replace(
        tasks["train"], aggregation=AggregationSpec("weighted_average", {}, None, PRIVACY)
    )
    return make_plan(PAIR, rounds, tasks=tasks)


def scrape(federation: Federation) -> str:
    registry = CollectorRegistry()
    registry.register(FederationStateCollector(federation.describe, lambda: False))
    return generate_latest(registry).decode()


def figures(federation: Federation, task: str) -> dict[str, float]:
    return dict(dict(federation.describe().aggregation)[task])


def test_privacy_spent_is_in_the_status_and_the_metrics_after_each_round(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, private_plan(), zero_model())
    assert figures(federation, "train")["epsilon"] == 0.0

    run_round(federation, 0, {"one": (1.0, 10), "two": (2.0, 30)}, SHAPES)
    run_round(federation, 1, {"one": (1.0, 10), "two": (2.0, 30)}, SHAPES)

    reported = figures(federation, "train")
    assert reported["epsilon"] == gaussian_epsilon(1.1, 2, 1e-6)
    assert reported["delta"] == 1e-6
    assert reported["clipping_norm"] == 0.5
    assert reported["noise_stddev"] == pytest.approx(1.1 * 0.5 * 30 / 40)  # the largest data size share
    described = dict(federation.describe().tasks)["train"]
    assert f"epsilon {gaussian_epsilon(1.1, 2, 1e-6):.6g}" in described
    text = scrape(federation)
    assert f'fedagg_privacy_epsilon{{task="train"}} {gaussian_epsilon(1.1, 2, 1e-6)!r}' in text
    assert 'fedagg_update_clipping_norm{task="train"} 0.5' in text
    assert "aggregated_model_validation" not in dict(federation.describe().aggregation)


def test_the_privacy_spent_survives_a_restart(tmp_path: Path) -> None:
    plan = private_plan()
    federation = make_federation(tmp_path, plan, zero_model())
    run_round(federation, 0, {"one": (1.0, 10), "two": (2.0, 30)}, SHAPES)

    restarted = restart_federation(tmp_path, plan)
    assert figures(restarted, "train")["epsilon"] == gaussian_epsilon(1.1, 1, 1e-6)
    run_round(restarted, 1, {"one": (1.0, 10), "two": (2.0, 30)}, SHAPES)

    assert figures(restarted, "train")["epsilon"] == gaussian_epsilon(1.1, 2, 1e-6)


def test_contributions_a_robust_method_left_out_are_named_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = default_tasks()
    tasks["train"] = dataclasses.replace(
        tasks["train"], aggregation=AggregationSpec("krum", {"malicious": 1})
    )
    collaborators = ("one", "two", "three", "rogue")
    federation = make_federation(tmp_path, make_plan(collaborators, 2, tasks=tasks), zero_model())

    run_round(
        federation, 0, {"one": (1.0, 10), "two": (1.1, 10), "three": (0.9, 10), "rogue": (99.0, 10)}, SHAPES
    )

    assert figures(federation, "train")["left_out"] == 3
    assert 'fedagg_contributions_left_out{task="train"} 3.0' in scrape(federation)
    assert "round 0, task 'train': Krum left out two, three, rogue (kept one)" in caplog.text
