"""The root's side of its federation's rounds: claims in, merged partials out, the round's phase published.

:class:`RootRounds` is the federation's :class:`~fedagg.federation.collected.RoundCollector` at a tier's root. The
federation records a granted claim as the contribution's receipt (:meth:`Federation.claim
<fedagg.federation.federation.Federation.claim>`), closes the round as a single pod does, and then asks
:meth:`RootRounds.collected` for the round's inputs: until every replica holding a claim of the round has
delivered its partial, the answer is None and the round is published COLLECTING, which tells the replicas to
deliver. The inputs are divided from the merged partial (:mod:`fedagg.tier.division`), so the aggregators run
once, here, as in a single pod. The round's notices carry the clipping norm of each task under differential privacy
(the federation's aggregators', as committed with the last round): the replicas clip to it.

The round's stragglers (the collaborators its close decision leaves out) are left out of the partials as a single
pod leaves out their partial work: the COLLECTING notice names them, and a replica that folded some of their work
folds its spool again without it. A replica lost for ``lost_replica_seconds`` (silent) while it holds contributions
of a closed round makes their collaborators stragglers too (:class:`~fedagg.federation.collected.MoreStragglers`):
the round is decided anew without them, and counted (``fedagg_tier_lost_contributions_total{replica}``).

Called by the federation under its commit lock (executor threads); the collection, which the tier service feeds
on the event loop meanwhile, is thread-safe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping

from fedagg.federation.aggregators import Aggregator, RoundInputs
from fedagg.federation.aggregators.base import block_elements_for
from fedagg.federation.collected import CollectedInputs, MoreStragglers
from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.federation import Federation
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN, MetricRecord
from fedagg.federation.sources import ModelValues, TensorSource
from fedagg.protocol import tier_pb2
from fedagg.protocol.codec import Float32Array
from fedagg.protocol.model_file import LoadedModel
from fedagg.tier.claims import ClaimBook, ClaimDecision, ClaimOutcome
from fedagg.tier.collection import PartialCollection
from fedagg.tier.division import task_inputs
from fedagg.tier.partials import RoundPartial
from fedagg.tier.round_notices import RoundNotices

log = logging.getLogger(__name__)


class RootRounds:
    """A tier root's claims, collection and round notices, as its federation sees them (module docstring)."""

    def __init__(
        self,
        book: ClaimBook,
        collection: PartialCollection,
        notices: RoundNotices,
        aggregation_bytes: int,
    ) -> None:
        self.book = book
        self.collection = collection
        self.notices = notices
        self._aggregation_bytes = aggregation_bytes
        self._clipping: tuple[tuple[str, float], ...] = ()
        """(task, norm) of the open round: what its notices tell the replicas to clip to."""

    def claimed(self, round_number: int) -> Iterable[tuple[str, str, str, str]]:
        for replica, contributions in self.book.holders(round_number).items():
            for collaborator, task in sorted(contributions):
                yield collaborator, task, replica, ""
        for (collaborator, task), why in sorted(self.book.rejected(round_number).items()):
            yield collaborator, task, self.book.holder(round_number, collaborator, task) or "", why

    def round_open(self, round_number: int, finished: bool, clipping: Mapping[str, float]) -> None:
        self.collection.forget_before(round_number)
        self.book.prune_before(round_number - 1)  # the last round's claims stay, for a replica that lags
        self._clipping = tuple(sorted(clipping.items()))
        phase = tier_pb2.FINISHED if finished else tier_pb2.OPEN
        self.notices.publish(round_number, phase, clipping_norms=self._clipping)

    def collected(
        self,
        round_number: int,
        model: LoadedModel,
        aggregator: Callable[[str], Aggregator],
        done: Iterable[tuple[str, str]],
        stragglers: Iterable[str],
    ) -> CollectedInputs | None:
        expected = list(done)
        excluded = frozenset(stragglers)
        self.collection.exclude(round_number, excluded)
        self.notices.publish(round_number, tier_pb2.COLLECTING, tuple(sorted(excluded)), self._clipping)
        collection = self.collection.collected(round_number)
        if collection is None:
            return None
        lost = frozenset(collaborator for collaborator, _ in collection.stragglers) - excluded
        if lost:
            raise MoreStragglers(lost)
        merged = collection.merged
        unexpected = merged.contributions - set(expected)
        if unexpected:
            raise ValueError(
                f"round {round_number}: the replicas' partials hold contributions the round does not count: "
                f"{sorted(unexpected)[:8]}"
            )
        return self._inputs(merged, model, aggregator, [task for _, task in expected])

    def _inputs(
        self,
        merged: RoundPartial,
        model: LoadedModel,
        aggregator: Callable[[str], Aggregator],
        task_order: list[str],
    ) -> CollectedInputs:
        def base(name: str) -> TensorSource | None:
            return ModelValues(model, name) if name in model.tensors else None

        rank = {task: index for index, task in reversed(list(enumerate(task_order)))}
        ordered = sorted(merged.tasks, key=lambda name: rank.get(name, len(rank)))
        tasks: dict[str, RoundInputs] = {}
        summed: dict[str, Float32Array] = {}
        owned: set[str] = set()
        block = block_elements_for(self._aggregation_bytes, 1)
        for task in ordered:
            inputs, plain = task_inputs(
                merged.round_number, task, merged.tasks[task], aggregator(task), base, owned, block
            )
            owned.update(tensor.name for tensor in inputs.tensors)
            owned.update(plain)
            summed.update(plain)
            if inputs.tensors or inputs.clipped is not None:  # privacy counts a round of metrics too
                tasks[task] = inputs
        return CollectedInputs(tasks, summed, _metric_records(merged), _reported_records(merged, ordered))


def _reported_records(merged: RoundPartial, ordered: list[str]) -> list[MetricRecord]:
    """The collaborators' own metrics, by task in ``ordered`` (plan order), then in the order the contributions were
    folded."""
    return [
        MetricRecord(merged.round_number, collaborator, task, name, value, tags)
        for task in ordered
        for collaborator, _ in merged.tasks[task].contributors
        for (name, tags), value in merged.tasks[task].reported.get(collaborator, ())
    ]


def _metric_records(merged: RoundPartial) -> list[MetricRecord]:
    records = []
    for task, part in merged.tasks.items():
        for (name, tags), _ in part.metrics.items():
            value = part.metric_average((name, tags))
            if value is not None and math.isfinite(value):
                records.append(MetricRecord(merged.round_number, AGGREGATOR_ORIGIN, task, name, value, tags))
    return records


class CountedClaims:
    """A serving root's claims: a new claim is made durable and counted by the federation in one step (under its
    commit lock), so a claim is granted only for results the round takes. Thread-safe (the book and the
    federation are)."""

    def __init__(self, federation: Federation, book: ClaimBook) -> None:
        self._federation = federation
        self._book = book

    def claim(
        self, round_number: int, collaborator: str, task: str, replica: str, rejected: str = ""
    ) -> ClaimDecision:
        if self._book.holder(round_number, collaborator, task) is not None:
            return self._book.claim(round_number, collaborator, task, replica, rejected)
        decisions: list[ClaimDecision] = []

        def hold() -> str | None:
            decision = self._book.claim(round_number, collaborator, task, replica, rejected)
            decisions.append(decision)
            return None if decision.outcome == ClaimOutcome.PENDING else decision.holder

        try:
            self._federation.claim(collaborator, round_number, task, hold, rejected)
        except FailedPrecondition:
            if self._book.holder(round_number, collaborator, task) is None:
                raise
            return self._book.claim(
                round_number, collaborator, task, replica
            )  # another replica counted it first
        return decisions[0]
