"""What happens in the tier, for metrics: a listener with no-op defaults (:mod:`fedagg.ops.tier_metrics` counts).

Listener methods are called from the event loop; they MUST NOT block or raise.
"""

from __future__ import annotations


class TierListener:
    """Tier events (every method a no-op here)."""

    def claimed(self, granted: bool, seconds: float) -> None:
        """An ingest replica's claim was answered (granted or taken elsewhere) after ``seconds``."""

    def partial_sent(self, round_number: int, sent_bytes: int) -> None:
        """An ingest replica delivered its partial of a round (``sent_bytes`` of sums)."""

    def partial_collected(self, replica: str, received_bytes: int) -> None:
        """The root kept a new partial from ``replica``."""

    def contributions_lost(self, replica: str, count: int) -> None:
        """The root gave up on a lost replica: ``count`` claimed contributions become stragglers."""
