"""A round's partial aggregate at one ingest replica: float64 weighted sums and weights per task and tensor.

An ingest replica folds each contribution it accepted (and the root let it claim) into the round's
:class:`RoundPartial`: per task, ``sum(w_i * x_i)`` per tensor in float64 (the operation of the standalone round
end and the fold, :func:`~fedagg.federation.aggregators.base.add_weighted`), the weight summed per tensor, and ``sum(w_i * m_i)`` with ``sum(w_i)`` per metric. Under
differential privacy each contribution is clipped before it is folded, and the partial counts the clipped ones.
The root adds the replicas' partials (:func:`merge`, in replica-name order) and divides once
(:meth:`TaskPartial.average`). The only difference from a single pod is the order of the float64 additions, which
changes the float64 sum in its last bits at most: the float32 result differs from a single pod's by a float32
rounding at most.

A partial names its contributors, (collaborator, weight) in fold order, so the root can check that it holds
exactly the contributions it let that replica claim. It is identified by (round, replica, generation): the
generation is the replica's start count, so a partial rebuilt after a restart is told from a late copy of the old.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedagg.federation.aggregators.base import Float64Array, add_weighted, finite_float32
from fedagg.protocol.codec import FLOAT32, Float32Array, Shape

MetricKey = tuple[str, tuple[str, ...]]
"""A metric's name and tags."""


@dataclass
class MetricSum:
    """``sum(w_i * m_i)`` and ``sum(w_i)`` of one metric over the contributions that reported it."""

    weighted: float = 0.0
    weight: float = 0.0

    def add(self, value: float, weight: float) -> None:
        """Take one contribution's value."""
        self.weighted += value * weight
        self.weight += weight


@dataclass
class TensorSum:
    """One tensor's ``sum(w_i * x_i)`` (flattened, float64) and ``sum(w_i)``."""

    shape: Shape
    values: Float64Array
    weight: float = 0.0
    plain: bool = False
    """Summed unweighted (FedCurv's Fisher terms): ``sum(x_i)``, what the root takes as it is."""
    absent: list[str] = field(default_factory=list)
    """The task's contributors whose contribution lacks this tensor (what the root needs for a tensor's own
    contributors and weights: differential privacy's sensitivity share)."""

    @property
    def count(self) -> int:
        """As a :class:`~fedagg.federation.aggregators.base.FoldedPrefix`: the sum stands for one contribution
        (the merged one the root's aggregator sees, :mod:`fedagg.tier.division`)."""
        return 1

    def block(self, start: int, stop: int) -> Float64Array:
        """As a folded prefix: the sum's values ``[start, stop)``, a fresh array."""
        return self.values[start:stop].copy()

    @classmethod
    def zeros(cls, shape: Shape, plain: bool = False) -> TensorSum:
        """An empty sum of a tensor of ``shape``."""
        return cls(shape, np.zeros(math.prod(shape), dtype=np.float64), plain=plain)


@dataclass
class TaskPartial:
    """One task's sums in a round."""

    contributors: list[tuple[str, float]] = field(default_factory=list)
    """(collaborator, weight) of each folded contribution, in fold order."""
    reported: dict[str, list[tuple[MetricKey, float]]] = field(default_factory=dict)
    """Each contributor's own metrics, as its upload reported them (the root records them as one pod does)."""
    tensors: dict[str, TensorSum] = field(default_factory=dict)
    metrics: dict[MetricKey, MetricSum] = field(default_factory=dict)
    clipping_norm: float | None = None
    """The norm every contribution's update was clipped to before it was folded (None: not clipped)."""
    clipped: int = 0
    """How many contributions were clipped (their update's norm was above :attr:`clipping_norm`)."""

    def holders(self, tensor: str) -> list[tuple[str, float]]:
        """(collaborator, weight) of the contributions that hold ``tensor``, in fold order."""
        absent = set(self.tensors[tensor].absent)
        return [
            (collaborator, weight) for collaborator, weight in self.contributors if collaborator not in absent
        ]

    def take_clipping(self, clipping_norm: float | None, clipped: int, source: str) -> None:
        """Count ``clipped`` more clipped contributions, clipped to ``clipping_norm`` (raises ValueError when the
        task's earlier contributions were clipped otherwise; ``source`` names where they come from)."""
        if self.contributors and clipping_norm != self.clipping_norm:
            raise ValueError(
                f"{source} clipped to {clipping_norm}, the contributions before it to {self.clipping_norm}"
            )
        self.clipping_norm = clipping_norm
        self.clipped += clipped

    def average(self, tensor: str) -> Float32Array | None:
        """``sum(w_i * x_i) / sum(w_i)`` of ``tensor`` as float32 (None when its total weight is not positive)."""
        summed = self.tensors[tensor]
        if summed.plain:
            return finite_float32(summed.values).reshape(summed.shape)
        if summed.weight <= 0:
            return None
        averaged: Float32Array = (summed.values / summed.weight).astype(FLOAT32).reshape(summed.shape)
        return averaged

    def metric_average(self, key: MetricKey) -> float | None:
        """The weighted average of a metric (None when its total weight is zero)."""
        summed = self.metrics[key]
        return None if summed.weight == 0 else summed.weighted / summed.weight


