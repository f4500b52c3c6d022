"""The election against a real etcd server (which, unlike kmock 0.8, refuses stale writes): one leader at a time,
a lease taken away fences its leader before anyone else is elected, a cut-off leader fences at its deadline, a
released lease is taken at once. Synchronised on the electors' callbacks, never on sleeps; order is asserted,
durations never."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedagg.ops.election import ElectionTiming, LeaderElector
from fedagg.ops.etcd_lease import EtcdLeaseRecords
from fedagg.ops.lease import LeaseRecord, utc_now
from tests.support.etcd import etcd_fixture, etcd_server  # noqa: F401 - the fixture etcd

TIMING = ElectionTiming(lease_seconds=2, renew_deadline_seconds=1.0, retry_seconds=0.1)
WAIT = 30.0


@dataclass
class Journal:
    """What the electors reported, in the order they reported it (from their threads)."""

    entries: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, entry: str) -> None:
        with self.changed:
            self.entries.append(entry)
            self.changed.notify_all()

    def wait_for(self, entry: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: entry in self.entries, WAIT), (entry, self.entries)


@contextmanager
def candidate(store: EtcdLeaseRecords, identity: str, journal: Journal) -> Iterator[LeaderElector]:
    elector = LeaderElector(
        store,
        identity,
        TIMING,
        on_elected=lambda record: journal.add(f"{identity} elected (transitions {record.transitions})"),
        on_lost=lambda reason: journal.add(f"{identity} lost: {reason}"),
    )
    elector.start()
    try:
        yield elector
    finally:
        elector.stop(release=False, timeout=WAIT)


def test_one_leader_then_the_standby_after_a_release(etcd: str, request: pytest.FixtureRequest) -> None:
    store, journal = EtcdLeaseRecords(request.node.name, etcd), Journal()
    with candidate(store, "a", journal) as first:
        journal.wait_for("a elected (transitions 0)")
        with candidate(store, "b", journal):
            first.stop(release=True, timeout=WAIT)
            journal.wait_for("b elected (transitions 1)")

    assert journal.entries == ["a elected (transitions 0)", "b elected (transitions 1)"]


def test_a_leader_whose_lease_is_taken_away_stops_before_the_next_is_elected(
    etcd: str, request: pytest.FixtureRequest
) -> None:
    store, journal = EtcdLeaseRecords(request.node.name, etcd), Journal()
    with candidate(store, "a", journal):
        journal.wait_for("a elected (transitions 0)")
        with candidate(store, "b", journal):
            found = store.read(WAIT)
            assert found is not None
            now = utc_now()
            store.replace(LeaseRecord("intruder", TIMING.lease_seconds, now, now, 1), found[1], WAIT)
            journal.wait_for("b elected (transitions 2)")

    assert journal.entries == [
        "a elected (transitions 0)",
        "a lost: the lease is held by intruder",
        "b elected (transitions 2)",
    ]


def test_a_leader_cut_off_from_the_store_fences_at_its_deadline(tmp_path: Path) -> None:
    journal = Journal()
    with etcd_server(tmp_path) as server, candidate(EtcdLeaseRecords("cut-off", server.url), "a", journal):
        journal.wait_for("a elected (transitions 0)")
        server.stop()  # the leader cannot renew any more
        journal.wait_for("a lost: no renewal for 1s (ha.renew_deadline_seconds)")

    assert journal.entries == [
        "a elected (transitions 0)",
        "a lost: no renewal for 1s (ha.renew_deadline_seconds)",
    ]
