"""The federation's in-memory state as request handlers read it, and the round lock that guards it."""

from __future__ import annotations

import threading

from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.rounds import Round


class RoundLedger:
    """The committed checkpoint, the round in progress and what the aggregators report as of that checkpoint.

    ``round_lock`` guards :attr:`committed`, :attr:`round` (and the Round's fields), :attr:`figures` and
    :attr:`restored`. Anyone may read them under it; only the holder of the federation's commit lock replaces them.
    It is never held across I/O or a listener call, so request handlers on the event loop may take it. Lock order:
    the commit lock, then this one, then the TensorServer's and the MetricLog's own locks.
    """

    def __init__(self) -> None:
        self.round_lock = threading.Lock()
        self.committed: Checkpoint | None = None
        self.round: Round | None = None
        self.figures: dict[str, dict[str, float]] = {}
        self.restored = False

    def checkpoint(self) -> Checkpoint:
        """The committed checkpoint (call with ``round_lock`` held); raise before the state is restored."""
        if self.committed is None:
            raise FailedPrecondition("the federation state has not been restored yet")
        return self.committed

    def current_round(self) -> Round | None:
        """The round in progress (None once the experiment has finished, or before it is restored)."""
        with self.round_lock:
            return self.round
