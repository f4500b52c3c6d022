"""The federation: OpenFL's aggregator semantics (spec §3) as a thread-safe, network-free state machine.

Request handlers call :meth:`Federation.get_tasks`, :meth:`Federation.admit`, :meth:`Federation.check_tensor`
and :meth:`Federation.encoded_tensor` from any thread; they only take the short state lock.
:meth:`Federation.commit` and :meth:`Federation.end_round_if_due` fold uploads and close rounds; they
serialise on the commit lock and may take long (aggregation, checkpoint I/O), so callers run them off the
event loop. Lock order: commit lock, then state lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedagg.federation.assigner import make_assigner
from fedagg.federation.contribution import (
    Contribution,
    SpooledContribution,
    UploadedTensor,
    classify_tensor,
    read_spooled_upload,
)
from fedagg.federation.errors import FailedPrecondition, FederationError, InvalidRequest, NotFound
from fedagg.federation.events import (
    CollaboratorStatus,
    ExperimentStatus,
    FederationListener,
    RoundSummary,
)
from fedagg.federation.metric_log import MetricLog, MetricRecord
from fedagg.federation.plan import FederationPlan, TaskSpec
from fedagg.federation.rounds import Round
from fedagg.federation.serving import EncodedTensorCache, TensorForm, TensorRequest, resolve_form
from fedagg.federation.store import Checkpoint, SpoolFile, StateStore, publish_model
from fedagg.federation.stragglers import make_straggler_policy
from fedagg.protocol.codec import Float32Array, tensor_header
from fedagg.protocol.model_file import LoadedModel, encode_named_tensor
from fedagg.protocol.results import ResultsHeader
from fedagg.protocol.stream import TensorRecord

log = logging.getLogger(__name__)

VALIDATE_AGG_TAG = "validate_agg"


@dataclass(frozen=True)
class ModelOutputs:
    """Where the OpenFL-format best and last models are published."""

    best: Path
    last: Path


@dataclass(frozen=True)
class TaskReply:
    """The answer to GetTasks: tasks, or a sleep, or quit (exclusive, in that priority: quit > sleep > tasks)."""

    round_number: int
    tasks: tuple[TaskSpec, ...] = ()
    sleep_seconds: int = 0
    quit: bool = False


@dataclass(frozen=True)
class Admission:
    """The decision on an upload, taken from its header before its tensors arrive."""

    collaborator: str
    task: str
    round_number: int
    data_size: int
    ignored_because: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the upload will be used (otherwise it is answered OK and dropped, as OpenFL does)."""
        return not self.ignored_because