@dataclass
class RoundPartial:
    """One replica's partial aggregate of one round (module docstring). Single-owner: the replica's folder."""

    round_number: int
    replica: str
    generation: int
    tasks: dict[str, TaskPartial] = field(default_factory=dict)

    @property
    def contributions(self) -> frozenset[tuple[str, str]]:
        """(collaborator, task) of every folded contribution."""
        return frozenset(
            (collaborator, task) for task, part in self.tasks.items() for collaborator, _ in part.contributors
        )

    @property
    def sum_bytes(self) -> int:
        """Bytes of the float64 sums (what delivering the partial sends, besides its header)."""
        return sum(summed.values.nbytes for part in self.tasks.values() for summed in part.tensors.values())

    def fold(
        self,
        task: str,
        collaborator: str,
        weight: float,
        tensors: Mapping[str, Float32Array],
        metrics: Iterable[tuple[MetricKey, float]] = (),
        plain: Callable[[str], bool] | None = None,
        clipping: tuple[float, bool] | None = None,
    ) -> None:
        """Add one contribution (its weight tensors by name, its metrics) to the task's sums; the tensors
        ``plain`` names are summed unweighted. ``clipping``: the norm its update was clipped to, and whether it
        was clipped."""
        part = self.tasks.setdefault(task, TaskPartial())
        if any(name == collaborator for name, _ in part.contributors):
            raise ValueError(f"{collaborator}'s contribution to {task!r} is already in the partial")
        for name, values in tensors.items():
            kept = part.tensors.get(name)
            if kept is not None and kept.shape != tuple(values.shape):
                raise ValueError(
                    f"{collaborator}'s tensor '{name}' has shape {list(values.shape)}, the partial's is "
                    f"{list(kept.shape)}"
                )
        norm, clipped = (None, False) if clipping is None else clipping
        part.take_clipping(norm, int(clipped), f"{collaborator}'s contribution to {task!r} was")
        earlier = [name for name, _ in part.contributors]
        for name, kept in part.tensors.items():
            if name not in tensors:
                kept.absent.append(collaborator)
        for name, values in tensors.items():
            summed = part.tensors.get(name)
            if summed is None:
                summed = part.tensors[name] = TensorSum.zeros(
                    tuple(values.shape), plain is not None and plain(name)
                )
                summed.absent = list(earlier)
            add_weighted(summed.values, values.reshape(-1), 1.0 if summed.plain else weight)
            summed.weight += weight
        reported = part.reported[collaborator] = list(metrics)
        for key, value in reported:
            part.metrics.setdefault(key, MetricSum()).add(value, weight)
        part.contributors.append((collaborator, weight))


def merge(round_number: int, partials: Iterable[RoundPartial]) -> RoundPartial:
    """The sum of the replicas' partials of a round, added in replica-name order (a contribution in two partials
    is refused: exactly once is the claims' job, this is its last check)."""
    merged = RoundPartial(round_number, "", 0)
    for partial in sorted(partials, key=lambda partial: partial.replica):
        if partial.round_number != round_number:
            raise ValueError(
                f"{partial.replica}'s partial is of round {partial.round_number}, not {round_number}"
            )
        twice = merged.contributions & partial.contributions
        if twice:
            raise ValueError(
                f"{partial.replica}'s partial repeats contributions already merged: {sorted(twice)}"
            )
        for task, part in partial.tasks.items():
            into = merged.tasks.setdefault(task, TaskPartial())
            into.take_clipping(part.clipping_norm, part.clipped, f"{partial.replica}'s contributions were")
            earlier = [name for name, _ in into.contributors]
            for name, kept in into.tensors.items():
                if name not in part.tensors:
                    kept.absent.extend(collaborator for collaborator, _ in part.contributors)
            into.contributors.extend(part.contributors)
            into.reported.update(part.reported)
            for name, summed in part.tensors.items():
                target = into.tensors.get(name)
                if target is None:
                    target = into.tensors[name] = TensorSum.zeros(summed.shape, summed.plain)
                    target.absent = list(earlier)
                elif target.shape != summed.shape:
                    raise ValueError(
                        f"{partial.replica}'s sum of '{name}' has shape {list(summed.shape)}, "
                        f"the others' {list(target.shape)}"
                    )
                target.absent.extend(summed.absent)
                target.values += summed.values
                target.weight += summed.weight
            for key, metric in part.metrics.items():
                total = into.metrics.setdefault(key, MetricSum())
                total.weighted += metric.weighted
                total.weight += metric.weight
    return merged
