"""One round's bookkeeping: who must do what, what has arrived, and the decision to close it.

Nothing here touches the disk or aggregates. A collaborator's uploads are only recorded (as receipts) when they
arrive; they count once all its tasks of the round are in, and only those of the collaborators a
:class:`CloseDecision` names as done enter the round's aggregates (OpenFL's straggler rule: a straggler's partial
work never does). A :class:`Round` is mutated only by :class:`~fedagg.federation.federation.Federation`, which
serialises writers with its commit lock and guards the fields request handlers read with its round lock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedagg.federation.assigner import Assignment
from fedagg.federation.contribution import Contribution, RejectionReason
from fedagg.federation.integrity import FileDigest
from fedagg.federation.metric_log import MetricRecord
from fedagg.federation.plan import ResolvedLimits
from fedagg.federation.spool import SpoolEntry
from fedagg.federation.stragglers import StragglerPolicy
from fedagg.protocol.model_file import LoadedModel


@dataclass(frozen=True)
class AcceptedUpload:
    """A checked contribution, durable in the spool."""

    contribution: Contribution
    entry: SpoolEntry
    digest: FileDigest

    def metric_records(self) -> list[MetricRecord]:
        """The collaborator's reported metrics."""
        c = self.contribution
        return [
            MetricRecord(c.round_number, c.collaborator, c.task, m.name, m.value, m.tags) for m in c.metrics
        ]


@dataclass(frozen=True)
class RejectedUpload:
    """An upload that was received, answered OK and excluded; durable as a rejection record."""

    collaborator: str
    task: str
    reason: RejectionReason
    message: str
    entry: SpoolEntry


@dataclass(frozen=True)
class ClaimedContribution:
    """At a tier's root: a contribution an ingest replica spooled and claimed; its sums arrive in the replica's
    partial (:mod:`fedagg.tier.collection`), never as a spool file here."""

    replica: str
    rejected: str = ""
    """Set when the replica rejected the upload ("<reason>: <why>"): the task is done, nothing is aggregated."""


Receipt = AcceptedUpload | RejectedUpload | ClaimedContribution


@dataclass(frozen=True)
class CloseDecision:
    """Which collaborators a round closes with; everyone else assigned is a straggler."""

    done: tuple[str, ...]
    stragglers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"done": list(self.done), "stragglers": list(self.stragglers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CloseDecision:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(data["done"]), tuple(data["stragglers"]))


@dataclass
class Round:
    """The state of round ``number``: assignment, arrivals and the close decision."""

    number: int
    assignment: Assignment
    task_order: tuple[str, ...]
    model: LoadedModel
    limits: ResolvedLimits
    initial_names: frozenset[str]
    """The initial model's tensor names: a tensor not in :attr:`model` may join the next model under this name."""
    received: dict[str, dict[str, Receipt]] = field(default_factory=dict)
    started_at: float | None = None
    handed_out: set[str] = field(default_factory=set)
    decision: CloseDecision | None = None
    _sequence: int = 0

    @property
    def closing(self) -> bool:
        """Whether the round's close has been decided (it may still be being written, or retried)."""
        return self.decision is not None

    @property
    def stragglers(self) -> frozenset[str]:
        """Collaborators the close decision left out."""
        return frozenset(self.decision.stragglers) if self.decision else frozenset()

    def propose_decision(self, policy: StragglerPolicy, now: float) -> CloseDecision | None:
        """The close decision the straggler policy allows now, if any."""
        done = self.done()
        elapsed = None if self.started_at is None else now - self.started_at
        if not policy.round_may_end(len(done), len(self.assignment), elapsed):
            return None
        return CloseDecision(
            tuple(name for name in self.assignment if name in done),
            tuple(name for name in self.assignment if name not in done),
        )

    def pending_tasks(self, collaborator: str) -> tuple[str, ...]:
        """Assigned tasks whose results have not arrived, in execution order."""
        received = self.received.get(collaborator, {})
        return tuple(task for task in self.assignment.get(collaborator, ()) if task not in received)

    def done(self) -> frozenset[str]:
        """Collaborators with every assigned task in (a collaborator without tasks is done)."""
        return frozenset(name for name in self.assignment if not self.pending_tasks(name))

    def has_received(self, collaborator: str, task: str) -> bool:
        """Whether ``collaborator``'s results for ``task`` are in (accepted or rejected)."""
        return task in self.received.get(collaborator, {})

    def rejected_tasks(self, collaborator: str) -> tuple[str, ...]:
        """Tasks whose upload was rejected this round."""
        receipts = self.received.get(collaborator, {})
        return tuple(
            task
            for task, receipt in receipts.items()
            if isinstance(receipt, RejectedUpload)
            or (isinstance(receipt, ClaimedContribution) and receipt.rejected)
        )

    def next_sequence(self) -> int:
        """A commit-order number for the next spool entry."""
        self._sequence += 1
        return self._sequence

    def observe_sequence(self, sequence: int) -> None:
        """Note a commit-order number already used (when replaying the spool)."""
        self._sequence = max(self._sequence, sequence)

    def record(self, collaborator: str, task: str, receipt: Receipt) -> None:
        """Note an upload that is durable in the spool."""
        self.received.setdefault(collaborator, {})[task] = receipt

    def forget(self, collaborator: str, task: str) -> None:
        """Drop a receipt whose upload was lost (quarantined): the task is handed out again."""
        self.received.get(collaborator, {}).pop(task, None)

    def accepted(self, collaborators: Collection[str]) -> list[AcceptedUpload]:
        """The accepted uploads of ``collaborators``: by task in plan order, then in the plan's collaborator order."""
        order = {name: index for index, name in enumerate(self.assignment)}
        uploads = [
            receipt
            for name in sorted(collaborators, key=lambda name: order.get(name, len(order)))
            for receipt in self.received.get(name, {}).values()
            if isinstance(receipt, AcceptedUpload)
        ]
        rank = {task: index for index, task in enumerate(self.task_order)}
        return sorted(uploads, key=lambda upload: rank.get(upload.contribution.task, len(rank)))
