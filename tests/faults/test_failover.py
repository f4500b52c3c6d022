"""A hot standby takes over: two ``fedagg serve`` replicas on one state directory behind a real L4 balancer
(HAProxy, TCP checks on the federation ports); the serving one is killed at a crash point mid-round, the standby,
blocked on the state-directory lock, restores and serves; the collaborators ride through the gap (the balancer
closes their connections without a TLS alert meanwhile), the federation finishes, the final model is the closed
form of an undisturbed run and every contribution counts once (issue 21; outside Kubernetes the lock alone elects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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
from tests.faults.replicas import elected_on, logged_at, replicas, resumed_at
from tests.support.etcd import etcd_server
from tests.support.haproxy import balancing
from tests.support.models import write_zero_model
from tests.support.pki import Pki

pytestmark = pytest.mark.slow

ROUNDS = 2


@dataclass(frozen=True)
class Takeover:
    """When a failover happened: the leader's death, the standby's lock, its listening."""

    waited: datetime
    locked: datetime
    listening: datetime

    @property
    def killed(self) -> datetime:
        """The leader's death as first seen: the kernel released its lock (the standby's line) or its parent's
        wait returned."""
        return min(self.waited, self.locked)

    def seconds(self, since: datetime) -> float:
        return (self.listening - since).total_seconds()


def fail_over(
    tmp_path: Path,
    pki: Pki,
    failpoints: str,
    start: Callable[[Setup, Pki], Collaborators],
    *,
    elect: bool = False,
) -> Takeover:
    """Run a federation on a leader armed with ``failpoints``, with a standby, both behind the balancer the
    collaborators dial, to its end (:func:`finish` checks the model and the counts); when the takeover happened.
    ``elect``: the replicas also elect a leader on a lease in a real etcd."""
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
            waited = datetime.now()  # local wall clock, as the log lines' timestamps
            standby.wait_for_federation()
            finish(setup, standby, collaborators)
        finally:
            stop(leader, standby, collaborators)
    log = standby.log()
    return Takeover(waited, logged_at(log, "is ours now"), logged_at(log, "federation listening"))


def kill_points(upload_chunk: int, last: str, last_id: str) -> Any:
    """The ``failpoints`` parameter: the leader killed at its ``upload_chunk``-th upload chunk, while writing round
    0's model, and at ``last`` (named ``last_id``)."""
    return pytest.mark.parametrize(
        "failpoints",
        [
            pytest.param(f"upload.chunk=kill@{upload_chunk}", id="mid-upload"),
            pytest.param("round_end.model_written=kill@1", id="mid-round-end"),
            pytest.param(last, id=last_id),
        ],
    )


@kill_points(8, "quit.before_record=kill@1", "after-the-rounds")
def test_the_standby_takes_over_and_the_federation_finishes(
    tmp_path: Path, pki: Pki, failpoints: str
) -> None:
    takeover = fail_over(tmp_path, pki, failpoints, FedaggCollaborators)
    print(f"takeover ({failpoints}): lock to listening {takeover.seconds(takeover.locked):.3f} s")


@pytest.mark.interop
@pytest.mark.parametrize("elect", [pytest.param(False, id="lock"), pytest.param(True, id="lock-and-lease")])
def test_openfl_collaborators_ride_through_a_failover(
    tmp_path: Path, pki: Pki, openfl: Path, elect: bool
) -> None:
    takeover = fail_over(
        tmp_path,
        pki,
        "upload.chunk=kill@3",
        lambda setup, pki: OpenflCollaborators(setup, pki, openfl),
        elect=elect,
    )
    print(
        f"takeover (OpenFL 1.7.1 collaborators, mid-upload, election {elect}): "
        f"lock to listening {takeover.seconds(takeover.locked):.3f} s"
    )


def test_with_an_election_the_standby_takes_over_once_the_lease_expired(tmp_path: Path, pki: Pki) -> None:
    takeover = fail_over(tmp_path, pki, "upload.chunk=kill@8", FedaggCollaborators, elect=True)
    print(
        f"takeover with an election (lease 3 s, mid-upload): lock to listening {takeover.seconds(takeover.locked):.3f} s"
    )


OPENFL_19_RECONNECT_SECONDS = 5
"""OpenFL 1.9's default ``client_reconnect_interval``: it waits this long before every retry."""
NOTICED_FIRST = timedelta(seconds=0.1)
"""A collaborator may log the leader's death before the standby logs the lock the kernel released (a thread's
wake-up, millisecond log stamps): retries are looked for from this long before; none happen while a leader serves."""


@pytest.mark.interop
@kill_points(3, "round_end.committed=kill@1", "between-rounds")
def test_openfl_19_collaborators_ride_through_a_failover(
    tmp_path: Path, pki: Pki, openfl_19: Path, failpoints: str
) -> None:
    """The chart's setting (a lease and the lock) with OpenFL 1.9 collaborators on their default retry period."""
    started: list[OpenflCollaborators] = []

    def start(setup: Setup, pki: Pki) -> OpenflCollaborators:
        started.append(
            OpenflCollaborators(setup, pki, openfl_19, reconnect_seconds=OPENFL_19_RECONNECT_SECONDS)
        )
        return started[0]

    takeover = fail_over(tmp_path, pki, failpoints, start, elect=True)
    (collaborators,) = started
    since = takeover.killed - NOTICED_FIRST
    resumed = [resumed_at(log.read_text(errors="replace"), since) for log in collaborators.logs]
    assert any(resumed), "no OpenFL 1.9 collaborator had to retry through the takeover"
    print(
        f"takeover (OpenFL 1.9 collaborators, {failpoints}, lease 3 s): kill to listening "
        f"{takeover.seconds(takeover.killed):.3f} s; collaborators back "
        + ", ".join(
            f"{(moment - takeover.killed).total_seconds():.3f} s" if moment else "(never retried)"
            for moment in resumed
        )
        + " after the kill"
    )
