"""Fencing (issue 21): two ``fedagg serve`` replicas with ``ha.enabled`` on one state directory and a real etcd
server as the election's store (kmock 0.8 enforces no resourceVersion conflicts, so the Kubernetes Lease cannot be
exercised this way; etcd refuses stale writes as the API server does). Mid-federation the lease is taken away
from the leader by writing another holder into it through the store; the leader must fence (no state file
committed after its "state writes fenced" line), go NOT_SERVING and exit 75 before the standby is elected, and the
standby must take over only after the lease expired, restore and finish the federation with the right model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedagg.ops.etcd_lease import EtcdLeaseRecords
from fedagg.ops.lease import LeaseRecord, utc_now
from tests.faults.harness import (
    NOT_SERVING,
    Aggregator,
    OpenflCollaborators,
    Setup,
    finish,
    make_setup,
    poll,
    spooled_uploads,
    stop,
)
from tests.faults.replicas import elected_on, logged_at, replicas
from tests.support.etcd import RunningEtcd, etcd_server
from tests.support.haproxy import balancing
from tests.support.models import write_zero_model
from tests.support.pki import Pki, tls_options

pytestmark = pytest.mark.slow

ROUNDS = 3
LEASE = "fencing"
LEASE_SECONDS = 3
FENCED_LINE = "state writes fenced"
ELECTED_LINE = "elected:"
LOG_PRECISION_SECONDS = 0.001  # log timestamps are truncated to the millisecond


def state_files(state: Path) -> dict[Path, int]:
    """Every state file's modification time (ns): not the lock (the holder record) nor an upload still arriving
    (``*.part``, never a state file: deleted at every start)."""
    return {
        path: path.stat().st_mtime_ns
        for path in state.rglob("*")
        if path.is_file() and path.name != "lock" and not path.name.endswith(".part")
    }


@dataclass
class Pair:
    """A leader and its standby (electing on ``store``) serving collaborators that have begun uploading."""

    setup: Setup
    etcd: RunningEtcd
    store: EtcdLeaseRecords
    leader: Aggregator
    standby: Aggregator
    collaborators: OpenflCollaborators | None


@contextmanager
def running_pair(tmp_path: Path, pki: Pki, openfl: Path | None) -> Iterator[Pair]:
    """A leader and a standby electing on a fresh etcd; with ``openfl`` (its python), OpenFL 1.7.1 collaborators
    that have made a first acknowledged upload.

    OpenFL's collaborators, not fedagg's: fedagg's client gives up on a CANCELLED that a draining server sometimes
    answers a call arriving as it stops (a drain's issue, seen with SIGTERM as well), which is not what these tests
    are about."""
    model = write_zero_model(tmp_path)
    setup = make_setup(tmp_path, pki, ROUNDS, model)
    with etcd_server(tmp_path) as etcd:
        ports, configs = replicas(tmp_path, pki, setup, model, elected_on(etcd.url, LEASE, LEASE_SECONDS))
        leader = standby = collaborators = None
        with balancing(tmp_path, setup.port, ports):
            try:
                leader = Aggregator(configs[0], name="leader")
                leader.wait_for_federation()
                standby = Aggregator(configs[1], name="standby")
                standby.wait_for_line("in use by another fedagg process")
                assert standby.readiness() == NOT_SERVING  # a standby is never routed to
                if openfl is not None:
                    collaborators = OpenflCollaborators(setup, pki, openfl)
                    poll(lambda: spooled_uploads(setup.state), 60, "a first acknowledged upload")
                yield Pair(setup, etcd, EtcdLeaseRecords(LEASE, etcd.url), leader, standby, collaborators)
            finally:
                stop(leader, standby, collaborators)


@pytest.mark.interop
def test_a_leader_whose_lease_is_taken_away_stops_writing_before_the_new_leader_starts(
    tmp_path: Path, pki: Pki, openfl: Path
) -> None:
    with running_pair(tmp_path, pki, openfl) as pair:
        setup, leader, standby = pair.setup, pair.leader, pair.standby
        found = pair.store.read(5)  # take the lease away: another holder, just renewed
        assert found is not None
        assert found[0].holder == "replica0"
        now = utc_now()
        pair.store.replace(
            LeaseRecord("intruder", LEASE_SECONDS, now, now, found[0].transitions + 1), found[1], 5
        )

        assert leader.wait(30) == 75, leader.log()
        left_behind = state_files(setup.state)  # everything the old leader wrote, before anyone else can
        standby.wait_for_federation(60)
        leads = standby.metric("fedagg_leader", identity="replica1")
        transitions = standby.metric("fedagg_leader_transitions_total")
        new_holder = json.loads((setup.state / "lock").read_text())
        assert pair.collaborators is not None
        finish(setup, standby, pair.collaborators)

    old_log, new_log = leader.log(), standby.log()
    assert "leadership lost: the lease is held by intruder" in old_log
    assert "readiness NOT_SERVING, calls refused" in old_log
    fenced = logged_at(old_log, FENCED_LINE).timestamp() + LOG_PRECISION_SECONDS
    elected = logged_at(new_log, ELECTED_LINE).timestamp()
    assert fenced < new_holder["since"] < elected, (fenced, new_holder, elected)
    assert new_holder["pid"] == standby.process.pid
    # The old leader committed nothing after its fence closed ...
    late = {str(path): mtime / 1e9 for path, mtime in left_behind.items() if mtime / 1e9 > fenced}
    assert late == {}, f"written after the fence ({fenced}): {late}\n{old_log}"
    # ... and every file changed since was written by the new leader, after it held the lock.
    changed = {path for path, mtime in state_files(setup.state).items() if left_behind.get(path) != mtime}
    assert changed
    early = {str(path): os.stat(path).st_mtime_ns / 1e9 for path in changed}
    early = {path: mtime for path, mtime in early.items() if mtime < new_holder["since"]}
    assert early == {}, f"changed before the new leader held the lock ({new_holder}): {early}"
    assert (leads, transitions) == (1, 1)  # replica1 leads; it saw the lease go from intruder to itself


@pytest.mark.interop
def test_a_leader_stopped_by_sigterm_hands_the_lease_over(tmp_path: Path, pki: Pki, openfl: Path) -> None:
    with running_pair(tmp_path, pki, openfl) as pair:
        before = pair.store.read(5)
        pair.leader.process.send_signal(signal.SIGTERM)

        assert pair.leader.wait(30) == 0, pair.leader.log()
        pair.standby.wait_for_federation(60)
        transitions = pair.standby.metric("fedagg_leader_transitions_total")
        after = pair.store.read(5)
        assert pair.collaborators is not None
        finish(pair.setup, pair.standby, pair.collaborators)

    assert "released etcd key /fedagg/leases/fencing" in pair.leader.log()  # vacant: no expiry to wait for
    assert before is not None
    assert after is not None
    assert (before[0].holder, after[0].holder) == ("replica0", "replica1")
    assert after[0].transitions == before[0].transitions + 1
    assert transitions == 1


def test_a_leader_cut_off_from_the_lease_stops_and_nobody_serves_without_it(tmp_path: Path, pki: Pki) -> None:
    with running_pair(tmp_path, pki, None) as pair:
        pair.etcd.stop()  # neither replica can reach the lease any more

        assert pair.leader.wait(30) == 75, pair.leader.log()
        pair.standby.wait_for_line("waiting to lead")  # it has the state lock now, not the lease
        readiness = pair.standby.readiness()

    assert "leadership lost: no renewal for 2s (ha.renew_deadline_seconds)" in pair.leader.log()
    assert FENCED_LINE in pair.leader.log()
    assert readiness == NOT_SERVING
    assert ELECTED_LINE not in pair.standby.log()


def status(setup: Setup, pki: Pki, ops_port: int, *output: str) -> str:
    """``fedagg status`` through the balancer, with leadership asked of the replica whose ops port is given."""
    command = [sys.executable, "-m", "fedagg.cli", "status", "--address", setup.address, "--name", "one"]
    command += [*tls_options(pki.client("one")), "--ops", f"127.0.0.1:{ops_port}", "--timeout", "30", *output]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("FEDAGG_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_status_names_the_leader_and_the_term_on_either_replica(tmp_path: Path, pki: Pki) -> None:
    with running_pair(tmp_path, pki, None) as pair:
        found = pair.store.read(5)
        leader_text = status(pair.setup, pki, pair.leader.ops_port)
        standby_text = status(pair.setup, pki, pair.standby.ops_port)
        leader_json = json.loads(status(pair.setup, pki, pair.leader.ops_port, "-o", "json"))["leadership"]
        standby_json = json.loads(status(pair.setup, pki, pair.standby.ops_port, "-o", "json"))["leadership"]

    assert found is not None
    term = found[0].transitions
    election = f"etcd key /fedagg/leases/{LEASE} at {pair.etcd.url}"
    assert leader_json == {
        "election": election,
        "identity": "replica0",
        "role": "leader",
        "leader": "replica0",
        "term": term,
        "transitions_seen": 0,  # it took a lease nobody held: no takeover seen
    }
    assert standby_json == {**leader_json, "identity": "replica1", "role": "standby"}
    assert (
        f"leadership: replica0 is the leader; leader replica0, term {term} (leaseTransitions), "
        f"0 transition(s) seen by replica0; {election}"
    ) in leader_text
    assert "leadership: replica1 is the standby; leader replica0, term" in standby_text
