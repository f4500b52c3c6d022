"""One round's bookkeeping: who must do what, what has arrived, and the running aggregates.

A :class:`Round` is mutated only by :class:`fedagg.federation.federation.Federation`, which serialises
commits and guards the fields that request handlers read with its state lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedagg.federation.aggregation import AGGREGATORS, MetricAverage, TensorAggregator
from fedagg.federation.assigner import Assignment
from fedagg.federation.contribution import (
    Contribution,
    SpooledContribution,
    TensorRole,
    UploadedTensor,
)
from fedagg.federation.errors import InvalidRequest
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN, MetricRecord
from fedagg.federation.plan import TaskSpec
from fedagg.protocol.codec import Float32Array, Shape

TensorKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class RoundResult:
    """What a finished round produced."""

    updated_tensors: dict[str, Float32Array]
    metrics: list[MetricRecord]


@dataclass
class _TaskAggregates:
    layout: dict[TensorKey, tuple[TensorRole, Shape]]
    tensors: dict[str, TensorAggregator] = field(default_factory=dict)
    metrics: dict[TensorKey, MetricAverage] = field(default_factory=dict)


class Round:
    """The state of round ``number``: assignment, arrivals, stragglers and aggregates."""

    def __init__(
        self,
        number: int,
        assignment: Assignment,
        task_order: tuple[str, ...],
        tasks: Mapping[str, TaskSpec],
        model: Mapping[str, Float32Array],
    ) -> None:
        self.number = number
        self.assignment = assignment
        self.task_order = task_order
        self.model = model
        self.received: dict[str, list[str]] = {name: [] for name in assignment}
        self.stragglers: frozenset[str] = frozenset()
        self.started_at: float | None = None
        self.handed_out: set[str] = set()
        self.closing = False
        self.collaborator_metrics: list[MetricRecord] = []
        self._tasks = tasks
        self._aggregates: dict[str, _TaskAggregates] = {}
        self._contributions: list[SpooledContribution] = []
        self._sequence = 0

    # Queries (under the federation's state lock) -------------------------------------------------------------

    def pending_tasks(self, collaborator: str) -> tuple[str, ...]:
        """Assigned tasks whose results have not arrived, in execution order."""
        received = self.received.get(collaborator, [])
        return tuple(task for task in self.assignment.get(collaborator, ()) if task not in received)

    def done(self) -> frozenset[str]:
        """Collaborators with every assigned task in (a collaborator without tasks is done)."""
        return frozenset(name for name in self.assignment if not self.pending_tasks(name))

    def next_sequence(self) -> int:
        """A commit-order number for the next accepted upload."""
        self._sequence += 1
        return self._sequence

    def observe_sequence(self, sequence: int) -> None:
        """Note a commit-order number already used (when replaying spooled uploads)."""
        self._sequence = max(self._sequence, sequence)

    # Validation ---------------------------------------------------------------------------------------------

    def check_tensor(self, task: str, tensor: UploadedTensor) -> None:
        """Check one uploaded tensor against the round's model and the task's layout so far."""
        base = self.model.get(tensor.name)
        if tensor.role == TensorRole.WEIGHTS:
            if tensor.is_delta and base is None:
                raise InvalidRequest(
                    f"delta tensor '{tensor.name}' has no base: it is not in round {self.number}'s model "
                    f"(tensors: {sorted(self.model)})"
                )
            if base is not None and base.shape != tensor.shape:
                raise InvalidRequest(
                    f"tensor '{tensor.name}' has shape {list(tensor.shape)} but round {self.number}'s model "
                    f"has {list(base.shape)}"
                )
        aggregates = self._aggregates.get(task)
        if aggregates is not None:
            expected = aggregates.layout.get(tensor.key)
            if expected is None:
                raise InvalidRequest(
                    f"{tensor.describe()} was not in the first upload of task '{task}' this round; every "
                    f"collaborator must send the same tensors (expected {_describe_layout(aggregates.layout)})"
                )
            if expected != (tensor.role, tensor.shape):
                raise InvalidRequest(
                    f"{tensor.describe()} has shape {list(tensor.shape)}, other uploads of task '{task}' "
                    f"have {list(expected[1])}"
                )

    def check_contribution(self, contribution: Contribution) -> None:
        """Check a complete upload: no duplicates, and the same tensors as the task's other uploads."""
        seen: set[object] = set()
        duplicates: set[str] = set()
        for tensor in contribution.tensors:
            identity = tensor.name if tensor.role == TensorRole.WEIGHTS else tensor.key
            if identity in seen:
                duplicates.add(tensor.name)
            seen.add(identity)
        if duplicates:
            raise InvalidRequest(f"TaskResults.tensors repeats {sorted(duplicates)}")
        for tensor in contribution.tensors:
            self.check_tensor(contribution.task, tensor)
        aggregates = self._aggregates.get(contribution.task)
        keys = {tensor.key for tensor in contribution.tensors}
        if aggregates is not None and keys != set(aggregates.layout):
            missing = sorted(name for name, _ in set(aggregates.layout) - keys)
            raise InvalidRequest(
                f"TaskResults for task '{contribution.task}' lacks {missing}, which other collaborators sent"
            )

    # Aggregation (commit lock held) --------------------------------------------------------------------------

    def fold(self, spooled: SpooledContribution) -> list[MetricRecord]:
        """Add a checked contribution to the running aggregates; return its collaborator metrics."""
        contribution = spooled.contribution
        aggregates = self._aggregates.setdefault(
            contribution.task,
            _TaskAggregates({tensor.key: (tensor.role, tensor.shape) for tensor in contribution.tensors}),
        )
        kind = self._tasks[contribution.task].aggregation
        weight = contribution.weight
        records = []
        for tensor in contribution.tensors:
            if tensor.role == TensorRole.METRIC:
                value = spooled.metric_value(tensor)
                aggregates.metrics.setdefault(tensor.key, MetricAverage()).add(value, weight)
                records.append(
                    MetricRecord(
                        self.number,
                        contribution.collaborator,
                        contribution.task,
                        tensor.name,
                        value,
                        tensor.tags,
                    )
                )
            else:
                aggregator = aggregates.tensors.get(tensor.name)
                if aggregator is None:
                    aggregator = aggregates.tensors[tensor.name] = AGGREGATORS[kind](tensor.shape)
                aggregator.add(spooled.source(tensor, self.model.get(tensor.name)), weight)
        self._contributions.append(spooled)
        return records

    def finish(self) -> RoundResult:
        """Compute the round's aggregates: updated model tensors and aggregated metrics, in plan task order."""
        updated: dict[str, Float32Array] = {}
        metrics: list[MetricRecord] = []
        for task in self.task_order:
            aggregates = self._aggregates.get(task)
            if aggregates is None:
                continue
            for name, aggregator in aggregates.tensors.items():
                result = aggregator.result()
                if result is not None:
                    updated.setdefault(name, result)
            for (name, tags), average in aggregates.metrics.items():
                value = average.result()
                if value is not None:
                    metrics.append(MetricRecord(self.number, AGGREGATOR_ORIGIN, task, name, value, tags))
        self._aggregates.clear()
        self._contributions.clear()
        return RoundResult(updated, metrics)


def _describe_layout(layout: Mapping[TensorKey, tuple[TensorRole, Shape]]) -> str:
    return ", ".join(f"{role} '{name}' {list(shape)}" for (name, _), (role, shape) in layout.items())
