"""SIGKILL at named crash points, then a restart on the same port: the collaborators ride through on UNAVAILABLE
retries and finish, the aggregator exits 0 after the last quit job, and the final model is the closed form of an
undisturbed run, so every acknowledged contribution counted exactly once.

The first aggregator runs with ``FEDAGG_FAILPOINTS=<point>=kill@<hit>`` and kills itself there (the test checks
it died of SIGKILL, so a crash point that is never reached fails the test); the second one starts on the same
configuration (state directory, port) without crash points. With two collaborators, three tasks each and two
rounds, uploads 1-6 belong to round 0 and 7-12 to round 1 (each one a single chunk); there is one round end per
round and one quit job per collaborator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import (
    Aggregator,
    Collaborators,
    FedaggCollaborators,
    OpenflCollaborators,
    crash_and_restart,
    finish,
    make_setup,
    stop,
)
from tests.support.models import write_zero_model
from tests.support.pki import Pki

pytestmark = pytest.mark.slow

ROUNDS = 2
FEDAGG_CRASHES = [
    pytest.param("upload.chunk=kill@8", id="mid-upload"),  # round 1's second upload, absorbed, not committed
    pytest.param("upload.committed=kill@3", id="upload-durable-not-acknowledged"),
    pytest.param("round_end.model_written=kill@1", id="round-end-model-written"),
    pytest.param("round_end.outputs_published=kill@2", id="round-end-outputs-published"),
    pytest.param("round_end.committed=kill@1", id="round-end-committed"),
    pytest.param("quit.before_record=kill@1", id="quit-before-record"),
    pytest.param("quit.recorded=kill@1", id="quit-recorded-first"),  # its reply lost; the other then quits
    pytest.param("quit.recorded=kill@2", id="quit-recorded-last"),  # every quit recorded, the last reply lost
]
OPENFL_CRASH_CHAIN = (
    "upload.chunk=kill@3",  # round 0's third upload, mid-upload
    "upload.committed=kill@2",  # the second upload this process commits: durable, not acknowledged
    "round_end.model_written=kill@1",  # round 0's end
    "round_end.committed=kill@1",  # round 0's end again, redone from the spool by the restart: before listening
    "quit.before_record=kill@1",  # the first quit job
)
"""One OpenFL run through five crashes: each aggregator process is armed with the next crash point (hits count
per process), the sixth runs clean. The OpenFL collaborators start once (their start-up is the slow part) and
ride through all of them."""


@pytest.mark.parametrize("failpoints", FEDAGG_CRASHES)
def test_fedagg_collaborators_ride_through_a_crash(tmp_path: Path, pki: Pki, failpoints: str) -> None:
    setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
    crash_and_restart(setup, failpoints, lambda setup: FedaggCollaborators(setup, pki), lambda _state: None)


@pytest.mark.interop
def test_openfl_collaborators_ride_through_five_crashes(tmp_path: Path, pki: Pki, openfl: Path) -> None:
    setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
    aggregators: list[Aggregator] = []
    collaborators: Collaborators | None = None
    try:
        for number, failpoints in enumerate(OPENFL_CRASH_CHAIN, 1):
            aggregators.append(Aggregator(setup.config, failpoints, f"aggregator-{number}"))
            if collaborators is None:
                aggregators[-1].wait_for_federation()
                collaborators = OpenflCollaborators(setup, pki, openfl)
            aggregators[-1].wait_killed()
        aggregators.append(Aggregator(setup.config, name="aggregator-last"))
        aggregators[-1].wait_for_federation()
        assert collaborators is not None
        finish(setup, aggregators[-1], collaborators)
    finally:
        stop(*aggregators, collaborators)
