"""The Prometheus metrics of the scale-out tier (``fedagg_tier_*``), fed by :class:`~fedagg.tier.events.TierListener`
events: per ingest replica its claims, claim latency and partials sent; at the root the partials and bytes it
collected per replica and the contributions lost with lost replicas."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from fedagg.tier.events import TierListener

CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, float("inf"))


class TierMetrics(TierListener):
    """Counters and histograms of the tier. Thread-safe (prometheus-client's metrics are)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.claims = Counter(
            "fedagg_tier_claims",
            "Claims this ingest replica made at the root, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.claim_seconds = Histogram(
            "fedagg_tier_claim_seconds",
            "From a claim sent to its answer (ingest replica).",
            buckets=CLAIM_BUCKETS,
            registry=registry,
        )
        self.partials_sent = Counter(
            "fedagg_tier_partials_sent",
            "Partials this ingest replica delivered to the root.",
            registry=registry,
        )
        self.partial_bytes_sent = Counter(
            "fedagg_tier_partial_bytes_sent",
            "Bytes of sums this ingest replica delivered.",
            registry=registry,
        )
        self.partials_collected = Counter(
            "fedagg_tier_partials_collected",
            "New partials the root kept, by replica.",
            ["replica"],
            registry=registry,
        )
        self.partial_bytes_received = Counter(
            "fedagg_tier_partial_bytes_received",
            "Bytes of sums the root kept, by replica.",
            ["replica"],
            registry=registry,
        )
        self.lost_contributions = Counter(
            "fedagg_tier_lost_contributions",
            "Claimed contributions of lost replicas made stragglers, by replica.",
            ["replica"],
            registry=registry,
        )
        for outcome in ("granted", "taken"):
            self.claims.labels(outcome)

    def claimed(self, granted: bool, seconds: float) -> None:
        self.claims.labels("granted" if granted else "taken").inc()
        self.claim_seconds.observe(seconds)

    def partial_sent(self, round_number: int, sent_bytes: int) -> None:
        self.partials_sent.inc()
        self.partial_bytes_sent.inc(sent_bytes)

    def partial_collected(self, replica: str, received_bytes: int) -> None:
        self.partials_collected.labels(replica).inc()
        self.partial_bytes_received.labels(replica).inc(received_bytes)

    def contributions_lost(self, replica: str, count: int) -> None:
        self.lost_contributions.labels(replica).inc(count)
