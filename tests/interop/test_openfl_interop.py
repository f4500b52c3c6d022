"""Real OpenFL 1.7.1 collaborators train against fedagg, and fedagg matches OpenFL's own aggregator."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.store import publish_model
from fedagg.protocol.model_file import read_model
from tests.interop.openfl import (
    CollaboratorSpec,
    openfl_python,
    pbuf_to_npz,
    start_collaborator,
    start_oracle,
)
from tests.support.pki import Pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, make_federation, make_plan, serving

pytestmark = pytest.mark.interop

ROUNDS = 3
SPECS = (CollaboratorSpec("one", 1.0, 10, 20), CollaboratorSpec("two", 2.0, 30, 5))
NAMES = [spec.name for spec in SPECS]
SHAPES = {"w": (2, 3), "b": (3,)}


@pytest.fixture(scope="module")
def python() -> Path:
    return openfl_python()


def initial_model() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def run_collaborators(python: Path, port: int, pki: Pki, delta: bool, directory: Path) -> list[int]:
    processes = [
        start_collaborator(
            python,
            spec,
            port,
            FEDERATION_UUID,
            AGGREGATOR_UUID,
            pki,
            delta,
            directory / f"{spec.name}.json",
            directory / f"{spec.name}.log",
        )
        for spec in SPECS
    ]
    return [process.wait(timeout=300) for process in processes]


@pytest.fixture(params=[True, False], ids=["delta_updates", "full_updates"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_openfl_collaborators_train_against_fedagg_like_against_openfl(
    python: Path, pki: Pki, tmp_path: Path, delta: bool
) -> None:
    init = tmp_path / "init.pbuf"
    publish_model(init, initial_model(), 0)
    oracle_out = tmp_path / "oracle"
    oracle_out.mkdir()
    oracle, oracle_port = start_oracle(
        python,
        NAMES,
        ROUNDS,
        init,
        FEDERATION_UUID,
        AGGREGATOR_UUID,
        pki,
        tmp_path / "oracle-state",
        oracle_out,
    )
    (tmp_path / "oracle-collaborators").mkdir()
    (tmp_path / "fedagg-collaborators").mkdir()

    federation = make_federation(
        tmp_path, make_plan(tuple(NAMES), ROUNDS, rounds_kept=ROUNDS + 1), initial_model()
    )
    with serving(federation, pki) as thread, ThreadPoolExecutor(1) as background:
        oracle_codes = background.submit(
            run_collaborators, python, oracle_port, pki, delta, tmp_path / "oracle-collaborators"
        )
        fedagg_codes = run_collaborators(
            python, thread.server.port, pki, delta, tmp_path / "fedagg-collaborators"
        )
        thread.call(thread.server.wait_for_quit_jobs(), timeout=60)
        oracle_collaborators = oracle_codes.result(timeout=300)
    assert oracle.wait(timeout=120) == 0

    assert fedagg_codes == [0, 0], "OpenFL collaborators exit cleanly after their quit job"
    assert oracle_collaborators == [0, 0]
    models = tmp_path / "state" / "models"
    for round_number in range(ROUNDS):
        expected = np.load(oracle_out / f"round-{round_number}.npz")
        actual = read_model(models / f"round-{round_number + 1:06d}.pbuf").tensors
        for name in SHAPES:
            np.testing.assert_allclose(
                actual[name], expected[name], rtol=1e-6, err_msg=f"round {round_number}"
            )
    oracle_metrics = {
        (m["round"], m["task_name"], m["metric_name"]): m["metric_value"]
        for m in _json(oracle_out / "metrics.json")
    }
    fedagg_metrics = {
        (r.round_number, r.task, r.name): r.value
        for r in federation.metrics.history()
        if r.origin == "aggregator"
    }
    assert fedagg_metrics.keys() == oracle_metrics.keys()
    for key, value in oracle_metrics.items():
        assert fedagg_metrics[key] == pytest.approx(value, rel=1e-6), key

    final = pbuf_to_npz(python, tmp_path / "last.pbuf", tmp_path / "last.npz")
    assert final["round_number"] == ROUNDS, (
        "fedagg's last model is the final aggregate, read by OpenFL itself"
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "last.npz")["w"], np.load(oracle_out / f"round-{ROUNDS - 1}.npz")["w"], rtol=1e-6
    )


def _json(path: Path) -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(path.read_text())
    return data
