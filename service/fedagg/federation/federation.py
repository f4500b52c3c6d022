"""The federation: OpenFL's aggregator semantics (spec §3) as a thread-safe, network-free state machine.

Who calls what, and from where:

* request handlers, on the event loop, without I/O: :meth:`Federation.get_tasks`, :meth:`Federation.admit`,
  :meth:`Federation.describe` and the read-only properties;
* executor threads, because they touch the disk: :meth:`Federation.open_intake` and
  :meth:`Federation.served_tensor` (I/O executor), and every durable transition, :meth:`Federation.restore`,
  :meth:`Federation.commit`, :meth:`Federation.record_quit` and :meth:`Federation.tick` (commit executor).

The commit rules:

* an upload is checked against the round's model and the plan while it arrives, then made durable and recorded
  (accepted, or rejected with a reason), and only then acknowledged;
* a collaborator's uploads count once all its tasks of the round are in, and a round aggregates only the
  collaborators its close decision names as done: stragglers never enter the sums;
* a round end is a transaction (:mod:`fedagg.federation.round_close`): it commits with its checkpoint, or leaves
  the round closing and is retried with back-off while the federation reports itself unhealthy;
* a quit job is made durable before it is handed out, serialised with round ends, so checkpoints only move
  forward.

Locks (order: ``_commit_lock``, then ``_round_lock``; the TensorServer's and MetricLog's own locks come after):

* ``_commit_lock`` serialises every durable transition (restore, commits, round ends, quit records, ticks). It is
  held across disk I/O, so it is only ever taken off the event loop.
* ``_round_lock`` guards ``_committed``, ``_round`` (and the Round's fields), ``_figures`` (the aggregators' reports
  as of ``_committed``), ``_restored`` and ``_contacts``. It is
  never held across I/O or a listener call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedagg.failpoints import failpoint
from fedagg.federation.assigner import make_assigner
from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.contribution import ContributionRejected, RejectionReason
from fedagg.federation.errors import FailedPrecondition, NotFound, PermissionDenied, StorageUnavailable
from fedagg.federation.events import ExperimentStatus, FederationListener, RoundSummary
from fedagg.federation.intake import Admission, IgnoreReason, UploadIntake, ignore_reason
from fedagg.federation.integrity import CorruptFile, FileDigest
from fedagg.federation.memory import trim_heap
from fedagg.federation.metric_log import MetricLog
from fedagg.federation.plan import FederationPlan, TaskSpec
from fedagg.federation.progress_health import FederationHealth, describe_os_error
from fedagg.federation.recovery import StateRecovery
from fedagg.federation.replay import SpoolReplay
from fedagg.federation.round_close import ClosedRound, ModelOutputs, RoundCloser
from fedagg.federation.rounds import AcceptedUpload, CloseDecision, RejectedUpload, Round
from fedagg.federation.serving import ServedTensor, TensorRequest, TensorServer, own_tensor, tensor_owner
from fedagg.federation.sources import DeltaOnBase, ModelValues, SpooledValues
from fedagg.federation.status import Contact, Contacts, experiment_status, restoring_status
from fedagg.federation.store import StateStore
from fedagg.federation.stragglers import make_straggler_policy
from fedagg.protocol.codec import COMPRESSED
from fedagg.protocol.model_file import LoadedModel
from fedagg.protocol.results import ResultsHeader

__all__ = ["Admission", "Federation", "ModelOutputs", "Outcome", "TaskReply"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskReply:
    """The answer to GetTasks: tasks, or a sleep, or quit (exclusive, in that priority: quit > sleep > tasks).

    A quit job must be recorded (:meth:`Federation.record_quit`) before it is sent when ``quit_recorded`` is
    False.
    """

    round_number: int
    tasks: tuple[TaskSpec, ...] = ()
    sleep_seconds: int = 0
    quit: bool = False
    quit_recorded: bool = True


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


class Federation:
    """Rounds, tasks, aggregation and durable state for one experiment."""

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        outputs: ModelOutputs,
        *,
        initial_model: LoadedModel | None = None,
        initial_model_digest: FileDigest | None = None,
        listener: FederationListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.metrics = MetricLog()
        self._store = store
        self._outputs = outputs
        self._initial_model = initial_model
        self._initial_model_digest = initial_model_digest
        self._listener = listener or FederationListener()
        self._clock = clock
        store.on_quarantine = self._listener.state_file_quarantined
        self.health = FederationHealth(self._listener, clock)
        self._assigner = make_assigner(plan.assigner, plan.collaborators)
        self._policy = make_straggler_policy(plan.stragglers)
        self._closer = RoundCloser(plan, store, outputs, self.health, self._listener, clock)
        self._serving = TensorServer()
        self._commit_lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._committed: Checkpoint | None = None
        self._round: Round | None = None
        self._figures: dict[str, dict[str, float]] = {}
        self._restored = False
        self._progress: list[Callable[[], None]] = []
        self._contacts: dict[str, Contact] = {}

    # Start-up -----------------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Resume from the newest verified state (or start from the initial model) and replay the spool."""
        with self._commit_lock:
            self._store.prepare()
            recovery = StateRecovery(
                self.plan, self._store, self._outputs, self._initial_model, self._initial_model_digest
            )
            state = recovery.recover()
            self.metrics.extend(state.history)
            self._install(state.checkpoint, state.models)
            while (round_ := self._current_round_or_none()) is not None:
                replayed = self._replay(round_)
                if replayed:
                    log.info("replayed %d acknowledged upload(s) of round %d", replayed, round_.number)
                if not self._close_if_due(round_):
                    break
            self._initial_model = None  # its pages are not needed again
            with self._round_lock:
                self._restored = True

    def _install(self, checkpoint: Checkpoint, models: dict[int, LoadedModel]) -> None:
        """Make ``checkpoint`` the committed state, serving ``models``; opens its round unless finished."""
        finished = checkpoint.round_number >= self.plan.rounds_to_train
        round_ = None if finished else self._new_round(models[checkpoint.round_number])
        self._closer.aggregators.load(checkpoint.aggregation)
        figures = self._closer.aggregators.reports()
        with self._round_lock:
            self._committed = checkpoint
            self._round = round_
            self._figures = figures
        self._serving.install(models, self._deltas(checkpoint.round_number, models), checkpoint.round_number)
        if finished:
            self.metrics.close()
        self._made_progress()

    def _deltas(self, number: int, models: dict[int, LoadedModel]) -> dict[int, LoadedModel]:
        """Round ``number``'s delta file (model minus the previous one), written once; none if it cannot be."""
        model, previous = models.get(number), models.get(number - 1)
        if model is None or previous is None:
            return {}
        try:
            return {number: self._store.write_delta(model, previous)}
        except (OSError, CorruptFile) as error:
            log.warning("round %d's deltas will be computed per request: %s", number, error)
            return {}

    def _new_round(self, model: LoadedModel) -> Round:
        number = model.round_number
        assignment = self._assigner.assignment(number)
        ordered = {name: assignment[name] for name in self.plan.collaborators if name in assignment}
        model_bytes = sum(values.nbytes for values in model.tensors.values())
        return Round(
            number,
            ordered,
            self._assigner.tasks_in_round(number),
            model,
            self.plan.limits.resolve(model_bytes),
        )

    def _replay(self, round_: Round) -> int:
        replay = SpoolReplay(self._store, self.admit)
        replayed = 0
        for collaborator, task, receipt in replay.receipts(round_):
            with self._round_lock:
                round_.record(collaborator, task, receipt)
            if isinstance(receipt, AcceptedUpload):
                self.metrics.extend(receipt.metric_records())
            replayed += 1
        decision = replay.decision(round_)
        with self._round_lock:
            round_.decision = decision
        return replayed

    def on_progress(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) whenever collaborators may have new work: a round began, a task
        is handed out again, or training ended."""
        self._progress.append(callback)

    def _made_progress(self) -> None:
        for callback in list(self._progress):
            callback()

    # Queries --------------------------------------------------------------------------------------------------

    @property
    def restored(self) -> bool:
        """Whether :meth:`restore` has completed."""
        with self._round_lock:
            return self._restored

    @property
    def round_number(self) -> int:
        """The current round (equal to rounds_to_train once the experiment has finished)."""
        with self._round_lock:
            return self._checkpoint().round_number

    @property
    def best_score(self) -> float:
        """The best aggregated validate_agg metric so far (-inf before any)."""
        with self._round_lock:
            return self._checkpoint().best

    @property
    def finished(self) -> bool:
        """Whether every round has been aggregated."""
        with self._round_lock:
            return self._checkpoint().round_number >= self.plan.rounds_to_train

    @property
    def all_quit_jobs_sent(self) -> bool:
        """Whether every collaborator has received its quit job (OpenFL's condition for the server to stop)."""
        with self._round_lock:
            return self._committed is not None and set(self._committed.quit_sent) >= set(
                self.plan.collaborators
            )

    @property
    def quit_jobs_recorded(self) -> frozenset[str]:
        """Collaborators whose quit job is recorded (sent, or about to be)."""
        with self._round_lock:
            return frozenset(self._committed.quit_sent) if self._committed is not None else frozenset()

    def seconds_to_deadline(self) -> float | None:
        """Seconds until the current round's straggler cutoff falls due (<= 0: due now), if it has one."""
        cutoff = self._policy.cutoff_seconds()
        with self._round_lock:
            round_ = self._round
            if cutoff is None or round_ is None or round_.started_at is None or round_.closing:
                return None
            return round_.started_at + cutoff - self._clock()

    def _checkpoint(self) -> Checkpoint:
        if self._committed is None:
            raise FailedPrecondition("the federation state has not been restored yet")
        return self._committed

    def _current_round_or_none(self) -> Round | None:
        with self._round_lock:
            return self._round

    def contact_started(self, collaborator: str) -> None:
        """An authenticated call of ``collaborator`` began (what ``fedagg status`` shows as last contact)."""
        with self._round_lock:
            contact = self._contacts.setdefault(collaborator, Contact())
            contact.last, contact.calls = self._clock(), contact.calls + 1

    def contact_ended(self, collaborator: str) -> None:
        """That call ended."""
        with self._round_lock:
            contact = self._contacts.setdefault(collaborator, Contact())
            contact.last, contact.calls = self._clock(), max(0, contact.calls - 1)

    # GetTasks -----------------------------------------------------------------------------------------------

    def get_tasks(self, collaborator: str) -> TaskReply:
        """OpenFL's get_tasks: quit once training is over, sleep when nothing is to do, else the tasks left."""
        started = False
        with self._round_lock:
            committed = self._checkpoint()
            round_ = self._round
            if round_ is None:
                return TaskReply(
                    committed.round_number, quit=True, quit_recorded=collaborator in committed.quit_sent
                )
            pending = (
                ()
                if round_.closing or collaborator in round_.stragglers
                else round_.pending_tasks(collaborator)
            )
            if not pending:
                return TaskReply(round_.number, sleep_seconds=self.plan.sleep_seconds)
            if round_.started_at is None:
                round_.started_at = self._clock()
                started = True
            round_.handed_out.add(collaborator)
            reply = TaskReply(round_.number, tasks=tuple(self.plan.tasks[task] for task in pending))
        if started:
            self._listener.round_started(reply.round_number)
        return reply

    def record_quit(self, collaborator: str) -> None:
        """Durably note that ``collaborator`` is being sent its quit job (before the reply leaves)."""
        with self._commit_lock:
            with self._round_lock:
                committed = self._checkpoint()
            if collaborator in committed.quit_sent:
                return
            updated = committed.with_quit(collaborator)
            failpoint("quit.before_record")
            started = self._clock()
            try:
                with self._storage("quit"):
                    self._store.save_checkpoint(updated, new_round=False)
            except StorageUnavailable:
                self._listener.checkpoint_failed()
                raise
            failpoint("quit.recorded")
            with self._round_lock:
                self._committed = updated
            self._listener.checkpoint_saved(updated.round_number, self._clock() - started)
            if set(updated.quit_sent) >= set(self.plan.collaborators):
                self._listener.all_quit_jobs_sent()

    # SendLocalTaskResults -------------------------------------------------------------------------------------

    def admit(self, collaborator: str, results: ResultsHeader) -> Admission:
        """Decide from an upload's header whether it will be used (a refusal is an ignore, answered OK)."""
        admission = Admission(collaborator, results.task_name, results.round_number, results.data_size)
        with self._round_lock:
            reason, message = ignore_reason(self.plan.tasks, self._round, admission)
        if reason is None:
            return admission
        return Admission(
            collaborator, results.task_name, results.round_number, results.data_size, reason, message
        )

    def note_ignored(self, admission: Admission) -> None:
        """Report an upload that :meth:`admit` ignored (answered OK, not used)."""
        self._listener.contribution_ignored(admission.collaborator, admission.task, str(admission.ignored))

    def open_intake(self, admission: Admission) -> UploadIntake:
        """The checks (and spool file) for an admitted upload that is arriving. Blocks on the disk."""
        with self._round_lock:
            round_ = self._round
        if round_ is None:
            return UploadIntake(admission, {}, self.plan.limits.resolve(0))
        with self._storage("spool", proves_writable=False):  # creating a file succeeds on a full disk
            spool = self._store.spool.open()
        return UploadIntake(admission, round_.model.tensors, round_.limits, spool)

    def absorb(self, intake: UploadIntake, data: memoryview, offset: int) -> None:
        """Check and spool an admitted upload's next bytes. Blocks on the disk."""
        with self._storage("spool", proves_writable=False):  # buffered: only the seal's fsync proves the disk
            intake.absorb(data, offset)

    def seal(self, intake: UploadIntake) -> None:
        """Finish an upload's spool file (fsync) once it has arrived whole. Blocks on the disk."""
        with self._storage("spool"):
            intake.seal()

    def commit(self, intake: UploadIntake) -> Outcome:
        """Record a received upload durably (accepted or rejected); may close the round. Blocks on the disk."""
        with self._commit_lock:
            try:
                outcome = self._commit(intake)
            finally:
                intake.discard()
            trim_heap()  # what receiving the upload freed: before the next uploads or the aggregation allocate
            with self._round_lock:
                round_ = self._round
            if round_ is not None:
                round_.model.release()  # the pages a delta's checks touched
            if outcome.admission.accepted and round_ is not None:
                self._close_if_due(round_)
            return outcome

    def _commit(self, intake: UploadIntake) -> Outcome:
        admission = intake.admission
        with self._round_lock:
            round_ = self._round
            reason, message = ignore_reason(self.plan.tasks, self._round, admission)
            sequence = round_.next_sequence() if round_ is not None and reason is None else 0
        if round_ is None or reason is not None:
            reason = reason or IgnoreReason.FINISHED
            self._listener.contribution_ignored(admission.collaborator, admission.task, str(reason))
            return Outcome(
                Admission(
                    admission.collaborator,
                    admission.task,
                    admission.round_number,
                    admission.data_size,
                    reason,
                    message,
                )
            )
        rejection = intake.rejection
        if rejection is None:
            try:
                contribution = intake.contribution()
            except ContributionRejected as error:
                rejection = error
        if rejection is not None:
            return self._record_rejection(round_, admission, rejection, sequence)
        spool = intake.spool
        digest = intake.digest
        assert spool is not None, "an accepted upload was spooled"
        assert digest is not None, "an accepted upload was sealed before its commit"
        with self._storage("spool"):
            entry = self._store.spool.accept(spool, round_.number, sequence)
        failpoint("upload.committed")
        accepted = AcceptedUpload(contribution, entry, digest)
        with self._round_lock:
            round_.record(admission.collaborator, admission.task, accepted)
        self.metrics.extend(accepted.metric_records())
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
        with self._storage("rejection"):
            entry = self._store.spool.record_rejection(round_.number, sequence, body)
        rejected = RejectedUpload(
            admission.collaborator, admission.task, rejection.reason, rejection.message, entry
        )
        with self._round_lock:
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

    def _storage(self, operation: str, *, proves_writable: bool = True) -> _StorageGuard:
        """Report a disk error in ``operation``; its success clears a storage failure if it ``proves_writable``."""
        return _StorageGuard(self, operation, proves_writable)

    # Round end (commit lock held) -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Periodic work: probe a failing disk, retry a failed round end, close a round whose cutoff passed."""
        with self._commit_lock:
            if self.health.storage_failing:
                try:
                    self._store.probe()
                except OSError:
                    pass
                else:
                    self.health.storage_ok()
            with self._round_lock:
                round_ = self._round
            if round_ is not None and self._closer.retry_due():
                self._close_if_due(round_)

    def _close_if_due(self, round_: Round) -> bool:
        """Close ``round_`` if its decision is made or the straggler policy allows it now; True once committed."""
        closer = self._closer
        while True:
            with self._round_lock:
                if round_ is not self._round:
                    return False
                decision = round_.decision or round_.propose_decision(self._policy, self._clock())
            if decision is None:
                return False
            lost = closer.verify(round_, decision)
            with self._round_lock:
                for collaborator, task in lost:
                    round_.forget(collaborator, task)
                round_.decision = None if lost else decision
                committed = self._checkpoint()
            if not lost:
                break
            self._made_progress()
        closed = closer.attempt(round_, decision, committed)
        if closed is None:
            return False
        self._committed_round(round_, decision, closed)
        return True

    def _committed_round(self, round_: Round, decision: CloseDecision, closed: ClosedRound) -> None:
        checkpoint = closed.checkpoint
        models = {
            number: model
            for number, _ in checkpoint.models
            if (model := self._serving.model(number)) is not None
        }
        models[checkpoint.round_number] = closed.model
        self.metrics.extend(list(closed.metrics))
        self._install(checkpoint, models)
        self._clean_up(round_.number, checkpoint)
        trim_heap()
        if decision.stragglers:
            log.warning("round %d closed without stragglers %s", round_.number, list(decision.stragglers))
        duration = 0.0 if round_.started_at is None else self._clock() - round_.started_at
        self._listener.checkpoint_saved(checkpoint.round_number, closed.checkpoint_seconds)
        self._listener.round_finished(
            RoundSummary(
                round_.number,
                duration,
                closed.aggregation_seconds,
                len(decision.done),
                decision.stragglers,
                closed.metrics,
            )
        )
        log.info(
            "round %d finished: %d contributor(s), aggregation %.3fs",
            round_.number,
            len(decision.done),
            closed.aggregation_seconds,
        )
        if checkpoint.round_number >= self.plan.rounds_to_train:
            self._listener.experiment_finished(checkpoint.round_number)

    def _clean_up(self, closed_round: int, checkpoint: Checkpoint) -> None:
        """After a commit: drop what no recovery needs (the spool of the closed round is kept one more round)."""
        try:
            self._store.spool.drop_rounds_before(closed_round)
            self._store.prune_models(keep_from_round=min(number for number, _ in checkpoint.models))
        except OSError as error:
            log.warning(
                "clean-up after round %d failed (%s); retried after the next round",
                closed_round,
                describe_os_error(error),
            )

    # GetAggregatedTensor and observers ------------------------------------------------------------------------

    def served_tensor(self, request: TensorRequest, requester: str = "") -> ServedTensor:
        """The NamedTensor answering ``requester``'s GetAggregatedTensor request. Reads the disk.

        Model tensors (and the change since the last round) are views of their files; a request naming a
        collaborator in its tags asks for that collaborator's own results of the current round, which only that
        collaborator may fetch.
        """
        owner = tensor_owner(request, self.plan.collaborators)
        if owner is None:
            return self._serving.served(request)
        if owner != requester:
            raise PermissionDenied(
                f"GetAggregatedTensorRequest.tags name collaborator {owner!r}: a collaborator may only fetch "
                "its own results"
            )
        return self._own_tensor(owner, request)

    def encoded_tensor(self, request: TensorRequest, requester: str = "") -> bytes:
        """:meth:`served_tensor` as one serialized NamedTensor (a copy: for tests and tools)."""
        served = self.served_tensor(request, requester)
        try:
            return b"".join(served.parts)
        finally:
            served.release()

    def _own_tensor(self, collaborator: str, request: TensorRequest) -> ServedTensor:
        wanted = set(request.tags) - {collaborator, COMPRESSED}
        with self._round_lock:
            round_ = self._round
            uploads = [] if round_ is None else round_.accepted([collaborator])
        if round_ is None or request.round_number != round_.number:
            raise NotFound(f"{collaborator}'s results are served for the current round only")
        for upload in uploads:
            for tensor in upload.contribution.weights:
                if tensor.name == request.name and set(tensor.tags) == wanted:
                    values = SpooledValues(upload.entry.path, tensor.data_offset, tensor.size)
                    delta = tensor.is_delta and tensor.name in round_.model.tensors
                    source = DeltaOnBase(ModelValues(round_.model, tensor.name), values) if delta else values
                    return own_tensor(request, source.block(0, tensor.size).reshape(tensor.shape))
        raise NotFound(
            f"no tensor {request.name!r} with tags {sorted(wanted)} in {collaborator}'s results of round "
            f"{round_.number}"
        )

    def trained_model(self, best: bool) -> Path:
        """Path of the published best or last model; raise if none has been written yet."""
        with self._round_lock:
            committed = self._checkpoint()
        round_number = committed.best_round if best else committed.last_round
        path = self._outputs.best if best else self._outputs.last
        if round_number is None or not path.is_file():
            what = (
                "no aggregated model has improved a validate_agg metric" if best else "no round has finished"
            )
            raise FailedPrecondition(f"no {'best' if best else 'last'} model yet: {what}")
        return path

    def describe(self) -> ExperimentStatus:
        """Status, progress and per-collaborator state, for GetExperimentDescription (``restoring`` at first)."""
        storage_failing, round_end_failing = self.health.storage_failing, self.health.round_end_failing
        with self._round_lock:
            committed, round_ = self._committed, self._round
            if committed is None:
                return restoring_status(self.plan)
            if round_ is None:
                round_ = self._new_round(LoadedModel(committed.round_number, {}))
            return experiment_status(
                self.plan,
                committed,
                round_,
                Contacts(dict(self._contacts), self._clock(), time.time()),
                storage_failing=storage_failing,
                round_end_failing=round_end_failing,
                figures=self._figures,
            )


class _StorageGuard:
    """Turns a disk error into :class:`StorageUnavailable` (UNAVAILABLE for the client) and reports it."""

    def __init__(self, federation: Federation, operation: str, proves_writable: bool) -> None:
        self._federation = federation
        self._operation = operation
        self._proves_writable = proves_writable

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, OSError):
            self._federation.health.storage_failed(self._operation, error)
            raise StorageUnavailable(
                f"the aggregator cannot write its state: {describe_os_error(error)}; retry later"
            ) from None
        if error is None and self._proves_writable:
            self._federation.health.storage_ok()
