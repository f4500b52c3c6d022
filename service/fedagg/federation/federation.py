"""The federation: OpenFL's aggregator semantics (spec §3) as a thread-safe, network-free state machine.

:class:`Federation` is a facade; each job lives in its own module: start-up (:mod:`~fedagg.federation.startup`),
task hand-out (:mod:`~fedagg.federation.task_handout`), upload commits (:mod:`~fedagg.federation.upload_commits`,
with :mod:`~fedagg.federation.metric_names`), round ends (:mod:`~fedagg.federation.round_ends`, around the
transaction of :mod:`~fedagg.federation.round_close`), contact tracking (:mod:`~fedagg.federation.contacts`) and
own-results serving (:mod:`~fedagg.federation.own_results`).

Who calls what, and from where:

* request handlers, on the event loop, without I/O: :meth:`Federation.get_tasks`, :meth:`Federation.admit`,
  :meth:`Federation.describe`, the contact calls and the read-only properties;
* executor threads, because they touch the disk: :meth:`Federation.open_intake`, :meth:`Federation.absorb`,
  :meth:`Federation.seal` and :meth:`Federation.served_tensor` (I/O executor), and every durable transition,
  :meth:`Federation.restore`, :meth:`Federation.commit`, :meth:`Federation.claim` (a tier root), :meth:`Federation.record_quit` and
  :meth:`Federation.tick` (commit executor).

A quit job is made durable before it is handed out, serialised with round ends, so checkpoints only move forward.

Locks (order: ``_commit_lock``, then the round lock; the TensorServer's, MetricLog's and ContactBook's come after):

* ``_commit_lock`` serialises every durable transition (restore, commits, round ends, quit records, ticks): what
  :class:`~fedagg.federation.startup.StartUp`, :class:`~fedagg.federation.upload_commits.UploadCommits` and
  :class:`~fedagg.federation.round_ends.RoundEnds` run under, and the owner of the single-owner
  :class:`~fedagg.federation.metric_names.MetricNames`. Held across disk I/O: only ever taken off the event loop.
* the round lock (:class:`~fedagg.federation.ledger.RoundLedger`) guards the committed checkpoint, the round in
  progress, the aggregators' figures and the restored flag; never held across I/O or a listener call.

An :class:`~fedagg.federation.intake.UploadIntake` is a single-owner object: owned by the upload's receiver until it
is handed to :meth:`Federation.commit`, which owns it from then on (and always disposes of it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedagg.federation.assigner import make_assigner
from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.collected import RoundCollector
from fedagg.federation.contacts import ContactBook
from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.events import ExperimentStatus, FederationListener
from fedagg.federation.intake import Admission, IgnoreReason, UploadIntake, ignore_reason
from fedagg.federation.integrity import FileDigest
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.metric_log import MetricLog
from fedagg.federation.metric_names import MetricNames
from fedagg.federation.own_results import own_results_tensor
from fedagg.federation.plan import FederationPlan
from fedagg.federation.progress_health import FederationHealth
from fedagg.federation.published import ModelOutputs
from fedagg.federation.recovery import StateRecovery
from fedagg.federation.round_close import RoundCloser
from fedagg.federation.round_ends import RoundEnds
from fedagg.federation.rounds import ClaimedContribution
from fedagg.federation.serving import ServedTensor, TensorRequest, TensorServer, tensor_owner
from fedagg.federation.startup import StartUp
from fedagg.federation.status import experiment_status, restoring_status
from fedagg.federation.store import StateStore
from fedagg.federation.stragglers import make_straggler_policy
from fedagg.federation.task_handout import TaskReply, hand_out_tasks
from fedagg.federation.upload_commits import Outcome, UploadCommits
from fedagg.protocol.model_file import LoadedModel
from fedagg.protocol.results import ResultsHeader

__all__ = ["Admission", "Federation", "ModelOutputs", "Outcome", "TaskReply"]


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
        collector: RoundCollector | None = None,
    ) -> None:
        self.plan = plan
        self.metrics = MetricLog()
        self._store = store
        self._outputs = outputs
        self._listener = listener or FederationListener()
        self._clock = clock
        store.on_quarantine = self._listener.state_file_quarantined
        self.health = FederationHealth(self._listener, clock)
        self._policy = make_straggler_policy(plan.stragglers)
        self._serving = TensorServer()
        self._commit_lock = threading.Lock()
        self._ledger = RoundLedger()
        self._contacts = ContactBook(clock)
        self._progress: list[Callable[[], None]] = []
        self._startup = StartUp(
            store, StateRecovery(plan, store, outputs, initial_model, initial_model_digest)
        )
        self._round_ends = RoundEnds(
            plan,
            store,
            self._ledger,
            RoundCloser(plan, store, outputs, self.health, self._listener, clock),
            assigner=make_assigner(plan.assigner, plan.collaborators),
            policy=self._policy,
            serving=self._serving,
            metrics=self.metrics,
            health=self.health,
            listener=self._listener,
            clock=clock,
            made_progress=self._made_progress,
            collector=collector,
        )
        self._metric_names = MetricNames(plan.limits.metric_names_per_task, self._listener)
        self._commits = UploadCommits(plan, store, self._ledger, self._round_ends, self._metric_names)

    def restore(self) -> None:
        """Resume from the newest verified state (or start from the initial model) and replay the spool."""
        with self._commit_lock:
            self._startup.restore(
                self._ledger, self._round_ends, self.metrics, self._metric_names, self.admit
            )

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
        with self._ledger.round_lock:
            return self._ledger.restored

    @property
    def round_number(self) -> int:
        """The current round (equal to rounds_to_train once the experiment has finished)."""
        return self._checkpoint().round_number

    @property
    def best_score(self) -> float:
        """The best aggregated validate_agg metric so far (-inf before any)."""
        return self._checkpoint().best

    @property
    def finished(self) -> bool:
        """Whether every round has been aggregated."""
        return self._checkpoint().round_number >= self.plan.rounds_to_train

    def _checkpoint(self) -> Checkpoint:
        with self._ledger.round_lock:
            return self._ledger.checkpoint()

    @property
    def all_quit_jobs_sent(self) -> bool:
        """Whether every collaborator has received its quit job (OpenFL's condition for the server to stop)."""
        with self._ledger.round_lock:
            committed = self._ledger.committed
            return committed is not None and set(committed.quit_sent) >= set(self.plan.collaborators)

    @property
    def quit_jobs_recorded(self) -> frozenset[str]:
        """Collaborators whose quit job is recorded (sent, or about to be)."""
        with self._ledger.round_lock:
            committed = self._ledger.committed
            return frozenset(committed.quit_sent) if committed is not None else frozenset()

    def seconds_to_deadline(self) -> float | None:
        """Seconds until the current round's straggler cutoff falls due (<= 0: due now), if it has one."""
        cutoff = self._policy.cutoff_seconds()
        with self._ledger.round_lock:
            round_ = self._ledger.round
            if cutoff is None or round_ is None or round_.started_at is None or round_.closing:
                return None
            return round_.started_at + cutoff - self._clock()

    def contact_started(self, collaborator: str) -> None:
        """An authenticated call of ``collaborator`` began (what ``fedagg status`` shows as last contact)."""
        self._contacts.started(collaborator)

    def contact_ended(self, collaborator: str) -> None:
        """That call ended."""
        self._contacts.ended(collaborator)

    # GetTasks -----------------------------------------------------------------------------------------------

    def get_tasks(self, collaborator: str) -> TaskReply:
        """OpenFL's get_tasks: quit once training is over, sleep when nothing is to do, else the tasks left."""
        reply, started = hand_out_tasks(self.plan, self._ledger, collaborator, self._clock)
        if started:
            self._listener.round_started(reply.round_number)
        return reply

    def record_quit(self, collaborator: str) -> None:
        """Durably note that ``collaborator`` is being sent its quit job (before the reply leaves)."""
        with self._commit_lock:
            self._round_ends.record_quit(collaborator)

    # SendLocalTaskResults -------------------------------------------------------------------------------------

    def admit(self, collaborator: str, results: ResultsHeader) -> Admission:
        """Decide from an upload's header whether it will be used (a refusal is an ignore, answered OK)."""
        admission = Admission(collaborator, results.task_name, results.round_number, results.data_size)
        with self._ledger.round_lock:
            reason, message = ignore_reason(self.plan.tasks, self._ledger.round, admission)
        return admission if reason is None else admission.ignore(reason, message)

    def note_ignored(self, admission: Admission) -> None:
        """Report an upload that :meth:`admit` ignored (answered OK, not used)."""
        self._listener.contribution_ignored(admission.collaborator, admission.task, str(admission.ignored))

    def open_intake(self, admission: Admission) -> UploadIntake:
        """The checks (and spool file) for an admitted upload that is arriving. Blocks on the disk.

        The intake is owned by the caller (the upload's receiver) until it hands it to :meth:`commit`.
        """
        return self._commits.open_intake(admission)

    def absorb(self, intake: UploadIntake, data: memoryview, offset: int) -> None:
        """Check and spool an admitted upload's next bytes. Blocks on the disk."""
        self._commits.absorb(intake, data, offset)

    def seal(self, intake: UploadIntake) -> None:
        """Finish an upload's spool file (fsync) once it has arrived whole. Blocks on the disk."""
        self._commits.seal(intake)

    def commit(self, intake: UploadIntake) -> Outcome:
        """Record a received upload durably (accepted or rejected); may close the round. Blocks on the disk.

        Takes ownership of ``intake``: whatever happens (an exception, or the caller's cancellation while this
        runs on another thread), the intake is disposed of here, its spool file deleted unless the upload was
        accepted into the spool. The caller must not touch it after the hand-over.
        """
        with self._commit_lock:
            return self._commits.commit(intake)

    def claim(
        self,
        collaborator: str,
        round_number: int,
        task: str,
        hold: Callable[[], str | None],
        rejected: str = "",
    ) -> None:
        """At a tier's root: count ``collaborator``'s results for ``task``, spooled by an ingest replica. Blocks on
        the disk (``hold`` makes the claim durable and names the replica holding it, None while another claim of it
        is being made durable; ``rejected``: why the replica rejected the upload, which then counts as done without
        being aggregated, as a single pod counts a rejected upload); may close the round. Raises :class:`FailedPrecondition` when the round does not
        take these results (a past round, a closing round, a task the collaborator does not have): its message is
        ``"<ignore reason>: <why>"`` (:class:`~fedagg.federation.intake.IgnoreReason`)."""
        admission = Admission(collaborator, task, round_number, 0)
        with self._commit_lock:
            with self._ledger.round_lock:
                round_ = self._ledger.round
                reason, message = ignore_reason(self.plan.tasks, round_, admission)
            if round_ is None or reason is not None:
                raise FailedPrecondition(f"{reason or IgnoreReason.FINISHED}: {message}")
            holder = hold()
            if holder is None:
                return
            with self._ledger.round_lock:
                round_.record(collaborator, task, ClaimedContribution(holder, rejected))
            if not rejected:
                self._listener.contribution_accepted(collaborator, task, round_number, 0)
            self._round_ends.close_if_due(round_)

    def tick(self) -> None:
        """Periodic work: probe a failing disk, retry a failed round end, close a round whose cutoff passed."""
        with self._commit_lock:
            self._round_ends.tick()

    # GetAggregatedTensor and observers ------------------------------------------------------------------------

    def served_tensor(self, request: TensorRequest, requester: str = "") -> ServedTensor:
        """The NamedTensor answering ``requester``'s GetAggregatedTensor request.

        Cheap: the reply is measured, not built (:class:`~fedagg.federation.serving.ServedTensor`). Model tensors
        (and the change since the last round) are views of their files; a request naming a collaborator in its tags
        asks for that collaborator's own results of the current round, which only that collaborator may fetch.
        """
        owner = tensor_owner(request, self.plan.collaborators)
        if owner is None:
            return self._serving.served(request)
        return own_results_tensor(self._ledger, owner, requester, request)

    def encoded_tensor(self, request: TensorRequest, requester: str = "") -> bytes:
        """:meth:`served_tensor` as one serialized NamedTensor (a copy: for tests and tools)."""
        served = self.served_tensor(request, requester)
        try:
            return b"".join(served.parts())
        finally:
            served.release()

    def trained_model(self, best: bool) -> Path:
        """Path of the published best or last model; raise if none has been written yet."""
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
        contacts = self._contacts.snapshot()
        with self._ledger.round_lock:
            committed, round_ = self._ledger.committed, self._ledger.round
            if committed is None:
                return restoring_status(self.plan)
            if round_ is None:
                round_ = self._round_ends.new_round(LoadedModel(committed.round_number, {}), None)
            return experiment_status(
                self.plan,
                committed,
                round_,
                contacts,
                storage_failing=storage_failing,
                round_end_failing=round_end_failing,
                figures=self._ledger.figures,
            )
