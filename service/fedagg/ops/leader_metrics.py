"""Leader-election metrics: which replica leads, and how often the lead changed hands.

``fedagg_leader{identity}`` is one series per process (its own identity), 1 while it leads; the sum over replicas
is the number of leaders (alert when it stays 0). ``fedagg_leader_transitions_total`` counts the takeovers this
replica saw happen on the lease (its own included: increases of the lease's ``leaseTransitions`` since it first
read it); ``fedagg_lease_transitions`` is ``leaseTransitions`` itself (the term) as last read. Updated on the
election thread only; read from others (an int's update is atomic under the GIL, prometheus-client metrics are
thread-safe).
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
            "Takeovers of the lease seen by this replica (its own included).",
            registry=registry,
        )
        self._term = Gauge(
            "fedagg_lease_transitions",
            "The lease's leaseTransitions (the term) as last read.",
            registry=registry,
        )
        self._seen_term: int | None = None
        self.transitions_seen = 0
        """What ``fedagg_leader_transitions_total`` counts (read by ``fedagg status --ops``)."""

    def leading(self, leads: bool) -> None:
        """This replica started or stopped leading."""
        self._leader.set(1 if leads else 0)

    def observed(self, record: LeaseRecord) -> None:
        """A new version of the lease was read or written."""
        if self._seen_term is not None and record.transitions > self._seen_term:
            self._transitions.inc(record.transitions - self._seen_term)
            self.transitions_seen += record.transitions - self._seen_term
        self._seen_term = record.transitions
        self._term.set(record.transitions)