class Federation:
    """Rounds, tasks, aggregation and durable state for one experiment."""

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        outputs: ModelOutputs,
        *,
        initial_model: LoadedModel | None = None,
        listener: FederationListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.metrics = MetricLog()
        self._store = store
        self._outputs = outputs
        self._initial_model = initial_model
        self._listener = listener or FederationListener()
        self._clock = clock
        self._assigner = make_assigner(plan.assigner, plan.collaborators)
        self._policy = make_straggler_policy(plan.stragglers)
        self._state_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._cache = EncodedTensorCache()
        self._models: dict[int, Mapping[str, Float32Array]] = {}
        self._round: Round | None = None
        self._first_round = 0
        self._finished = False
        self._quit_sent: set[str] = set()
        self._best_score = -math.inf
        self._best_round: int | None = None
        self._last_round: int | None = None

    # Start-up -----------------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the checkpoint (or start from the initial model) and replay acknowledged uploads."""
        with self._commit_lock:
            checkpoint = self._store.load_checkpoint()
            round_number = self._start_fresh() if checkpoint is None else self._load_checkpoint(checkpoint)
            self._store.drop_spool(keep_from_round=round_number)
            self._finished = round_number >= self.plan.rounds_to_train
            self._round = self._new_round(round_number)
            if self._finished:
                self.metrics.close()
                return
            replayed = self._replay(self._round)
            if replayed:
                log.info("replayed %d acknowledged upload(s) of round %d", replayed, round_number)
            self._end_round_if_complete()

    def _start_fresh(self) -> int:
        model = self._initial_model
        if model is None:
            raise FailedPrecondition("no checkpoint in the state directory and no initial model configured")
        if model.round_number < 0:
            raise FailedPrecondition(
                f"the initial model's round_number is {model.round_number}, expected >= 0"
            )
        round_number = self._first_round = model.round_number
        if round_number:
            log.info("initial model is from round %d: resuming there", round_number)
        self._store.save_model(round_number, model.tensors)
        self._models[round_number] = self._store.load_model(round_number).tensors
        self._save_checkpoint(round_number)
        return round_number

    def _load_checkpoint(self, checkpoint: Checkpoint) -> int:
        if checkpoint.federation_uuid != self.plan.federation_uuid:
            raise FailedPrecondition(
                f"the state directory {self._store.root} belongs to federation "
                f"{checkpoint.federation_uuid!r}, not {self.plan.federation_uuid!r}"
            )
        round_number = checkpoint.round_number
        self._first_round = checkpoint.first_round
        self._best_score = -math.inf if checkpoint.best_score is None else checkpoint.best_score
        self._best_round = checkpoint.best_round
        self._last_round = checkpoint.last_round
        self._quit_sent = set(checkpoint.quit_sent)
        for kept in range(round_number - self.plan.rounds_kept + 1, round_number + 1):
            if self._store.has_model(kept):
                self._models[kept] = self._store.load_model(kept).tensors
        if round_number not in self._models:
            raise FailedPrecondition(
                f"the checkpoint names round {round_number} but its model file is missing"
            )
        self.metrics.extend([MetricRecord.from_json(item) for item in self._store.load_metrics(round_number)])
        log.info("restored checkpoint: round %d", round_number)
        return round_number

    def _replay(self, round_: Round) -> int:
        replayed = 0
        for entry in self._store.spooled(round_.number):
            round_.observe_sequence(entry.sequence)
            header, records = read_spooled_upload(entry.path)
            try:
                admission = self.admit(header.header.sender, header)
                if not admission.accepted:
                    raise FailedPrecondition(admission.ignored_because)
                tensors = tuple(self.check_tensor(admission, record) for record in records)
                contribution = self._contribution(admission, tensors)
                round_.check_contribution(contribution)
            except FederationError as error:
                log.warning("dropping spooled upload %s: %s", entry.path, error)
                entry.path.unlink()
                continue
            self._fold(round_, SpooledContribution(contribution, entry.path), entry.path.stat().st_size)
            replayed += 1
        return replayed

    # Queries --------------------------------------------------------------------------------------------------

    @property
    def round_number(self) -> int:
        """The current round (equal to rounds_to_train once the experiment has finished)."""
        with self._state_lock:
            return self._current_round().number

    @property
    def best_score(self) -> float:
        """The best aggregated validate_agg metric so far (-inf before any)."""
        with self._state_lock:
            return self._best_score

    @property
    def finished(self) -> bool:
        """Whether every round has been aggregated."""
        with self._state_lock:
            return self._finished

    @property
    def all_quit_jobs_sent(self) -> bool:
        """Whether every collaborator has received its quit job (OpenFL's condition for the server to stop)."""
        with self._state_lock:
            return self._quit_sent >= set(self.plan.collaborators)

    def seconds_to_deadline(self) -> float | None:
        """Seconds until the current round's straggler cutoff falls due (<= 0: due now), if it has one."""
        cutoff = self._policy.cutoff_seconds()
        with self._state_lock:
            round_ = self._round
            if (
                cutoff is None
                or round_ is None
                or round_.started_at is None
                or self._finished
                or round_.closing
            ):
                return None
            return round_.started_at + cutoff - self._clock()

    # GetTasks -----------------------------------------------------------------------------------------------

    def get_tasks(self, collaborator: str) -> TaskReply:
        """OpenFL's get_tasks: quit once training is over, sleep when nothing is to do, else the tasks left."""
        newly_quit = False
        with self._state_lock:
            round_ = self._current_round()
            if self._finished:
                newly_quit = collaborator not in self._quit_sent
                self._quit_sent.add(collaborator)
                reply = TaskReply(round_.number, quit=True)
                all_quit = self._quit_sent >= set(self.plan.collaborators)
            else:
                reply = self._assign_tasks(round_, collaborator)
        if newly_quit:
            self._save_checkpoint(round_.number)
            if all_quit:
                self._listener.all_quit_jobs_sent()
        return reply

    def _assign_tasks(self, round_: Round, collaborator: str) -> TaskReply:
        pending = (
            () if round_.closing or collaborator in round_.stragglers else round_.pending_tasks(collaborator)
        )
        if not pending:
            return TaskReply(round_.number, sleep_seconds=self.plan.sleep_seconds)
        if round_.started_at is None:
            round_.started_at = self._clock()
            self._listener.round_started(round_.number)
        round_.handed_out.add(collaborator)
        return TaskReply(round_.number, tasks=tuple(self.plan.tasks[task] for task in pending))

    # SendLocalTaskResults -------------------------------------------------------------------------------------

    def admit(self, collaborator: str, results: ResultsHeader) -> Admission:
        """Decide from an upload's header whether it will be used; raise for an upload that is wrong."""
        task = results.task_name
        if task not in self.plan.tasks:
            raise InvalidRequest(
                f"TaskResults.task_name {task!r} is not a task of this plan (tasks: {sorted(self.plan.tasks)})"
            )
        if results.data_size < -1:
            raise InvalidRequest(
                f"TaskResults.data_size is {results.data_size}; expected the number of samples (>= 0) or -1"
            )
        admission = Admission(collaborator, task, results.round_number, results.data_size)
        with self._state_lock:
            reason = self._ignore_reason(admission)
        if reason:
            return Admission(collaborator, task, results.round_number, results.data_size, reason)
        return admission

    def _ignore_reason(self, admission: Admission) -> str:
        round_ = self._current_round()
        collaborator, task = admission.collaborator, admission.task
        if self._finished:
            return "the experiment has finished"
        if admission.round_number != round_.number:
            return f"results are for round {admission.round_number}, the current round is {round_.number}"
        if collaborator in round_.stragglers or round_.closing:
            return f"round {round_.number} has closed ({collaborator} is a straggler)"
        assigned = round_.assignment.get(collaborator, ())
        if task not in assigned:
            raise FailedPrecondition(
                f"task {task!r} is not assigned to {collaborator} in round {round_.number} "
                f"(its tasks: {list(assigned)})"
            )
        if task in round_.received[collaborator]:
            return f"{collaborator} already sent results for {task!r} in round {round_.number}"
        return ""

    def open_spool(self) -> SpoolFile:
        """A spool file for an admitted upload that is arriving."""
        return self._store.open_spool()

    def check_tensor(self, admission: Admission, record: TensorRecord) -> UploadedTensor:
        """Validate one tensor of an admitted upload as it arrives."""
        tensor = classify_tensor(record, admission.collaborator)
        with self._state_lock:
            round_ = self._current_round()
        if round_.number == admission.round_number:
            round_.check_tensor(admission.task, tensor)
        return tensor

    def commit(
        self, admission: Admission, spool: SpoolFile, tensors: tuple[UploadedTensor, ...]
    ) -> Admission:
        """Make a complete, synced upload durable and fold it in; may close the round.

        Returns the admission, with ``ignored_because`` set when the round moved on meanwhile (the spool file is
        then discarded). Raises :class:`InvalidRequest` for an upload inconsistent with the round.
        """
        with self._commit_lock:
            try:
                with self._state_lock:
                    reason = self._ignore_reason(admission)
                    round_ = self._current_round()
                if reason:
                    spool.discard()
                    self._listener.contribution_ignored(admission.collaborator, admission.task, reason)
                    return Admission(
                        admission.collaborator,
                        admission.task,
                        admission.round_number,
                        admission.data_size,
                        reason,
                    )
                contribution = self._contribution(admission, tensors)
                round_.check_contribution(contribution)
            except Exception:
                spool.discard()
                raise
            with self._state_lock:
                sequence = round_.next_sequence()
            entry = self._store.accept_spool(spool, round_.number, sequence)
            self._fold(round_, SpooledContribution(contribution, entry.path), spool.size)
            self._end_round_if_complete()
            return admission

    def end_round_if_due(self) -> None:
        """Close the current round if the straggler policy allows it now (call when a deadline passes)."""
        with self._commit_lock:
            self._end_round_if_complete()

    def _contribution(self, admission: Admission, tensors: tuple[UploadedTensor, ...]) -> Contribution:
        return Contribution(
            admission.collaborator, admission.task, admission.round_number, admission.data_size, tensors
        )

    def _fold(self, round_: Round, spooled: SpooledContribution, size_bytes: int) -> None:
        contribution = spooled.contribution
        records = round_.fold(spooled)
        with self._state_lock:
            round_.received[contribution.collaborator].append(contribution.task)
            round_.collaborator_metrics.extend(records)
        self.metrics.extend(records)
        self._listener.contribution_accepted(
            contribution.collaborator, contribution.task, round_.number, size_bytes
        )

    # Round end (commit lock held) -------------------------------------------------------------------------------

    def _end_round_if_complete(self) -> None:
        with self._state_lock:
            round_ = self._round
            if round_ is None or self._finished or round_.closing:
                return
            done = round_.done()
            elapsed = None if round_.started_at is None else self._clock() - round_.started_at
            if not self._policy.round_may_end(len(done), len(round_.assignment), elapsed):
                return
            round_.closing = True
            round_.stragglers = frozenset(round_.assignment) - done
        if round_.stragglers:
            log.warning("round %d closes without stragglers %s", round_.number, sorted(round_.stragglers))
        self._end_round(round_, done)

    def _end_round(self, round_: Round, done: frozenset[str]) -> None:
        started = self._clock()
        result = round_.finish()
        model = {**self._models[round_.number], **result.updated_tensors}
        aggregation_seconds = self._clock() - started
        next_round = round_.number + 1
        self._store.save_model(next_round, model)
        next_model = self._store.load_model(next_round).tensors
        del model
        result.updated_tensors.clear()
        self._publish_outputs(round_, result.metrics, next_round, next_model)
        self._store.save_round_metrics(
            round_.number, [record.to_json() for record in round_.collaborator_metrics + result.metrics]
        )
        checkpoint_started = self._clock()
        finished = next_round >= self.plan.rounds_to_train
        with self._state_lock:
            self._finished = finished
            self._last_round = next_round
        self._save_checkpoint(next_round)
        self._listener.checkpoint_saved(next_round, self._clock() - checkpoint_started)
        oldest_kept = next_round - self.plan.rounds_kept + 1
        self._store.drop_spool(keep_from_round=next_round)
        self._store.prune_models(keep_from_round=oldest_kept)
        with self._state_lock:
            self._models[next_round] = next_model
            for kept in [number for number in self._models if number < oldest_kept]:
                del self._models[kept]
            self._round = self._new_round(next_round)
        self._cache.retain(lambda key: isinstance(key, tuple) and key[1] >= oldest_kept)
        self.metrics.extend(result.metrics)
        duration = 0.0 if round_.started_at is None else self._clock() - round_.started_at
        self._listener.round_finished(
            RoundSummary(
                round_.number,
                duration,
                aggregation_seconds,
                len(done),
                tuple(sorted(round_.stragglers)),
                tuple(result.metrics),
            )
        )
        log.info(
            "round %d finished: %d contributor(s), aggregation %.3fs",
            round_.number,
            len(done),
            aggregation_seconds,
        )
        if finished:
            self.metrics.close()
            self._listener.experiment_finished(next_round)

    def _publish_outputs(
        self,
        round_: Round,
        metrics: list[MetricRecord],
        next_round: int,
        next_model: Mapping[str, Float32Array],
    ) -> None:
        scores = [record.value for record in metrics if VALIDATE_AGG_TAG in record.tags]
        if scores and max(scores) > self._best_score:
            publish_model(self._outputs.best, self._models[round_.number], round_.number)
            with self._state_lock:
                self._best_score, self._best_round = max(scores), round_.number
            log.info(
                "round %d's model is the best so far (%s = %.6g)",
                round_.number,
                VALIDATE_AGG_TAG,
                self._best_score,
            )
        publish_model(self._outputs.last, next_model, next_round)

    def _save_checkpoint(self, round_number: int) -> None:
        try:
            self._write_checkpoint(round_number)
        except OSError:
            self._listener.checkpoint_failed()
            raise

    def _write_checkpoint(self, round_number: int) -> None:
        with self._state_lock:
            checkpoint = Checkpoint(
                federation_uuid=self.plan.federation_uuid,
                round_number=round_number,
                first_round=self._first_round,
                best_score=None if math.isinf(self._best_score) else self._best_score,
                best_round=self._best_round,
                last_round=self._last_round,
                quit_sent=tuple(sorted(self._quit_sent)),
            )
        self._store.save_checkpoint(checkpoint)

    def _new_round(self, number: int) -> Round:
        assignment = self._assigner.assignment(number)
        return Round(
            number,
            assignment,
            self._assigner.tasks_in_round(number),
            self.plan.tasks,
            self._models.get(number, {}),
        )

    def _current_round(self) -> Round:
        if self._round is None:
            raise FailedPrecondition("the federation state has not been restored yet")
        return self._round

    # GetAggregatedTensor --------------------------------------------------------------------------------------

    def encoded_tensor(self, request: TensorRequest) -> bytes:
        """The serialized NamedTensor answering a GetAggregatedTensor request (encoded once, then shared)."""
        served = resolve_form(request)
        number = request.round_number
        with self._state_lock:
            current = self._current_round().number
            model = self._models.get(number)
            previous = self._models.get(number - 1)
        if model is None:
            if number > current:
                raise FailedPrecondition(f"round {number} has not started; the current round is {current}")
            raise NotFound(f"round {number}'s model is no longer kept (kept rounds: {sorted(self._models)})")
        if request.name not in model:
            raise NotFound(
                f"tensor {request.name!r} is not in round {number}'s model (tensors: {sorted(model)})"
            )
        if served.form == TensorForm.DELTA and (previous is None or request.name not in previous):
            raise NotFound(
                f"the delta of {request.name!r} for round {number} needs round {number - 1}'s model, "
                "which is no longer kept; ask with tags ['model']"
            )

        def build() -> bytes:
            values = model[request.name]
            if served.form == TensorForm.DELTA:
                assert previous is not None
                values = np.subtract(values, previous[request.name], dtype=np.float32)
            header = tensor_header(
                request.name,
                values.shape,
                round_number=number,
                tags=served.tags,
                lossless=served.lossless,
                report=request.report,
            )
            return encode_named_tensor(header, values)

        key = (request.name, number, served.form, served.tags, served.lossless)
        return self._cache.get(key, build)

    # Observers ------------------------------------------------------------------------------------------------

    def trained_model(self, best: bool) -> Path:
        """Path of the published best or last model; raise if none has been written yet."""
        with self._state_lock:
            round_number = self._best_round if best else self._last_round
        path = self._outputs.best if best else self._outputs.last
        if round_number is None or not path.is_file():
            what = (
                "no aggregated model has improved a validate_agg metric" if best else "no round has finished"
            )
            raise FailedPrecondition(f"no {'best' if best else 'last'} model yet: {what}")
        return path

    def describe(self) -> ExperimentStatus:
        """Status, progress and per-collaborator state, for GetExperimentDescription."""
        plan = self.plan
        with self._state_lock:
            round_ = self._current_round()
            if self._finished:
                status = "finished"
            elif round_.number == self._first_round and round_.started_at is None:
                status = "pending"
            else:
                status = "in_progress"
            collaborators = tuple(self._collaborator_status(round_, name) for name in plan.collaborators)
            models = (
                ("best", "ready" if self._best_round is not None else "pending"),
                ("last", "ready" if self._last_round is not None else "pending"),
                ("init", "ready"),
            )
        done_rounds = round_.number - self._first_round
        progress = done_rounds / max(1, plan.rounds_to_train - self._first_round)
        tasks = tuple(
            (task.name, f"runs {task.function} ({task.aggregation})") for task in plan.tasks.values()
        )
        return ExperimentStatus(
            plan.name,
            status,
            min(progress, 1.0),
            plan.rounds_to_train,
            round_.number,
            collaborators,
            tasks,
            models,
        )

    def _collaborator_status(self, round_: Round, name: str) -> CollaboratorStatus:
        assigned = round_.assignment.get(name, ())
        pending = round_.pending_tasks(name)
        progress = 1.0 if not assigned else (len(assigned) - len(pending)) / len(assigned)
        if name in self._quit_sent:
            status = "quit"
        elif self._finished:
            status = "finishing"
        elif name in round_.stragglers:
            status = "straggler"
        elif not pending:
            status = "done"
        elif name in round_.handed_out:
            status = "training"
        else:
            status = "waiting"
        current = pending[0] if pending and not self._finished else ""
        following = pending[1] if len(pending) > 1 and not self._finished else ""
        return CollaboratorStatus(name, status, progress, round_.number, current, following)
