"""Round ends as the federation runs them: install a committed state, close a round when it is due, clean up;
and quit records, which are serialised with round ends so checkpoints only move forward.

A round end is a transaction (:mod:`fedagg.federation.round_close`): it commits with its checkpoint, or leaves the
round closing and is retried with back-off while the federation reports itself unhealthy. A collaborator's
uploads count once all its tasks of the round are in, and a round aggregates only the collaborators its close
decision names as done: stragglers never enter the sums. The weighted sums of a round are folded while its
uploads arrive (:mod:`fedagg.federation.fold`) by the fold worker, a thread of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fedagg.failpoints import failpoint
from fedagg.federation.assigner import Assigner
from fedagg.federation.checkpoint import Checkpoint, ModelShape
from fedagg.federation.collected import CollectedInputs, MoreStragglers, RoundCollector
from fedagg.federation.errors import StorageUnavailable
from fedagg.federation.events import FederationListener, RoundSummary
from fedagg.federation.fold import RoundFold
from fedagg.federation.fold_sums import SumFile
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.memory import trim_heap
from fedagg.federation.metric_log import MetricLog
from fedagg.federation.model_shape import model_growth
from fedagg.federation.plan import FederationPlan
from fedagg.federation.progress_health import FederationHealth, StorageGuard, describe_os_error
from fedagg.federation.round_close import ClosedRound, RoundCloser
from fedagg.federation.rounds import ClaimedContribution, CloseDecision, Round
from fedagg.federation.serving import TensorServer, bounded_names
from fedagg.federation.store import StateStore
from fedagg.federation.stragglers import StragglerPolicy
from fedagg.protocol.model_file import LoadedModel

log = logging.getLogger(__name__)


class RoundEnds:
    """Moves the federation from one committed state to the next. Called with the federation's commit lock held
    (it takes the round lock only around the ledger's fields).

    :attr:`metrics`, :attr:`health` and :attr:`listener` are where the federation's outcomes go, shared with the
    upload commits (read-only attributes).
    """

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        ledger: RoundLedger,
        closer: RoundCloser,
        *,
        assigner: Assigner,
        policy: StragglerPolicy,
        serving: TensorServer,
        metrics: MetricLog,
        health: FederationHealth,
        listener: FederationListener,
        clock: Callable[[], float],
        made_progress: Callable[[], None],
        collector: RoundCollector | None = None,
    ) -> None:
        self._plan = plan
        self._store = store
        self._ledger = ledger
        self._closer = closer
        self._assigner = assigner
        self._policy = policy
        self._serving = serving
        self.metrics = metrics
        self.health = health
        self.listener = listener
        self._clock = clock
        self._made_progress = made_progress
        self._collector = collector
        self._fold: RoundFold | None = None
        self._sum_file = SumFile(store.spool.root)
        """The folds' scratch file, kept from round to round: used by the open round's fold, reset when that fold
        closes, deleted after a failed round end."""
        self._fold_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedagg-fold")

    def install(self, checkpoint: Checkpoint, models: dict[int, LoadedModel]) -> None:
        """Make ``checkpoint`` the committed state, serving ``models``; opens its round unless finished."""
        finished = checkpoint.round_number >= self._plan.rounds_to_train
        round_ = (
            None if finished else self.new_round(models[checkpoint.round_number], checkpoint.initial_shape)
        )
        self._closer.aggregators.load(checkpoint.aggregation)
        figures = self._closer.aggregators.reports()
        if self._fold is not None:
            self._fold.close()
        if round_ is not None and self._collector is not None:
            for collaborator, task, replica, rejected in self._collector.claimed(round_.number):
                if task in round_.assignment.get(collaborator, ()):
                    round_.record(collaborator, task, ClaimedContribution(replica, rejected))
        self._fold = (
            None
            if round_ is None or self._collector is not None
            else RoundFold(
                round_,
                self._closer.aggregators,
                self._ledger.round_lock,
                self._sum_file,
                self.listener,
            )
        )
        # Serve the new round's model before the ledger names the round: a GetTasks answered from the ledger sends
        # the collaborator straight to GetAggregatedTensor for it.
        self._serving.install(models, checkpoint.round_number)
        with self._ledger.round_lock:
            self._ledger.committed = checkpoint
            self._ledger.round = round_
            self._ledger.figures = figures
        if finished:
            self.metrics.close()
        if self._collector is not None:
            self._collector.round_open(
                checkpoint.round_number, finished, self._closer.aggregators.clip_norms()
            )
        self._made_progress()

    def new_round(self, model: LoadedModel, initial_shape: ModelShape | None) -> Round:
        """Round ``model.round_number``, starting from ``model``, with the plan's assignment, and limits derived from
        the initial model's shape (``model``'s own stands in for an unrecorded one)."""
        number = model.round_number
        assignment = self._assigner.assignment(number)
        ordered = {name: assignment[name] for name in self._plan.collaborators if name in assignment}
        shape = initial_shape or ModelShape.of(model.tensors)
        return Round(
            number,
            ordered,
            self._assigner.tasks_in_round(number),
            model,
            self._plan.limits.resolve(shape.data_bytes),
            shape.names,
        )

    def fold_arrivals(self) -> None:
        """Have the fold worker fold the uploads whose turn has come (after a commit; returns at once)."""
        if self._fold is not None:
            self._fold_worker.submit(self._fold.advance)

    def record_quit(self, collaborator: str) -> None:
        """Durably note that ``collaborator`` is being sent its quit job (before the reply leaves)."""
        with self._ledger.round_lock:
            committed = self._ledger.checkpoint()
        if collaborator in committed.quit_sent:
            return
        updated = committed.with_quit(collaborator)
        failpoint("quit.before_record")
        started = self._clock()
        try:
            with StorageGuard(self.health, "quit"):
                self._store.save_checkpoint(updated, new_round=False)
        except StorageUnavailable:
            self.listener.checkpoint_failed()
            raise
        failpoint("quit.recorded")
        with self._ledger.round_lock:
            self._ledger.committed = updated
        self.listener.checkpoint_saved(updated.round_number, self._clock() - started)
        if set(updated.quit_sent) >= set(self._plan.collaborators):
            self.listener.all_quit_jobs_sent()

    def tick(self) -> None:
        """Probe a failing disk, retry a failed round end, close a round whose cutoff passed."""
        if self.health.storage_failing:
            try:
                self._store.probe()
            except OSError:
                pass
            else:
                self.health.storage_ok()
        round_ = self._ledger.current_round()
        if round_ is not None and self._closer.retry_due():
            self.close_if_due(round_)

    def close_if_due(self, round_: Round) -> bool:
        """Close ``round_`` if its decision is made or the straggler policy allows it now; True once committed."""
        ledger = self._ledger
        while True:
            with ledger.round_lock:
                if round_ is not ledger.round:
                    return False
                decision = round_.decision or round_.propose_decision(self._policy, self._clock())
            if decision is None:
                return False
            started = self._clock()
            checked = self._fold.stop(decision) if self._fold is not None else frozenset()
            log.debug("round %d: the fold stopped after %.2fs", round_.number, self._clock() - started)
            lost = self._closer.verify(round_, decision, checked)
            log.debug("round %d: verified after %.2fs", round_.number, self._clock() - started)
            with ledger.round_lock:
                for collaborator, task in lost:
                    round_.forget(collaborator, task)
                round_.decision = None if lost else decision
                committed = ledger.checkpoint()
            if not lost:
                break
            self._made_progress()
        collected = None
        if self._collector is not None:
            collected, decision = self._collected(round_, decision)
            if collected is None:
                return False
        closed = self._closer.attempt(
            round_, decision, committed, None if self._fold is None else self._fold.prefix, collected
        )
        if closed is None:
            if self._fold is not None:  # its scratch file may be what filled the disk: retries read the spool
                self._fold.close()
                self._sum_file.close()
            return False
        self._committed_round(round_, decision, closed)
        return True

    def _collected(
        self, round_: Round, decision: CloseDecision
    ) -> tuple[CollectedInputs | None, CloseDecision]:
        """At a tier's root: the closed round's inputs from the replicas' partials once all are in, and the
        decision they were collected under (without the collaborators whose work a lost replica holds)."""
        assert self._collector is not None
        rank = {task: index for index, task in enumerate(round_.task_order)}
        while True:
            done = sorted(
                (
                    (collaborator, task)
                    for collaborator in decision.done
                    for task, receipt in round_.received.get(collaborator, {}).items()
                    if isinstance(receipt, ClaimedContribution) and not receipt.rejected
                ),
                key=lambda contribution: rank.get(contribution[1], len(rank)),
            )
            try:
                collected = self._collector.collected(
                    round_.number,
                    round_.model,
                    self._closer.aggregators.__getitem__,
                    done,
                    decision.stragglers,
                )
            except MoreStragglers as more:
                if not set(decision.done) - more.collaborators:
                    log.error(
                        "round %d: %s, and then without everybody: waiting for the lost replicas instead",
                        round_.number,
                        more,
                    )
                    return None, decision
                log.warning("round %d: %s; a lost ingest replica holds their work", round_.number, more)
                decision = CloseDecision(
                    tuple(name for name in decision.done if name not in more.collaborators),
                    (*decision.stragglers, *sorted(more.collaborators - set(decision.stragglers))),
                )
                with self._ledger.round_lock:
                    round_.decision = decision
                continue
            except ValueError as error:
                log.error("round %d cannot be divided from the replicas' partials: %s", round_.number, error)
                self.health.round_end_failed()
                self.listener.round_end_failed(round_.number)
                return None, decision
            return collected, decision

    def _committed_round(self, round_: Round, decision: CloseDecision, closed: ClosedRound) -> None:
        checkpoint = closed.checkpoint
        models = {
            number: model
            for number, _ in checkpoint.models
            if (model := self._serving.model(number)) is not None
        }
        models[checkpoint.round_number] = closed.model
        if self._collector is not None:  # a root learns its collaborators' own metrics with the partials
            self.metrics.extend(list(closed.collaborator_metrics))
        self.metrics.extend(list(closed.metrics))
        self.install(checkpoint, models)
        self._clean_up(round_.number, checkpoint)
        trim_heap()
        if decision.stragglers:
            log.warning("round %d closed without stragglers %s", round_.number, list(decision.stragglers))
        left_out = model_growth(round_, round_.accepted(decision.done)).left_out
        if left_out:
            log.warning(
                "round %d: %d tensor(s) not in the model were left out of the next one (a name joins only if it is "
                "in the initial model or more than one collaborator sent it, within limits model size cap %d "
                "bytes): %s",
                round_.number,
                len(left_out),
                round_.limits.model_bytes,
                bounded_names(left_out),
            )
            self.listener.tensors_left_out(round_.number, len(left_out))
        duration = 0.0 if round_.started_at is None else self._clock() - round_.started_at
        self.listener.checkpoint_saved(checkpoint.round_number, closed.checkpoint_seconds)
        self.listener.round_finished(
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
        if checkpoint.round_number >= self._plan.rounds_to_train:
            self.listener.experiment_finished(checkpoint.round_number)

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
