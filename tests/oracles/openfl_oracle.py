"""OpenFL's aggregation functions as its aggregator calls them, as an oracle (openfl_side/aggregate.py in an
OpenFL venv).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.oracles.oracles import HERE, openfl_python, run_in_workdir


@dataclass(frozen=True)
class OpenflContribution:
    """One collaborator's train-task result in a round: its name, data_size and trained tensors."""

    name: str
    data_size: int
    tensors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OpenflRoundResult:
    """One round of OpenFL aggregation.

    ``aggregated``: what the aggregation function returned per tensor (its dtype; the unrounded value the
    adaptive functions use as the next round's base); ``model``: the ("model",) record of the next round,
    i.e. what collaborators receive (float32); ``weights``: the LocalTensor weights; adaptive only:
    ``base`` and ``gradient`` per optimized tensor (what ``_make_gradient`` got and returned).
    """

    aggregated: dict[str, np.ndarray]
    model: dict[str, np.ndarray]
    weights: dict[str, float]
    base: dict[str, np.ndarray]
    gradient: dict[str, np.ndarray]


@dataclass(frozen=True)
class OpenflRun:
    openfl_version: str
    function: str
    """The class that ran (``YogiAggregationFixed`` when OpenFL's Yogi defect was worked around)."""
    yogi_fixed: bool
    rounds: list[OpenflRoundResult]


def openfl_aggregate(
    function: str,
    initial: Mapping[str, np.ndarray],
    rounds: Sequence[Sequence[OpenflContribution]],
    *,
    settings: Mapping[str, Any] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    params_format: str = "lists",
    delta_updates: bool = True,
    version: str = "1.7.1",
) -> OpenflRun:
    """Run OpenFL ``version``'s aggregation function ``function`` over ``rounds`` (see
    openfl_side/aggregate.py for every convention).

    ``function``: "GeometricMedian", "AdagradAdaptiveAggregation", "AdamAdaptiveAggregation",
    "YogiAdaptiveAggregation", "FedCurvWeightedAverage" or "WeightedAverage". ``initial``: the initial
    model (tensor name -> array; float32 as from a .pbuf), the round-0 ("model",) records. ``settings``:
    the plan's ``aggregation_type.settings`` without ``params`` (learning_rate, betas,
    initial_accumulator_value, epsilon). ``params``: the adaptive optimizer's ``params`` (default: the
    initial model; only these tensors are optimized, the others weighted-averaged), given to OpenFL as
    nested lists like a plan's YAML (``params_format="lists"``) or as the arrays (``"arrays"``).
    """
    names = list(initial)
    arrays: dict[str, np.ndarray] = {
        f"initial_t{j}": np.asarray(initial[name]) for j, name in enumerate(names)
    }
    if params is not None:
        for j, name in enumerate(names):
            if name in params:
                arrays[f"params_t{j}"] = np.asarray(params[name])
        assert set(params) <= set(names), "params for tensors the model does not have"
    round_specs = []
    for r, contributions in enumerate(rounds):
        for i, contribution in enumerate(contributions):
            assert set(contribution.tensors) == set(names), (
                f"{contribution.name}: tensors differ from the model"
            )
            for j, name in enumerate(names):
                arrays[f"r{r}_c{i}_t{j}"] = np.asarray(contribution.tensors[name])
        round_specs.append(
            {
                "collaborators": [c.name for c in contributions],
                "data_sizes": [c.data_size for c in contributions],
            }
        )
    config = {
        "function": function,
        "settings": dict(settings or {}),
        "params_format": params_format,
        "tensor_names": names,
        "delta_updates": delta_updates,
        "rounds": round_specs,
    }
    out, report = run_in_workdir(
        openfl_python(version), HERE / "openfl_side" / "aggregate.py", config, arrays
    )
    results = []
    for r, info in enumerate(report["rounds"]):
        results.append(
            OpenflRoundResult(
                aggregated={name: out[f"r{r}_t{j}"] for j, name in enumerate(names)},
                model={name: out[f"r{r}_model_t{j}"] for j, name in enumerate(names)},
                weights=info["weights"],
                base={
                    name: out[f"r{r}_base_t{j}"] for j, name in enumerate(names) if f"r{r}_base_t{j}" in out
                },
                gradient={
                    name: out[f"r{r}_grad_t{j}"] for j, name in enumerate(names) if f"r{r}_grad_t{j}" in out
                },
            )
        )
    return OpenflRun(report["openfl"], report["function"], report["yogi_fixed"], results)
