"""An ingest replica's uploads: admitted against the root's open round, checked, spooled, claimed, then folded.

:class:`IngestUploads` is what the replica's SendLocalTaskResults receives into
(:class:`~fedagg.server.upload.UploadTarget`, through the standalone server's own receiver), so an upload is decoded,
checked against the round's model and the plan's limits (:class:`~fedagg.federation.intake.UploadIntake`) and
answered exactly as a standalone fedagg answers it. What differs is the commit (:mod:`fedagg.tier.ingest_round`'s
order): the sealed upload is moved into the round's spool (durable), then claimed at the root, and only a granted
claim lets it be folded into the round's partial and acknowledged.

* Claim taken by another replica: this copy is deleted and the upload answered OK as a duplicate.
* FAILED_PRECONDITION from the root (the round is not open there, the task is not the collaborator's): the copy
  is deleted and the upload answered OK as ignored. The root's message names the reason when it begins with one
  (``not_assigned: ...``, an :class:`~fedagg.federation.intake.IgnoreReason`); otherwise it counts as not assigned.
* The root unreachable (or refusing the replica itself): UNAVAILABLE naming the root; the copy stays spooled,
  unclaimed, and is replaced by the collaborator's retry (or claimed at the replica's next recovery).

Before the replica knows the root's round, and for a later round than the replica's (the root opened it, the
replica is about to), uploads are answered UNAVAILABLE; uploads for an earlier round, for a task not in the plan,
for a round the root is collecting, or already folded here are ignored as a single pod ignores them. A rejected upload is answered as a single pod answers it; it is not claimed (the root sees its collaborator
as not having delivered).

Threads: :meth:`IngestUploads.admit` and :meth:`IngestUploads.install` run on the event loop, ``open_intake``,
``absorb`` and ``seal`` on the I/O executor, :meth:`IngestUploads.commit` on the one-thread commit executor (which
therefore serialises the spool's sequence and the partial's folds; it waits there for the claim, which runs on the
event loop). ``_lock`` guards ``_round``, ``_finished``, ``_folded`` and ``_unclaimed``; it is never held across I/O
or a wait.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedagg.federation.contribution import Contribution, ContributionRejected
from fedagg.federation.intake import Admission, IgnoreReason, UploadIntake
from fedagg.federation.own_results import HeldUpload
from fedagg.federation.plan import FederationPlan, ResolvedLimits
from fedagg.federation.spool import Spool, SpoolEntry
from fedagg.federation.upload_commits import Outcome
from fedagg.protocol.model_file import LoadedModel
from fedagg.protocol.results import ResultsHeader
from fedagg.server.errors import Unavailable
from fedagg.tier.ingest_round import IngestRound
from fedagg.tier.root_link import RootUnreachable, TierRefusal

log = logging.getLogger(__name__)

Claim = Callable[[str, int, str, str], Coroutine[Any, Any, bool]]
"""(collaborator, round, task, rejected) -> whether the root granted this replica the claim (raises as RootLink
does); ``rejected`` ("<reason>: <why>") reports an upload this replica rejected, counted as done at the root."""
Key = tuple[str, str]
"""(collaborator, task) of the round."""


@dataclass
class ReplicaRound:
    """The round the replica takes uploads for, with its model. ``collecting``, ``folded`` (acknowledged here),
    ``held`` (those acknowledged since this start, with their spool entries) and ``unclaimed`` (spooled, the root
    not yet heard) are guarded by the lock of the :class:`IngestUploads` that installed it."""

    ingest: IngestRound
    model: LoadedModel
    limits: ResolvedLimits
    """The plan's upload limits, resolved from the round's model (the initial model's shape in a tier)."""
    collecting: bool = False
    folded: set[Key] = field(default_factory=set)
    held: dict[Key, HeldUpload] = field(default_factory=dict)
    unclaimed: dict[Key, SpoolEntry] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.ingest.round_number


def refused_reason(message: str) -> IgnoreReason:
    """The ignore reason a root's FAILED_PRECONDITION message begins with (NOT_ASSIGNED when it names none)."""
    head = message.split(":", 1)[0].strip()
    return IgnoreReason(head) if head in set(IgnoreReason) else IgnoreReason.NOT_ASSIGNED


class IngestUploads:
    """The replica's upload target (module docstring)."""

    def __init__(self, plan: FederationPlan, spool: Spool, claim: Claim, root_address: str) -> None:
        self._plan = plan
        self._spool = spool
        self._claim = claim
        self._root_address = root_address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._round: ReplicaRound | None = None
        self._finished = False

    # The round driver (event loop) ---------------------------------------------------------------------------

    def install(self, round_: ReplicaRound) -> None:
        """Take uploads for ``round_`` from now on (its recovered partial's contributions count as folded)."""
        self._loop = asyncio.get_running_loop()
        round_.folded |= round_.ingest.partial.contributions
        with self._lock:
            self._round, self._finished = round_, False

    def close_round(self, round_number: int) -> None:
        """The root collects ``round_number``: its uploads are ignored from now on (ROUND_CLOSED)."""
        with self._lock:
            if self._round is not None and self._round.number == round_number:
                self._round.collecting = True

    def finish(self) -> None:
        """The experiment has finished: every upload is ignored (FINISHED)."""
        with self._lock:
            self._finished = True

    @property
    def round(self) -> ReplicaRound | None:
        """The round uploads are taken for (or were, while it is collected)."""
        with self._lock:
            return self._round

    def held(self, collaborator: str) -> tuple[ReplicaRound | None, list[HeldUpload], set[str]]:
        """The round, ``collaborator``'s uploads acknowledged in it since this start, and the tasks of all those it
        acknowledged (recovered ones too): what own-results serving looks in (:mod:`fedagg.tier.own_results_holder`)."""
        with self._lock:
            round_ = self._round
            if round_ is None:
                return None, [], set()
            uploads = [upload for (owner, _), upload in round_.held.items() if owner == collaborator]
            return round_, uploads, {task for owner, task in round_.folded if owner == collaborator}

    # UploadTarget --------------------------------------------------------------------------------------------

    def admit(self, collaborator: str, results: ResultsHeader) -> Admission:
        """Decide from an upload's header whether it is taken here (event loop)."""
        admission = Admission(collaborator, results.task_name, results.round_number, results.data_size)
        with self._lock:
            reason, message = self._ignore_reason(admission)
        return admission if reason is None else admission.ignore(reason, message)

    def note_ignored(self, admission: Admission) -> None:
        """An ignored upload: the receiver logged it; the root counts the round's contributions, not the replica."""

    def open_intake(self, admission: Admission) -> UploadIntake:
        """The checks and spool file of an admitted upload. Blocks on the disk."""
        with self._lock:
            round_ = self._round
        assert round_ is not None, "an admitted upload has a round"
        return UploadIntake(admission, round_.model.tensors, round_.limits, self._spool.open())

    def absorb(self, intake: UploadIntake, data: memoryview, offset: int) -> None:
        """Check and spool an admitted upload's next bytes. Blocks on the disk."""
        intake.absorb(data, offset)

    def seal(self, intake: UploadIntake) -> None:
        """Finish the upload's spool file (fsync). Blocks on the disk."""
        intake.seal()

    def commit(self, intake: UploadIntake) -> Outcome:
        """Spool, claim, fold (module docstring); owns ``intake`` and disposes of it. Runs on the commit executor."""
        try:
            return self._commit(intake)
        finally:
            intake.discard()

    # ---------------------------------------------------------------------------------------------------------

    def _ignore_reason(self, admission: Admission) -> tuple[IgnoreReason | None, str]:
        """Why an upload is not taken now (None when it is); ``_lock`` held."""
        round_, task = self._round, admission.task
        if self._finished:
            return IgnoreReason.FINISHED, "the experiment has finished"
        if round_ is None:
            raise Unavailable("this ingest replica has no round from its root yet; send again")
        if task not in self._plan.tasks:
            return (
                IgnoreReason.UNKNOWN_TASK,
                f"TaskResults.task_name {task[:64]!r} is not a task of this plan "
                f"(tasks: {sorted(self._plan.tasks)[:8]})",
            )
        if admission.round_number > round_.number:  # the root opened it; this replica is about to
            raise Unavailable(
                f"this ingest replica has not opened round {admission.round_number} yet (it is at round "
                f"{round_.number}); send again"
            )
        if admission.round_number != round_.number:
            return (
                IgnoreReason.WRONG_ROUND,
                f"results are for round {admission.round_number}, the current round is {round_.number}",
            )
        if round_.collecting:
            return IgnoreReason.ROUND_CLOSED, f"round {round_.number} has closed"
        if (admission.collaborator, task) in round_.folded:
            return (
                IgnoreReason.DUPLICATE,
                f"{admission.collaborator} already sent results for {task!r} in round {round_.number}",
            )
        return None, ""

    def _commit(self, intake: UploadIntake) -> Outcome:
        admission = intake.admission
        with self._lock:
            reason, message = self._ignore_reason(admission)  # the round may have moved since admission
            round_ = self._round
        if reason is not None or round_ is None:
            return Outcome(admission.ignore(reason or IgnoreReason.FINISHED, message))
        contribution = intake.checked()
        if isinstance(contribution, ContributionRejected):
            return self._rejected(round_, admission, contribution)
        assert intake.spool is not None, "an admitted upload is spooled"
        entry = round_.ingest.accept(intake.spool)
        key = (admission.collaborator, admission.task)
        with self._lock:
            older = round_.unclaimed.pop(key, None)
            round_.unclaimed[key] = entry
        if older is not None:  # an earlier copy the root never answered: the retry replaces it
            round_.ingest.drop(older)
        return self._claim_and_fold(round_, entry, admission, contribution)

    def _rejected(
        self, round_: ReplicaRound, admission: Admission, rejection: ContributionRejected
    ) -> Outcome:
        """Report a rejected upload to the root (it counts as done there, as a single pod counts it), then answer
        it OK as rejected; nothing is spooled or folded."""
        log.warning(
            "REJECTED %s's results for %r in round %d (%s): %s",
            admission.collaborator,
            admission.task,
            round_.number,
            rejection.reason,
            rejection.message,
        )
        answer = self._claim_at_root(admission, round_.number, f"{rejection.reason}: {rejection.message}")
        if isinstance(answer, Admission):
            return Outcome(answer)
        return Outcome(admission, rejection.reason, rejection.message)

    def _claim_and_fold(
        self, round_: ReplicaRound, entry: SpoolEntry, admission: Admission, contribution: Contribution
    ) -> Outcome:
        key = (admission.collaborator, admission.task)
        granted = self._claim_at_root(admission, round_.number)
        if isinstance(granted, Admission):
            return self._ignored(round_, entry, granted)
        if not granted:
            message = f"another ingest replica holds {key[0]}'s results for {key[1]!r}"
            return self._ignored(round_, entry, admission.ignore(IgnoreReason.DUPLICATE, message))
        round_.ingest.fold(entry, contribution)
        with self._lock:
            round_.unclaimed.pop(key, None)
            round_.folded.add(key)
            round_.held[key] = HeldUpload(entry, contribution)
        return Outcome(admission)

    def _claim_at_root(self, admission: Admission, round_number: int, rejected: str = "") -> bool | Admission:
        """Claim the upload at the root (or report it rejected): whether this replica holds it, or the admission
        ignored as the root refused it (FAILED_PRECONDITION, its reason from the message); raises
        :class:`Unavailable` when the root did not answer (a spooled copy stays, replaced by the retry)."""
        try:
            return self._claimed(admission.collaborator, admission.task, round_number, rejected)
        except (RootUnreachable, TierRefusal) as error:
            if not isinstance(error, TierRefusal) or error.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise Unavailable(
                    f"the root {self._root_address} did not take the claim ({error}); send the upload again"
                ) from None
            reason = refused_reason(str(error).split(": ", 1)[-1])
            return admission.ignore(reason, f"the root refused the claim: {error}")

    def _claimed(self, collaborator: str, task: str, round_number: int, rejected: str = "") -> bool:
        """The claim, made on the event loop; this (commit) thread waits for it."""
        assert self._loop is not None, "a round was installed on the event loop"
        claim = self._claim(collaborator, round_number, task, rejected)
        return asyncio.run_coroutine_threadsafe(claim, self._loop).result()

    def _ignored(self, round_: ReplicaRound, entry: SpoolEntry, admission: Admission) -> Outcome:
        """Delete the copy of an upload the root did not let this replica claim; answer it as ignored."""
        key = (admission.collaborator, admission.task)
        with self._lock:
            if round_.unclaimed.get(key) == entry:
                del round_.unclaimed[key]
        round_.ingest.drop(entry)
        log.warning("ignoring %s's results for %r: %s", key[0], key[1][:64], admission.message)
        return Outcome(admission)
