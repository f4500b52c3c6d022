"""What fedagg and OpenFL's aggregator produced (per-round models, aggregated metrics), and the closed form both
must match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import read_model
from tests.interop.fx_workspace import FxWorkspace
from tests.interop.openfl import CollaboratorSpec, pbuf_to_npz

MetricKey = tuple[int, str, str]
"""(round, task, metric) of an aggregated metric."""


def fedagg_models(state_dir: Path, rounds: int) -> list[dict[str, np.ndarray]]:
    """The model fedagg aggregated in each round (round r's aggregate is the global model of round r+1)."""
    store = StateStore(state_dir)
    return [dict(read_model(store.model_path(r + 1)).tensors) for r in range(rounds)]


def fedagg_metrics(state_dir: Path, rounds: int) -> dict[MetricKey, float]:
    """fedagg's aggregated metrics of the first ``rounds`` rounds, from its state directory."""
    return {
        (int(m["round_number"]), str(m["task"]), str(m["name"])): float(m["value"])
        for m in StateStore(state_dir).load_metrics(rounds)
        if m["origin"] == "aggregator"
    }


def oracle_models(output: Path, rounds: int) -> list[dict[str, np.ndarray]]:
    """The model OpenFL's aggregator produced in each round (``round-<r>.npz`` of oracle_aggregator.py)."""
    models = []
    for r in range(rounds):
        with np.load(output / f"round-{r}.npz") as archive:
            models.append({name: archive[name] for name in archive.files})
    return models


def oracle_metrics(output: Path) -> dict[MetricKey, float]:
    """OpenFL's aggregated metrics (``metrics.json`` of oracle_aggregator.py)."""
    return {
        (int(m["round"]), str(m["task_name"]), str(m["metric_name"])): float(m["metric_value"])
        for m in json.loads((output / "metrics.json").read_text())
    }


def closed_form(
    specs: tuple[CollaboratorSpec, ...], rounds: int
) -> tuple[list[float], dict[MetricKey, float]]:
    """What every aggregator must produce when all ``specs`` count in every round (WeightedAverage).

    Returns the value of every element of each round's aggregated model, and the aggregated metrics: with
    weights n (train size) and v (valid size), G(0) = 0 and G(r+1) = G(r) + (r+1) * sum(n s) / sum(n).
    """
    n = np.array([s.train_size for s in specs], np.float64)
    v = np.array([s.valid_size for s in specs], np.float64)
    step = np.array([s.step for s in specs], np.float64)
    models, metrics, model = [], {}, 0.0
    for r in range(rounds):
        trained = model + step * (r + 1)
        metrics[(r, "aggregated_model_validation", "acc")] = float(np.sum(v * (model + step)) / v.sum())
        metrics[(r, "train", "loss")] = float(np.sum(n * step / (r + 1)) / n.sum())
        metrics[(r, "locally_tuned_model_validation", "acc")] = float(np.sum(v * (trained + step)) / v.sum())
        model = float(np.sum(n * trained) / n.sum())
        models.append(model)
    return models, metrics


def assert_models_equal(
    actual: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]], what: str
) -> None:
    assert len(actual) == len(expected), what
    for r, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.keys() == want.keys(), (what, r)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=f"{what}: round {r} {name}")


def assert_models_closed_form(actual: list[dict[str, np.ndarray]], expected: list[float], what: str) -> None:
    assert len(actual) == len(expected), what
    for r, (got, value) in enumerate(zip(actual, expected, strict=True)):
        for name, array in got.items():
            np.testing.assert_allclose(
                array, np.full(array.shape, value, np.float32), rtol=1e-6, err_msg=f"{what}: round {r} {name}"
            )


def assert_metrics_equal(actual: dict[MetricKey, float], expected: dict[MetricKey, float], what: str) -> None:
    assert actual.keys() == expected.keys(), (what, sorted(actual), sorted(expected))
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-6), (what, key, actual[key], value)


def assert_fedagg_closed_form(workspace: FxWorkspace, specs: tuple[CollaboratorSpec, ...], what: str) -> None:
    """fedagg's models and metrics are what ``specs`` give when all of them count in every round."""
    rounds = workspace.rounds
    models, metrics = closed_form(specs, rounds)
    assert_models_closed_form(fedagg_models(workspace.state_dir, rounds), models, what)
    assert_metrics_equal(fedagg_metrics(workspace.state_dir, rounds), metrics, what)


def assert_last_model(
    workspace: FxWorkspace, directory: Path, rounds: int, final: dict[str, Any], openfl_reader: bool
) -> None:
    """fedagg's ``save/last.pbuf`` (the plan's last_state_path) is the final aggregate (round R).

    ``openfl_reader``: read it with OpenFL's own ``deconstruct_model_proto`` (another OpenFL process).
    """
    path = workspace.root / "save" / "last.pbuf"
    if openfl_reader:
        summary = pbuf_to_npz(workspace.python, path, directory / "last.npz")
        assert summary["round_number"] == rounds, "fedagg's last.pbuf holds round R (OpenFL's reader)"
        with np.load(directory / "last.npz") as archive:
            last = {name: archive[name] for name in archive.files}
    else:
        model = read_model(path)
        assert model.round_number == rounds, "fedagg's last.pbuf holds round R"
        last = dict(model.tensors)
    assert_models_equal([last], [final], "fedagg's last.pbuf vs the final model")
