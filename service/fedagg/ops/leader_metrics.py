"""Leader-election metrics: which replica leads, and how often the lead changed hands.

``fedagg_leader{identity}`` is one series per process (its own identity), 1 while it leads; the sum over replicas
is the number of leaders (alert when it stays 0). ``fedagg_leader_transitions_total`` counts the changes of holder
this replica saw on the lease (its own takeover included); ``fedagg_lease_transitions`` is the lease's own
``leaseTransitions`` (the term) as last read. Thread-safe (prometheus-client metrics are).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from fedagg.ops.lease import LeaseRecord


class LeaderMetrics:
    """The election's metrics for one replica."""

    def __init__(self, registry: CollectorRegistry, identity: str) -> None:
        self._leader = Gauge(
            "fedagg_leader",
            "1 while this replica leads (holds the lease and the state lock).",
            ["identity"],
            registry=registry,
        ).labels(identity)
        self._leader.set(0)
        self._transitions = Counter(
            "fedagg_leader_transitions",
            "Changes of the lease's holder seen by this replica.",
            registry=registry,
        )
        self._term = Gauge(
            "fedagg_lease_transitions",
            "The lease's leaseTransitions (the term) as last read.",
            registry=registry,
        )
        self._holder = ""

    def leading(self, leads: bool) -> None:
        """This replica started or stopped leading."""
        self._leader.set(1 if leads else 0)

    def observed(self, record: LeaseRecord) -> None:
        """A new version of the lease was read or written."""
        self._term.set(record.transitions)
        if record.holder and record.holder != self._holder:
            if self._holder:
                self._transitions.inc()
            self._holder = record.holder
