"""Closing a round: one transaction whose commit point is the checkpoint.

The steps, in the order a crash must respect:

1. the close decision (who is done, who is a straggler) is recorded in the round's spool directory, so a round
   redone after a crash closes with the very same collaborators;
2. the aggregates are computed block by block from the spooled uploads of the done collaborators (for the weighted
   average, from the sums folded while they arrived, :mod:`fedagg.federation.fold`, and the rest of the spool) and
   streamed into the next round's model file (written atomically, its digest kept);
3. the round's metrics are written;
4. the new checkpoint is written: **the commit point**. Before it, a restart redoes the round from the spool
   (every earlier step is idempotent); after it, the next round has begun;
5. the best model (when a validate_agg metric improved) and the last model are published: only now, so what
   GetTrainedModel serves is always a committed round's model. A failure or crash before this step leaves the
   previous round's files served; a restart publishes what the checkpoint names
   (:mod:`fedagg.federation.recovery`), and a failure to publish after the commit is logged and tried again at
   the next round end, never undone.

Before the transaction, the uploads it will aggregate are verified against their checksums (but those the fold
verified just before folding them): a corrupt one is
quarantined and its task handed out again (the round is then decided anew). A transaction that fails (a full or
failing disk) commits nothing: the round stays closing, the federation reports itself unhealthy, and the round
end is retried with exponential back-off until it commits.

Nothing in memory changes here: the caller installs the returned :class:`ClosedRound` after the commit. Steps
after the commit (pruning old spool and models) belong to the caller and may fail without harm.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fedagg.failpoints import failpoint
from fedagg.federation.aggregators.noise import experiment_seed
from fedagg.federation.aggregators.privacy import GaussianMechanism
from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.collected import CollectedInputs
from fedagg.federation.events import FederationListener
from fedagg.federation.fold import verify_upload
from fedagg.federation.integrity import CorruptFile, FileDigest
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN, MetricRecord
from fedagg.federation.model_building import BuiltModel, ModelBuilder, Prefixes, TaskAggregators
from fedagg.federation.plan import FederationPlan
from fedagg.federation.progress_health import FederationHealth, describe_os_error
from fedagg.federation.published import ModelOutputs, PublishedModels
from fedagg.federation.replay import quarantine_entry
from fedagg.federation.rounds import AcceptedUpload, CloseDecision, Round
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import LoadedModel

__all__ = ["VALIDATE_AGG_TAG", "ClosedRound", "MetricAverage", "ModelOutputs", "RetrySchedule", "RoundCloser"]
"""ModelOutputs (where the models are published) lives in :mod:`.published`; it is exported here too."""

log = logging.getLogger(__name__)

VALIDATE_AGG_TAG = "validate_agg"


@dataclass(frozen=True)
class ClosedRound:
    """What a committed round end produced."""

    checkpoint: Checkpoint
    model: LoadedModel
    metrics: tuple[MetricRecord, ...]
    collaborator_metrics: tuple[MetricRecord, ...]
    aggregation_seconds: float
    checkpoint_seconds: float


class MetricAverage:
    """Weighted average of a scalar metric over the collaborators that reported it."""

    def __init__(self) -> None:
        self._weighted_sum = 0.0
        self._total_weight = 0.0

    def add(self, value: float, weight: float) -> None:
        """Take one collaborator's value."""
        self._weighted_sum += value * weight
        self._total_weight += weight

    def result(self) -> float | None:
        """The average, or None when the total weight is zero."""
        return None if self._total_weight == 0 else self._weighted_sum / self._total_weight


class RetrySchedule:
    """Exponential back-off of a failed round end: 1 s, doubling up to 60 s. Used under the commit lock only."""

    INITIAL_SECONDS = 1.0
    MAXIMUM_SECONDS = 60.0

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._delay = self.INITIAL_SECONDS
        self._due: float | None = None

    def failed(self) -> float:
        """Note a failure; return the delay until the next attempt."""
        delay = self._delay
        self._due = self._clock() + delay
        self._delay = min(delay * 2, self.MAXIMUM_SECONDS)
        return delay

    def succeeded(self) -> None:
        """Note a success: the next failure starts the back-off afresh."""
        self._delay, self._due = self.INITIAL_SECONDS, None

    def due(self) -> bool:
        """Whether an attempt may be made now."""
        return self._due is None or self._clock() >= self._due


