"""A round whose contributions are gathered elsewhere: the seam between a tier's root and its federation.

At a tier's root (:mod:`fedagg.tier`) the collaborators' bytes never reach the federation: ingest replicas spool
them, claim each contribution here, and deliver per-round partial sums. The federation still owns the round (who
must do what, the close decision, the model, checkpoints); a :class:`RoundCollector` tells it what was claimed and,
once the round is closed, gives it the round's inputs built from the merged partials (:class:`CollectedInputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fedagg.federation.aggregators import Aggregator, RoundInputs
from fedagg.federation.metric_log import MetricRecord
from fedagg.protocol.codec import Float32Array
from fedagg.protocol.model_file import LoadedModel


@dataclass(frozen=True)
class CollectedInputs:
    """A closed round's contributions as the round end reads them."""

    tasks: dict[str, RoundInputs]
    """Per task, in plan order, its tensors' inputs (a tensor belongs to the first task that carries it)."""
    summed: dict[str, Float32Array]
    """Tensors taken as summed, without an aggregator (FedCurv's Fisher terms)."""
    metrics: list[MetricRecord]
    """The aggregated metrics of the round (the aggregator's records)."""
    reported: list[MetricRecord]
    """Each counted collaborator's own metrics, as its uploads reported them."""


class MoreStragglers(Exception):
    """The round must also close without ``collaborators`` (a lost replica holds some of their work)."""

    def __init__(self, collaborators: frozenset[str]) -> None:
        super().__init__(f"the round closes without {sorted(collaborators)[:8]} too")
        self.collaborators = collaborators


class RoundCollector(Protocol):
    """What a tier's root tells its federation. Called under the federation's commit lock, on executor threads."""

    def claimed(self, round_number: int) -> Iterable[tuple[str, str, str, str]]:
        """Every (collaborator, task, replica, rejected) claimed in the round (``rejected``: why the replica
        rejected the upload, or empty). MUST include every claim ever granted for the round (after a restart too):
        the federation rebuilds the round's receipts from it."""
        ...

    def collected(
        self,
        round_number: int,
        model: LoadedModel,
        aggregator: Callable[[str], Aggregator],
        done: Iterable[tuple[str, str]],
        stragglers: Iterable[str],
    ) -> CollectedInputs | None:
        """The closed round's inputs once the partials of every contribution in ``done`` ((collaborator, task)) are
        in; None while some are not (the root ticks the federation when a partial arrives). MUST leave out every
        contribution of ``stragglers`` (collaborators the round closes without). MUST NOT return inputs that miss
        or add a contribution of ``done``; MUST raise ``ValueError`` (the round end is retried) when a delivered
        partial holds a contribution not in ``done``, and :class:`MoreStragglers` when contributions of ``done``
        cannot be collected any more (the round is then decided anew without their collaborators)."""
        ...

    def round_open(self, round_number: int, finished: bool, clipping: Mapping[str, float]) -> None:
        """Round ``round_number`` began (or the experiment finished at it), its contributions of the tasks in
        ``clipping`` to be clipped to their norms (:meth:`Aggregator.clip_norm
        <fedagg.federation.aggregators.base.Aggregator.clip_norm>`). MUST NOT block."""
        ...
