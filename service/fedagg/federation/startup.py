"""Start-up orchestration: restore the newest verified state, install it, replay the spool, close what is due.

:class:`~fedagg.federation.recovery.StateRecovery` finds the state to resume from (or starts from the initial model);
its round's acknowledged uploads are then replayed from the spool (:mod:`fedagg.federation.replay`) through the
checks they passed, and a round whose close was decided (or is due) before the restart closes again, round after
round, until one is still open.
"""

from __future__ import annotations

import logging

from fedagg.federation.ledger import RoundLedger
from fedagg.federation.metric_log import MetricLog
from fedagg.federation.metric_names import MetricNames
from fedagg.federation.recovery import StateRecovery
from fedagg.federation.replay import Admit, SpoolReplay
from fedagg.federation.round_ends import RoundEnds
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.store import StateStore

log = logging.getLogger(__name__)


class StartUp:
    """Restores a federation (module docstring). Called with the federation's commit lock held.

    Holds ``recovery`` (and with it the initial model) only until :meth:`restore` has run: its pages are not needed
    again.
    """

    def __init__(self, store: StateStore, recovery: StateRecovery) -> None:
        self._store = store
        self._recovery: StateRecovery | None = recovery

    def restore(
        self, ledger: RoundLedger, round_ends: RoundEnds, metrics: MetricLog, names: MetricNames, admit: Admit
    ) -> None:
        """Resume from the newest verified state (or the initial model), replay the spool and mark ``ledger``
        restored; ``admit`` decides on each replayed upload as if it arrived now, ``names`` bounds its metrics as
        its commit did."""
        assert self._recovery is not None, "a federation is restored once"
        self._store.prepare()
        state = self._recovery.recover()
        self._recovery = None
        metrics.extend(state.history)
        names.note(state.history)
        round_ends.install(state.checkpoint, state.models)
        while (round_ := ledger.current_round()) is not None:
            replayed = self._replay(round_, ledger, metrics, names, admit)
            if replayed:
                log.info("replayed %d acknowledged upload(s) of round %d", replayed, round_.number)
                round_ends.fold_arrivals()
            if not round_ends.close_if_due(round_):
                break
        with ledger.round_lock:
            ledger.restored = True

    def _replay(
        self, round_: Round, ledger: RoundLedger, metrics: MetricLog, names: MetricNames, admit: Admit
    ) -> int:
        replay = SpoolReplay(self._store, admit)
        replayed = 0
        for collaborator, task, replayed_receipt in replay.receipts(round_):
            receipt = (
                names.bounded(replayed_receipt)
                if isinstance(replayed_receipt, AcceptedUpload)
                else replayed_receipt
            )
            with ledger.round_lock:
                round_.record(collaborator, task, receipt)
            if isinstance(receipt, AcceptedUpload):
                metrics.extend(receipt.metric_records())
            replayed += 1
        decision = replay.decision(round_)
        with ledger.round_lock:
            round_.decision = decision
        return replayed
