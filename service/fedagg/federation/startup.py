"""Start-up orchestration: restore the newest verified state, install it, replay the spool, close what is due.

:class:`~fedagg.federation.recovery.StateRecovery` finds the state to resume from (or starts from the initial model);
its round's acknowledged uploads are then replayed from the spool (:mod:`fedagg.federation.replay`) through the
checks they passed, and a round whose close was decided (or is due) before the restart closes again, round after
round, until one is still open.
"""

from __future__ import annotations

import logging

from fedagg.federation.integrity import FileDigest
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.metric_log import MetricLog
from fedagg.federation.metric_names import MetricNames
from fedagg.federation.plan import FederationPlan
from fedagg.federation.recovery import StateRecovery
from fedagg.federation.replay import Admit, SpoolReplay
from fedagg.federation.round_close import ModelOutputs
from fedagg.federation.round_ends import RoundEnds
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import LoadedModel

log = logging.getLogger(__name__)


class StartUp:
    """Restores a federation once (module docstring). Called with the federation's commit lock held.

    Holds the initial model only until :meth:`restore` has run: its pages are not needed again.
    """

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        outputs: ModelOutputs,
        initial_model: LoadedModel | None,
        initial_model_digest: FileDigest | None,
    ) -> None:
        self._plan = plan
        self._store = store
        self._outputs = outputs
        self._initial_model = initial_model
        self._initial_model_digest = initial_model_digest

    def restore(
        self, ledger: RoundLedger, round_ends: RoundEnds, metrics: MetricLog, names: MetricNames, admit: Admit
    ) -> None:
        """Resume from the newest verified state (or the initial model), replay the spool and mark ``ledger``
        restored; ``admit`` decides on each replayed upload as if it arrived now, ``names`` bounds its metrics as
        its commit did."""
        self._store.prepare()
        recovery = StateRecovery(
            self._plan, self._store, self._outputs, self._initial_model, self._initial_model_digest
        )
        state = recovery.recover()
        metrics.extend(state.history)
        names.note(state.history)
        round_ends.install(state.checkpoint, state.models)
        while (round_ := ledger.current_round()) is not None:
            replayed = self._replay(round_, ledger, metrics, names, admit)
            if replayed:
                log.info("replayed %d acknowledged upload(s) of round %d", replayed, round_.number)
            if not round_ends.close_if_due(round_):
                break
        self._initial_model = None
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
