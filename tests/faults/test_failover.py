"""A hot standby takes over: two ``fedagg serve`` replicas on one state directory behind a real L4 balancer
(HAProxy, TCP checks on the federation ports); the serving one is killed at a crash point mid-round, the standby,
blocked on the state-directory lock, restores and serves; the collaborators ride through the gap (the balancer
closes their connections without a TLS alert meanwhile), the federation finishes, the final model is the closed
form of an undisturbed run and every contribution counts once (issue 21; outside Kubernetes the lock alone elects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Aggregator,
    Collaborators,
    FedaggCollaborators,
    OpenflCollaborators,
    Setup,
    finish,
    make_setup,
    stop,
)
from tests.faults.replicas import elected_on, logged_at, replicas
from tests.support.etcd import etcd_server
from tests.support.haproxy import balancing
from tests.support.models import write_zero_model
from tests.support.pki import Pki

pytestmark = pytest.mark.slow

ROUNDS = 2


def fail_over(
    tmp_path: Path,
    pki: Pki,
    failpoints: str,
    start: Callable[[Setup, Pki], Collaborators],
    *,
    elect: bool = False,
) -> float:
    """Run a federation on a leader armed with ``failpoints``, with a standby, both behind the balancer the
    collaborators dial, to its end (:func:`finish` checks the model and the counts); seconds from the standby's
    lock to its listening. ``elect``: the replicas also elect a leader on a lease in a real etcd."""
    model = write_zero_model(tmp_path)
    setup = make_setup(tmp_path, pki, ROUNDS, model)  # its port is the balancer's
    leader = standby = None
    collaborators = None
    with contextlib.ExitStack() as stack:
        sections = elected_on(stack.enter_context(etcd_server(tmp_path)).url, "failover") if elect else None
        ports, configs = replicas(tmp_path, pki, setup, model, sections)
        stack.enter_context(balancing(tmp_path, setup.port, ports))
        try:
            leader = Aggregator(configs[0], failpoints, "leader")
            leader.wait_for_federation()
            standby = Aggregator(configs[1], name="standby")
            standby.wait_for_line("in use by another fedagg process")
            collaborators = start(setup, pki)
            leader.wait_killed()
            standby.wait_for_federation()
            finish(setup, standby, collaborators)
        finally:
            stop(leader, standby, collaborators)
    takeover = logged_at(standby.log(), "federation listening") - logged_at(standby.log(), "is ours now")
    return takeover.total_seconds()


@pytest.mark.parametrize(
    "failpoints",
    [
        pytest.param("upload.chunk=kill@8", id="mid-upload"),
        pytest.param("round_end.model_written=kill@1", id="mid-round-end"),
        pytest.param("quit.before_record=kill@1", id="after-the-rounds"),
    ],
)
def test_the_standby_takes_over_and_the_federation_finishes(
    tmp_path: Path, pki: Pki, failpoints: str
) -> None:
    seconds = fail_over(tmp_path, pki, failpoints, FedaggCollaborators)
    print(f"takeover ({failpoints}): lock to listening {seconds:.3f} s")


@pytest.mark.interop
@pytest.mark.parametrize("elect", [pytest.param(False, id="lock"), pytest.param(True, id="lock-and-lease")])
def test_openfl_collaborators_ride_through_a_failover(
    tmp_path: Path, pki: Pki, openfl: Path, elect: bool
) -> None:
    seconds = fail_over(
        tmp_path,
        pki,
        "upload.chunk=kill@3",
        lambda setup, pki: OpenflCollaborators(setup, pki, openfl),
        elect=elect,
    )
    print(
        f"takeover (OpenFL 1.7.1 collaborators, mid-upload, election {elect}): lock to listening {seconds:.3f} s"
    )


def test_with_an_election_the_standby_takes_over_once_the_lease_expired(tmp_path: Path, pki: Pki) -> None:
    seconds = fail_over(tmp_path, pki, "upload.chunk=kill@8", FedaggCollaborators, elect=True)
    print(f"takeover with an election (lease 3 s, mid-upload): lock to listening {seconds:.3f} s")
