"""Lease stores: one conformance suite every store passes, run against real servers where the behaviour is real.

* etcd (a real etcd 3.4 server on loopback) runs the whole suite: it assigns revisions and refuses stale writes.
* kmock 0.8 runs only what it enforces: a read of a missing Lease (404), a create and its read-back, and a second
  create refused (409). It assigns no ``resourceVersion`` (every version reads back empty), does not implement a
  replace (PUT answers 404 "Endpoint Not Found") and applies a PATCH without any check; so the Kubernetes store's
  replace and its conflicts are NOT tested here: the API server's own resourceVersion check is what they rely on
  (the election itself is tested against etcd, test_election.py).
"""

from __future__ import annotations

import datetime
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from fedagg.ops.etcd_lease import EtcdLeaseRecords
from fedagg.ops.kube_lease import KubernetesLeaseRecords
from fedagg.ops.lease import LeaseConflict, LeaseRecord, LeaseRecords, LeaseStoreError
from tests.support.conformance import subclasses, untested_musts
from tests.support.etcd import etcd_fixture  # noqa: F401 - the fixture etcd
from tests.support.kube import NAMESPACE, kubernetes_api, silent_server

MOMENT = datetime.datetime(2026, 12, 7, 14, 0, 0, 123456, tzinfo=datetime.UTC)
RECORD = LeaseRecord("replica-a", 15, MOMENT, MOMENT + datetime.timedelta(seconds=2), 3)
TIMEOUT = 5.0


def renewed(record: LeaseRecord, holder: str = "") -> LeaseRecord:
    later = record.renewed + datetime.timedelta(seconds=2)
    return LeaseRecord(
        holder or record.holder, record.lease_seconds, record.acquired, later, record.transitions
    )


class CreateReadConformance(ABC):
    """What every store does, kmock's emulation included."""

    store: type[LeaseRecords]

    @abstractmethod
    @pytest.fixture
    def records(self, tmp_path: Path) -> Iterator[LeaseRecords]:
        """A store with no record in it."""

    @abstractmethod
    def unreachable(self, url: str) -> LeaseRecords:
        """The same kind of store, pointed at ``url`` (a server that never answers)."""

    def test_missing_record(self, records: LeaseRecords) -> None:
        """LeaseRecords.read: It MUST return None when no record exists."""
        assert records.read(TIMEOUT) is None

    def test_created_record_reads_back(self, records: LeaseRecords) -> None:
        """LeaseRecords.read: It MUST return the record as last written, field for field. Two reads with no write
        between them MUST return the same version."""
        records.create(RECORD, TIMEOUT)

        first, second = records.read(TIMEOUT), records.read(TIMEOUT)

        assert first is not None
        assert second is not None
        assert first[0] == RECORD
        assert first[1] == second[1]

    def test_second_create_conflicts(self, records: LeaseRecords) -> None:
        """LeaseRecords.create: It MUST raise LeaseConflict when a record exists, and leave that record
        unchanged."""
        records.create(RECORD, TIMEOUT)

        with pytest.raises(LeaseConflict):
            records.create(renewed(RECORD, "replica-b"), TIMEOUT)

        found = records.read(TIMEOUT)
        assert found is not None
        assert found[0] == RECORD

    def test_unreachable_store(self) -> None:
        """LeaseRecords.read: An unreachable store MUST raise LeaseStoreError within the timeout."""
        with silent_server() as url, pytest.raises(LeaseStoreError):
            self.unreachable(url).read(0.5)


class SwapConformance(CreateReadConformance):
    """Compare-and-swap: what a store needs to elect safely (kmock 0.8 cannot show it)."""

    def test_replace_over_the_version_read(self, records: LeaseRecords) -> None:
        """LeaseRecords.replace: It MUST store the record when the stored version equals the expected version,
        and return a version that differs from the one replaced."""
        version = records.create(RECORD, TIMEOUT)

        new_version = records.replace(renewed(RECORD), version, TIMEOUT)

        assert new_version != version
        assert records.read(TIMEOUT) == (renewed(RECORD), new_version)

    def test_stale_replace_conflicts(self, records: LeaseRecords) -> None:
        """LeaseRecords.replace: It MUST raise LeaseConflict when the stored version differs (another writer came
        first), and leave the stored record unchanged."""
        version = records.create(RECORD, TIMEOUT)
        current = records.replace(renewed(RECORD), version, TIMEOUT)

        with pytest.raises(LeaseConflict):
            records.replace(renewed(RECORD, "replica-b"), version, TIMEOUT)

        assert records.read(TIMEOUT) == (renewed(RECORD), current)

    def test_one_of_two_writers_wins(self, records: LeaseRecords) -> None:
        """LeaseRecords.replace: Of two writers replacing the same version, exactly one MUST succeed."""
        version = records.create(RECORD, TIMEOUT)
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def write(holder: str) -> None:
            barrier.wait()
            try:
                records.replace(renewed(RECORD, holder), version, TIMEOUT)
                outcomes[holder] = "stored"
            except LeaseConflict:
                outcomes[holder] = "conflict"

        threads = [threading.Thread(target=write, args=(holder,)) for holder in ("replica-b", "replica-c")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert sorted(outcomes.values()) == ["conflict", "stored"]
        winner = next(holder for holder, outcome in outcomes.items() if outcome == "stored")
        found = records.read(TIMEOUT)
        assert found is not None
        assert found[0].holder == winner


class TestEtcd(SwapConformance):
    store = EtcdLeaseRecords

    @pytest.fixture
    def records(self, etcd: str, request: pytest.FixtureRequest) -> LeaseRecords:
        return EtcdLeaseRecords(request.node.name, etcd)  # a key of its own per test

    def unreachable(self, url: str) -> LeaseRecords:
        return EtcdLeaseRecords("fedagg", url)


class TestKubernetesOnKmock(CreateReadConformance):
    store = KubernetesLeaseRecords

    @pytest.fixture
    def records(self, tmp_path: Path) -> Iterator[LeaseRecords]:
        with kubernetes_api() as api:
            yield KubernetesLeaseRecords("fedagg", NAMESPACE, api.configuration())

    def unreachable(self, url: str) -> LeaseRecords:
        return KubernetesLeaseRecords("fedagg", NAMESPACE, lambda: k8s.Configuration(host=url))


def test_every_store_has_a_suite() -> None:
    suites = [cls for cls in subclasses(CreateReadConformance) if cls.__name__.startswith("Test")]

    assert {suite.store for suite in suites} == set(subclasses(LeaseRecords))


def test_every_must_is_tested() -> None:
    assert untested_musts([LeaseRecords], [CreateReadConformance, SwapConformance]) == []