class RoundCloser:
    """Verifies and runs the round-end transaction for a federation, and schedules its retries (module docstring).

    Called with the federation's commit lock held, which guards its retry schedule.
    """

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        outputs: ModelOutputs,
        health: FederationHealth,
        listener: FederationListener,
        clock: Callable[[], float],
    ) -> None:
        self._plan = plan
        self._store = store
        self._health = health
        self._listener = listener
        self._retries = RetrySchedule(clock)
        self._published = PublishedModels(store, outputs)
        self._failpoint = failpoint
        self.aggregators = TaskAggregators(plan)
        self._builder = ModelBuilder(plan, store, self.aggregators)
        self._noise_seeded = not any(task.aggregation.privacy is not None for task in plan.tasks.values())

    def retry_due(self) -> bool:
        """Whether a round end may be attempted now (always, unless the last one failed recently)."""
        return self._retries.due()

    def verify(
        self, round_: Round, decision: CloseDecision, checked: frozenset[Path] = frozenset()
    ) -> list[tuple[str, str]]:
        """Check the uploads ``decision`` aggregates, but those whose spool file is in ``checked`` (the fold checked
        them just before folding them); quarantine corrupt ones and return their (collaborator, task)."""
        lost = []
        for upload in round_.accepted(decision.done):
            contribution = upload.contribution
            if upload.entry.path in checked:
                continue
            try:
                verify_upload(upload)
            except (CorruptFile, FileNotFoundError) as error:
                if upload.entry.path.exists():
                    quarantine_entry(self._store, upload.entry, str(error))
                log.error(
                    "round %d: %s's acknowledged results for %r are corrupt on disk; the task is handed out again",
                    round_.number,
                    contribution.collaborator,
                    contribution.task,
                )
                lost.append((contribution.collaborator, contribution.task))
        return lost

    def attempt(
        self,
        round_: Round,
        decision: CloseDecision,
        committed: Checkpoint,
        folded: Prefixes | None = None,
        collected: CollectedInputs | None = None,
    ) -> ClosedRound | None:
        """Run the transaction; on failure schedule a retry, report it and return None. ``folded`` gives the sums
        folded as the uploads arrived (:mod:`fedagg.federation.fold`), if any; ``collected`` the round's inputs
        at a tier's root."""
        try:
            closed = self.close(round_, decision, committed, folded, collected)
        except OSError as error:
            self._health.storage_failed("round_end", error)
            self._listener.checkpoint_failed()
            problem = describe_os_error(error)
        except CorruptFile as error:
            problem = str(error)
        except Exception as error:  # a bug must not wedge the federation: log it, count it, retry
            log.exception("round %d: unexpected error while closing", round_.number)
            problem = repr(error)
        else:
            self._retries.succeeded()
            self._health.round_end_ok()
            self._health.storage_ok("round_end")
            return closed
        delay = self._retries.failed()
        log.error("round %d could not end (%s); retrying in %.0fs", round_.number, problem, delay)
        self._health.round_end_failed()
        self._listener.round_end_failed(round_.number)
        return None

    def close(
        self,
        round_: Round,
        decision: CloseDecision,
        committed: Checkpoint,
        folded: Prefixes | None = None,
        collected: CollectedInputs | None = None,
    ) -> ClosedRound:
        """Write the round's outputs and the next checkpoint; raises OSError (nothing committed) on disk errors."""
        store = self._store
        self._seed_noise()
        store.spool.record_close_decision(round_.number, decision.to_json())
        uploads = round_.accepted(decision.done)
        started = time.monotonic()
        next_round = round_.number + 1
        built: list[BuiltModel] = []
        saved = self.aggregators.saved()
        try:
            digest = store.write_model(
                next_round,
                lambda writer: built.append(
                    self._builder.build(round_, uploads, committed, writer, folded, collected)
                ),
            )
        except BaseException:
            self.aggregators.load(saved)  # nothing was committed: the aggregators forget this attempt
            raise
        finally:
            round_.model.release()
        aggregation_seconds = time.monotonic() - started
        try:
            if collected is None:
                metrics = self._aggregate_metrics(round_, uploads)
                arrivals = sorted(round_.accepted(round_.received), key=lambda upload: upload.entry.sequence)
                reported = [record for upload in arrivals for record in upload.metric_records()]
            else:
                metrics, reported = collected.metrics, collected.reported
            return self._commit(round_, committed, metrics, reported, digest, built[0], aggregation_seconds)
        except BaseException:
            self.aggregators.load(saved)
            raise

    def _seed_noise(self) -> None:
        """Give every task's differential privacy the experiment seed of the state directory (made once)."""
        if self._noise_seeded:
            return
        seed = experiment_seed(self._store.root)
        for task in self._plan.tasks:
            mechanism = self.aggregators[task]
            if isinstance(mechanism, GaussianMechanism):
                mechanism.experiment_seed = seed
        self._noise_seeded = True

    def _commit(
        self,
        round_: Round,
        committed: Checkpoint,
        metrics: list[MetricRecord],
        collaborator_metrics: list[MetricRecord],
        digest: FileDigest,
        built: BuiltModel,
        aggregation_seconds: float,
    ) -> ClosedRound:
        store = self._store
        next_round = round_.number + 1
        self._failpoint("round_end.model_written")
        store.save_round_metrics(
            round_.number, [record.to_json() for record in (*collaborator_metrics, *metrics)]
        )
        checkpoint = replace(
            self._next_checkpoint(round_, committed, metrics, next_round, digest),
            aggregation=self.aggregators.saved(),
            slots=built.slots,
        )
        started = time.monotonic()
        store.save_checkpoint(checkpoint, new_round=True)
        checkpoint_seconds = time.monotonic() - started
        self._failpoint("round_end.committed")
        self._published.publish(checkpoint, committed)
        self._failpoint("round_end.outputs_published")
        model = store.map_model(next_round)  # written just now, its digest taken as it was written
        return ClosedRound(
            checkpoint,
            model,
            tuple(metrics),
            tuple(collaborator_metrics),
            aggregation_seconds,
            checkpoint_seconds,
        )

    def _next_checkpoint(
        self,
        round_: Round,
        committed: Checkpoint,
        metrics: list[MetricRecord],
        next_round: int,
        digest: FileDigest,
    ) -> Checkpoint:
        oldest_kept = next_round - self._plan.rounds_kept + 1
        kept = tuple((number, d) for number, d in committed.models if oldest_kept <= number < next_round)
        checkpoint = replace(committed, round_number=next_round, models=(*kept, (next_round, digest)))
        if self._plan.evaluation:
            log.info("evaluation run: round %d's models are not published", round_.number)
            return checkpoint
        checkpoint = replace(checkpoint, last_round=next_round)
        scores = [record.value for record in metrics if VALIDATE_AGG_TAG in record.tags]
        if scores and max(scores) > committed.best:
            log.info(
                "round %d's model is the best so far (%s = %.6g)",
                round_.number,
                VALIDATE_AGG_TAG,
                max(scores),
            )
            checkpoint = replace(checkpoint, best_score=max(scores), best_round=round_.number)
        return checkpoint

    # Aggregation ------------------------------------------------------------------------------------------------

    def _aggregate_metrics(self, round_: Round, uploads: list[AcceptedUpload]) -> list[MetricRecord]:
        averages: dict[tuple[str, str, tuple[str, ...]], MetricAverage] = {}
        for upload in uploads:
            contribution = upload.contribution
            for metric in contribution.metrics:
                key = (contribution.task, metric.name, metric.tags)
                averages.setdefault(key, MetricAverage()).add(metric.value, contribution.weight)
        records = []
        for (task, name, tags), average in averages.items():
            value = average.result()
            if value is not None and math.isfinite(value):
                records.append(MetricRecord(round_.number, AGGREGATOR_ORIGIN, task, name, value, tags))
        return records
