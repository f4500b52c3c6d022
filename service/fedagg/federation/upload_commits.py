"""Upload commits: an arrived upload made durable and recorded for its round (accepted, or rejected with a reason).

The commit rules: an upload is checked against the round's model and the plan while it arrives, then made durable
and recorded, and only then acknowledged. A disk error on the way is reported through :class:`StorageGuard` and
answered UNAVAILABLE (the collaborator retries).

An :class:`~fedagg.federation.intake.UploadIntake` is a single-owner object: owned by the upload's receiver until it
is handed to :meth:`UploadCommits.commit`; the commit owns it from then on and always disposes of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedagg.failpoints import failpoint
from fedagg.federation.contribution import ContributionRejected, RejectionReason
from fedagg.federation.intake import Admission, IgnoreReason, UploadIntake, ignore_reason
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.memory import trim_heap
from fedagg.federation.metric_names import MetricNames
from fedagg.federation.plan import FederationPlan
from fedagg.federation.progress_health import StorageGuard
from fedagg.federation.round_ends import RoundEnds
from fedagg.federation.rounds import AcceptedUpload, RejectedUpload, Round
from fedagg.federation.store import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What became of an upload: used, ignored (``ignored``) or excluded (``rejected``); always answered OK."""

    admission: Admission
    rejected: RejectionReason | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the upload was recorded for the round."""
        return self.admission.accepted and self.rejected is None


class UploadCommits:
    """Receives admitted uploads into the spool and records them in the round in progress.

    :meth:`open_intake`, :meth:`absorb` and :meth:`seal` run on the upload's I/O thread; :meth:`commit` with the
    federation's commit lock held.
    """

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        ledger: RoundLedger,
        round_ends: RoundEnds,
        names: MetricNames,
    ) -> None:
        self._plan = plan
        self._store = store
        self._ledger = ledger
        self._round_ends = round_ends
        self._names = names
        self._metrics = round_ends.metrics
        self._health = round_ends.health
        self._listener = round_ends.listener

    def open_intake(self, admission: Admission) -> UploadIntake:
        """The checks (and spool file) for an admitted upload; owned by the caller until :meth:`commit`."""
        round_ = self._ledger.current_round()
        if round_ is None:
            return UploadIntake(admission, {}, self._plan.limits.resolve(0))
        with StorageGuard(
            self._health, "spool", proves_writable=False
        ):  # creating a file succeeds on a full disk
            spool = self._store.spool.open()
        return UploadIntake(admission, round_.model.tensors, round_.limits, spool)

    def absorb(self, intake: UploadIntake, data: memoryview, offset: int) -> None:
        """Check and spool an admitted upload's next bytes."""
        with StorageGuard(
            self._health, "spool", proves_writable=False
        ):  # buffered: only the seal proves the disk
            intake.absorb(data, offset)

    def seal(self, intake: UploadIntake) -> None:
        """Finish an upload's spool file (fsync) once it has arrived whole."""
        with StorageGuard(self._health, "spool"):
            intake.seal()

    def commit(self, intake: UploadIntake) -> Outcome:
        """Record ``intake``'s upload durably (accepted, rejected or ignored), then close the round if that made it
        due. Owns ``intake`` from the call on: it is disposed of on every path, failures included."""
        try:
            outcome = self._record(intake)
        finally:
            intake.discard()
        trim_heap()  # what receiving the upload freed: before the next uploads or the aggregation allocate
        round_ = self._ledger.current_round()
        if round_ is not None:
            round_.model.release()  # the pages a delta's checks touched
        if outcome.admission.accepted and round_ is not None:
            self._round_ends.fold_arrivals()
            self._round_ends.close_if_due(round_)
        return outcome

    def _record(self, intake: UploadIntake) -> Outcome:
        admission = intake.admission
        ledger = self._ledger
        with ledger.round_lock:
            round_ = ledger.round
            reason, message = ignore_reason(self._plan.tasks, round_, admission)
            sequence = round_.next_sequence() if round_ is not None and reason is None else 0
        if round_ is None or reason is not None:
            reason = reason or IgnoreReason.FINISHED
            self._listener.contribution_ignored(admission.collaborator, admission.task, str(reason))
            return Outcome(admission.ignore(reason, message))
        contribution = intake.checked()
        if isinstance(contribution, ContributionRejected):
            return self._record_rejection(round_, admission, contribution, sequence)
        spool = intake.spool
        digest = intake.digest
        assert spool is not None, "an accepted upload was spooled"
        assert digest is not None, "an accepted upload was sealed before its commit"
        with StorageGuard(self._health, "spool"):
            entry = self._store.spool.accept(spool, round_.number, sequence)
        failpoint("upload.committed")
        accepted = self._names.bounded(AcceptedUpload(contribution, entry, digest))
        with ledger.round_lock:
            round_.record(admission.collaborator, admission.task, accepted)
        self._metrics.extend(accepted.metric_records())
        self._listener.contribution_accepted(
            admission.collaborator, admission.task, round_.number, digest.size
        )
        return Outcome(admission)

    def _record_rejection(
        self, round_: Round, admission: Admission, rejection: ContributionRejected, sequence: int
    ) -> Outcome:
        body = {
            "collaborator": admission.collaborator,
            "task": admission.task,
            "round": round_.number,
            "reason": str(rejection.reason),
            "message": rejection.message,
        }
        with StorageGuard(self._health, "rejection"):
            entry = self._store.spool.record_rejection(round_.number, sequence, body)
        rejected = RejectedUpload(
            admission.collaborator, admission.task, rejection.reason, rejection.message, entry
        )
        with self._ledger.round_lock:
            round_.record(admission.collaborator, admission.task, rejected)
        log.warning(
            "REJECTED %s's results for %r in round %d (%s): %s; they are excluded from the round",
            admission.collaborator,
            admission.task,
            round_.number,
            rejection.reason,
            rejection.message,
        )
        self._listener.contribution_rejected(admission.collaborator, admission.task, str(rejection.reason))
        return Outcome(admission, rejection.reason, rejection.message)
