"""Straggler parity: with a percentage policy, fedagg leaves out a straggler's partial work exactly as OpenFL does.

Two real OpenFL 1.7.1 collaborators, PercentageBasedStragglerHandling(0.5, minimum_reporting=1): a round ends as
soon as one collaborator has *all* its tasks in. Both collaborators stall before
``locally_tuned_model_validation`` every round, "two" longer than "one", so "one" always finishes first while
"two" has already uploaded ``train`` (and ``aggregated_model_validation``) of the round it is in. OpenFL excludes
that partial work; so must fedagg. Every per-round model is then "one"'s alone:

    G(0) = 0,  T(r) = G(r) + s * (r + 1)  =>  G(r + 1) = s * (r + 1) * (r + 2) / 2    (s = one's step)

while any share of "two" (step 100) would show at once.

Timing (the models do not depend on it; only which rounds hold partial work of "two" does): "one" starts first,
"two" START_GAP later. A round of "one" lasts about ONE_STALL, so "two" gets its round-0 tasks well before "one"
is done with round 0, and uploads train before it. "two" then stalls TWO_STALL, longer than a whole round of
"one", so it is never done first; its ltmv arrives for a round that has closed and is ignored, and it joins
whichever round is open by then. With these numbers "two" wakes near the middle of rounds 1 and 2 (at about
7 s and 14 s; rounds end near 5, 10 and 15 s), so it usually leaves partial work in every round; the test
insists on round 0 only. Both federations run concurrently; OpenFL's serve() adds up to 5 s at the end.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.federation.events import FederationListener, RoundSummary
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN
from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec
from fedagg.federation.store import publish_model
from fedagg.protocol.model_file import read_model
from tests.interop.openfl import CollaboratorSpec, openfl_python, start_collaborator, start_oracle
from tests.support.pki import Pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, make_federation, make_plan, serving

pytestmark = pytest.mark.interop

ROUNDS = 3
LAST_TASK = "locally_tuned_model_validation"
ONE_STALL = 5.0
TWO_STALL = 6.8
START_GAP = 0.5
ONE = CollaboratorSpec("one", 1.0, 10, 20, stall_before_task=LAST_TASK, stall_seconds=ONE_STALL)
TWO = CollaboratorSpec("two", 100.0, 30, 5, stall_before_task=LAST_TASK, stall_seconds=TWO_STALL)
SPECS = (ONE, TWO)
NAMES = [spec.name for spec in SPECS]
SHAPES = {"w": (2, 3), "b": (3,)}
POLICY = StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, percent_needed=0.5, minimum_reporting=1)


@pytest.fixture(scope="module")
def python() -> Path:
    return openfl_python()


@dataclass
class RecordingListener(FederationListener):
    """Keeps what fedagg reports about rounds and uploads (called from the server's threads)."""

    rounds: list[RoundSummary] = field(default_factory=list)
    accepted: list[tuple[str, str, int]] = field(default_factory=list)
    ignored: list[tuple[str, str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def round_finished(self, summary: RoundSummary) -> None:
        with self.lock:
            self.rounds.append(summary)

    def contribution_accepted(self, collaborator: str, task: str, round_number: int, size_bytes: int) -> None:
        with self.lock:
            self.accepted.append((collaborator, task, round_number))

    def contribution_ignored(self, collaborator: str, task: str, reason: str) -> None:
        with self.lock:
            self.ignored.append((collaborator, task, reason))

    def contribution_rejected(self, collaborator: str, task: str, reason: str) -> None:
        with self.lock:
            self.rejected.append((collaborator, task, reason))


def global_model(round_number: int) -> float:
    """Every element of the model that starts ``round_number`` when only "one" counts."""
    return ONE.step * round_number * (round_number + 1) / 2


def expected_metrics() -> dict[tuple[int, str, str], float]:
    """The aggregated metrics when only "one" counts (collaborator.py's formulas)."""
    return {
        key: value
        for r in range(ROUNDS)
        for key, value in (
            ((r, "aggregated_model_validation", "acc"), global_model(r) + ONE.step),
            ((r, "train", "loss"), ONE.step / (r + 1)),
            ((r, LAST_TASK, "acc"), global_model(r + 1) + ONE.step),
        )
    }


def run_collaborators(python: Path, port: int, pki: Pki, directory: Path) -> list[int]:
    """ "one" first, "two" START_GAP later; every process's exit status."""
    processes = []
    for index, spec in enumerate(SPECS):
        if index:
            time.sleep(START_GAP)
        processes.append(
            start_collaborator(
                python,
                spec,
                port,
                FEDERATION_UUID,
                AGGREGATOR_UUID,
                pki,
                True,
                directory / f"{spec.name}.json",
                directory / f"{spec.name}.log",
            )
        )
    return [process.wait(timeout=300) for process in processes]


def test_a_straggler_s_partial_work_is_left_out_like_openfl_does(
    python: Path, pki: Pki, tmp_path: Path
) -> None:
    init = tmp_path / "init.pbuf"
    publish_model(init, {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}, 0)
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
        stragglers=POLICY,
    )
    oracle_dir = tmp_path / "oracle-collaborators"
    fedagg_dir = tmp_path / "fedagg-collaborators"
    oracle_dir.mkdir()
    fedagg_dir.mkdir()

    listener = RecordingListener()
    plan = make_plan(tuple(NAMES), ROUNDS, rounds_kept=ROUNDS + 1, stragglers=POLICY)
    federation = make_federation(
        tmp_path,
        plan,
        {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()},
        listener=listener,
    )
    with serving(federation, pki) as thread, ThreadPoolExecutor(1) as background:
        oracle_codes = background.submit(run_collaborators, python, oracle_port, pki, oracle_dir)
        fedagg_codes = run_collaborators(python, thread.server.port, pki, fedagg_dir)
        thread.call(thread.server.wait_for_quit_jobs(), timeout=60)
        oracle_collaborators = oracle_codes.result(timeout=300)
    assert oracle.wait(timeout=120) == 0, (oracle_out / "oracle.log").read_text()[-3000:]

    assert fedagg_codes == [0, 0], "OpenFL collaborators exit cleanly after their quit job (fedagg)"
    assert oracle_collaborators == [0, 0], "OpenFL collaborators exit cleanly after their quit job (OpenFL)"
    for directory in (oracle_dir, fedagg_dir):
        two = _json(directory / "two.json")
        assert two["rounds"][0]["round"] == 0, "two got tasks in round 0"
        assert "trained" in two["rounds"][0], "two trained in round 0"
        assert all(entry.get("stalled") == [LAST_TASK] for entry in two["rounds"])

    # The models: fedagg's equal OpenFL's, and both are "one"'s alone.
    models = tmp_path / "state" / "models"
    for r in range(ROUNDS):
        expected = np.load(oracle_out / f"round-{r}.npz")
        actual = read_model(models / f"round-{r + 1:06d}.pbuf").tensors
        for name, shape in SHAPES.items():
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, err_msg=f"round {r} {name}")
            np.testing.assert_allclose(
                expected[name], np.full(shape, global_model(r + 1)), rtol=1e-6, err_msg=f"OpenFL round {r}"
            )

    # Who OpenFL and fedagg closed each round with.
    summary = _json(oracle_out / "summary.json")
    assert summary["participants"] == {
        str(r): {"done": ["one"], "stragglers": ["two"]} for r in range(ROUNDS)
    }
    assert [(s.round_number, s.contributors, s.stragglers) for s in listener.rounds] == [
        (r, 1, ("two",)) for r in range(ROUNDS)
    ]

    # The aggregated metrics: equal to OpenFL's and to "one"'s alone.
    oracle_metrics = {
        (m["round"], m["task_name"], m["metric_name"]): m["metric_value"]
        for m in _json(oracle_out / "metrics.json")
    }
    history = federation.metrics.history()
    fedagg_metrics = {
        (m.round_number, m.task, m.name): m.value for m in history if m.origin == AGGREGATOR_ORIGIN
    }
    expected_values = expected_metrics()
    assert oracle_metrics.keys() == expected_values.keys()
    assert fedagg_metrics.keys() == expected_values.keys()
    for key, value in expected_values.items():
        assert oracle_metrics[key] == pytest.approx(value, rel=1e-6), ("OpenFL", key)
        assert fedagg_metrics[key] == pytest.approx(value, rel=1e-6), ("fedagg", key)

    # The straggler's partial work was received, answered OK and left out, in both aggregators: its round-0
    # train metric is in each one's collaborator metrics (accepted at arrival), its round-0 ltmv never is.
    oracle_two = {
        (m["round"], m["task_name"], m["metric_name"])
        for m in _json(oracle_out / "collaborator_metrics.json")
        if m["metric_origin"] == "two"
    }
    fedagg_two = {(m.round_number, m.task, m.name) for m in history if m.origin == "two"}
    for two_metrics in (oracle_two, fedagg_two):
        assert (0, "train", "loss") in two_metrics
        assert not any(task == LAST_TASK for _, task, _ in two_metrics), "two is never done with a round"
    assert ("two", "train", 0) in listener.accepted
    assert not any(task == LAST_TASK for name, task, _ in listener.accepted if name == "two")
    two_ltmv = [reason for name, task, reason in listener.ignored if name == "two" and task == LAST_TASK]
    assert two_ltmv, listener.ignored
    assert set(two_ltmv) <= {"wrong_round", "round_closed", "finished"}, listener.ignored
    assert not [entry for entry in listener.ignored if entry[0] == "one"], listener.ignored
    assert listener.rejected == []


def _json(path: Path) -> Any:
    return json.loads(path.read_text())
