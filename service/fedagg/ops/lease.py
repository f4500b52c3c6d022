"""The lease a leader election runs on: one record in a store that compares and swaps (the plug-in ABC).

The record carries what a ``coordination.k8s.io/v1`` Lease carries (holder, duration, acquire and renew times,
transitions). Stores: :mod:`fedagg.ops.kube_lease` (a Kubernetes Lease, version = ``metadata.resourceVersion``)
and :mod:`fedagg.ops.etcd_lease` (a key in etcd v3, version = the key's ``mod_revision``). Every store passes
``tests/unit/test_lease_conformance.py``'s shared suite.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from dataclasses import dataclass


class LeaseConflict(Exception):
    """The store refused a create or replace: the record changed (or appeared) since it was read."""


class LeaseStoreError(Exception):
    """The store could not be asked (unreachable, refused, timed out, malformed answer)."""


@dataclass(frozen=True)
class LeaseRecord:
    """Who leads, since when, and when it last said so (wall-clock times: only ever shown, never compared)."""

    holder: str
    lease_seconds: int
    acquired: datetime.datetime
    renewed: datetime.datetime
    transitions: int

    @property
    def vacant(self) -> bool:
        """Released by its last holder (a clean exit): anyone may take it at once."""
        return not self.holder


class LeaseRecords(ABC):
    """One named lease record with compare-and-swap. Thread-safe: the election calls it from its own thread.

    Every method gives up within ``timeout`` seconds and raises :class:`LeaseStoreError` for any failure other
    than a conflict (unreachable, refused, timed out, malformed answer).
    """

    @abstractmethod
    def read(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        """The stored record and its version, or None.

        It MUST return None when no record exists. It MUST return the record as last written, field for field.
        Two reads with no write between them MUST return the same version. An unreachable store MUST raise
        LeaseStoreError within the timeout.
        """

    @abstractmethod
    def create(self, record: LeaseRecord, timeout: float) -> str:
        """Store the first record; return its version.

        It MUST raise LeaseConflict when a record exists, and leave that record unchanged.
        """

    @abstractmethod
    def replace(self, record: LeaseRecord, expected_version: str, timeout: float) -> str:
        """Store ``record`` over the version read; return the new version.

        It MUST store the record when the stored version equals the expected version, and return a version
        that differs from the one replaced. It MUST raise LeaseConflict when the stored version differs (another
        writer came first), and leave the stored record unchanged. Of two writers replacing the same version,
        exactly one MUST succeed.
        """

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the lease is, for logs ("Lease federation/fedagg", "etcd key /fedagg/leases/fedagg at ...")."""


def utc_now() -> datetime.datetime:
    """The wall-clock time written into records."""
    return datetime.datetime.now(datetime.UTC)
