"""The round end drives a task's aggregator: a plug-in by class path, blocks sized by ``limits.aggregation_bytes``,
and an optimizer's state carried over for tensors a round did not aggregate."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from fedagg.federation.aggregators import Emit, TensorInputs
from fedagg.federation.aggregators.base import block_elements_for
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.federation.plan import AggregationSpec, FederationPlan, default_tasks
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan
from tests.support.uploads import run_round

PAIR = ("one", "two")
BIG = {"big": (3, 10_000)}


class RecordingAverage(WeightedAverage):
    """A plug-in: the weighted average, remembering the widest block it was given and its settings."""

    seen: ClassVar[dict[str, int]] = {}

    def __init__(self, label: str = "") -> None:
        self.label = label

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        RecordingAverage.seen[tensor.name] = max(stop - start for start, stop in tensor.blocks())
        RecordingAverage.seen["label:" + self.label] = 1
        return super().combine(tensor, emit)


def plan_with(aggregation: AggregationSpec, **overrides: object) -> FederationPlan:
    tasks = default_tasks()
    tasks["train"] = dataclasses.replace(tasks["train"], aggregation=aggregation)
    return make_plan(PAIR, 3, tasks=tasks, **overrides)


def test_a_plug_in_gets_its_settings_and_blocks_within_the_aggregation_budget(tmp_path: Path) -> None:
    RecordingAverage.seen = {}
    budget = 200_000
    spec = AggregationSpec(f"{__name__}.RecordingAverage", {"label": "mine"})
    model = {"big": np.zeros(BIG["big"], np.float32)}
    federation = make_federation(tmp_path, plan_with(spec, aggregation_bytes=budget), model)

    run_round(federation, 0, {"one": (1.0, 10), "two": (4.0, 30)}, BIG)

    assert RecordingAverage.seen["label:mine"] == 1
    assert RecordingAverage.seen["big"] == block_elements_for(budget, 2) < 30_000
    np.testing.assert_allclose(
        read_model(tmp_path / "state" / "models" / "round-000001.pbuf").tensors["big"], 3.25
    )


def moments(state: Path, round_number: int) -> Mapping[str, np.ndarray]:
    path = StateStore(state / "state").slot_path("train", "second_moment", round_number)
    return read_model(path).tensors


def test_an_optimizer_keeps_the_state_of_a_tensor_a_round_did_not_aggregate(tmp_path: Path) -> None:
    spec = AggregationSpec("adam", {"learning_rate": 0.1})
    federation = make_federation(tmp_path, plan_with(spec), zero_model())

    run_round(federation, 0, {"one": (1.0, 10), "two": (2.0, 30)}, SHAPES)
    run_round(federation, 1, {"one": (1.5, 10), "two": (2.5, 30)}, {"w": SHAPES["w"]})  # no "b" this round

    after_round_0, after_round_1 = moments(tmp_path, 1), moments(tmp_path, 2)
    assert set(after_round_1) == {"w", "b"}
    np.testing.assert_array_equal(after_round_1["b"], after_round_0["b"])
    assert not np.array_equal(after_round_1["w"], after_round_0["w"])
