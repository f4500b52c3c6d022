"""Update clipping: each collaborator's update (its tensors minus the round's global model) is scaled down to at
most a norm, over every tensor of the task together, before another aggregator combines the results.

A tensor the global model does not hold (optimizer state a runner sends as ``trained``, a new layer) has base 0:
its values are its update, counted in the norm and scaled with the rest, so no tensor escapes the clip.

The norms take one pass over the spool; the clipped values are computed block by block as they are read.
Clipping is a projection onto the ball of radius C around the model, which never moves two updates further
apart: a wrapped :class:`BoundedAggregator` keeps its sensitivity share (:class:`BoundedClippedUpdates`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import overload

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    AggregatorState,
    BoundedAggregator,
    Emit,
    Float64Array,
    RoundInputs,
    TensorInputs,
)
from fedagg.federation.sources import TensorSource
from fedagg.protocol.codec import FLOAT32, Float32Array


class ClippedSource:
    """``base + scale * (x - base)`` (``scale * x`` without a base): a contribution whose update is scaled."""

    def __init__(self, base: TensorSource | None, source: TensorSource, scale: float) -> None:
        self._base = base
        self._source = source
        self._scale = scale
        self.size = source.size

    def block(self, start: int, stop: int) -> Float32Array:
        if self._scale >= 1.0:
            return self._source.block(start, stop)
        base = base_block(self._base, start, stop)
        update = self._source.block(start, stop) - base
        return (base + self._scale * update).astype(FLOAT32)


def base_block(base: TensorSource | None, start: int, stop: int) -> Float64Array:
    """One block of a tensor's base in float64: the global model's values, or zeros for a tensor it lacks."""
    if base is None:
        return np.zeros(stop - start, dtype=np.float64)
    return base.block(start, stop).astype(np.float64)


def update_norms(inputs: RoundInputs) -> Float64Array:
    """Each collaborator's update norm over every tensor of the task (base 0 where the model has none)."""
    squared = np.zeros(len(inputs.collaborators), dtype=np.float64)
    for tensor in inputs.tensors:
        for start, stop in tensor.blocks():
            base = base_block(tensor.base, start, stop)
            for index, source in zip(tensor.contributors, tensor.sources, strict=True):
                squared[index] += float(np.sum((source.block(start, stop) - base) ** 2))
    return np.sqrt(squared)


def clipped(inputs: RoundInputs, scales: Float64Array) -> RoundInputs:
    """The task with every contribution's update scaled by its collaborator's factor."""
    tensors = tuple(
        replace(
            tensor,
            sources=tuple(
                ClippedSource(tensor.base, source, float(scales[index]))
                for index, source in zip(tensor.contributors, tensor.sources, strict=True)
            ),
        )
        for tensor in inputs.tensors
    )
    return replace(inputs, tensors=tensors)


def clip_scales(norms: Float64Array, clipping_norm: float) -> Float64Array:
    """``min(1, C / ||update||)`` per collaborator (a zero update is left as it is)."""
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, clipping_norm / norms)


class HeldValues:
    """A tensor's values held in memory, as a source."""

    def __init__(self, values: Float32Array) -> None:
        self._flat = values.reshape(-1)
        self.size = int(self._flat.size)

    def block(self, start: int, stop: int) -> Float32Array:
        return self._flat[start:stop].copy()


def clip_contribution(
    tensors: Mapping[str, Float32Array], model: Mapping[str, Float32Array], norm: float
) -> tuple[dict[str, Float32Array], bool]:
    """One contribution's tensors with its update clipped to ``norm``, and whether it was clipped (what a tier's
    ingest replica folds), by the operations of a round end (:func:`update_norms`, :func:`clip_scales`,
    :func:`clipped`). The values are a round end's bit for bit when its blocks are as large (the norm's float64
    sum is taken block by block; with smaller blocks the scale may differ in its last bits)."""
    inputs = RoundInputs(
        0,
        "",
        ("",),
        tuple(
            TensorInputs(
                name,
                tuple(values.shape),
                (0,),
                (HeldValues(values),),
                (1.0,),
                HeldValues(model[name]) if name in model else None,
            )
            for name, values in tensors.items()
        ),
    )
    scales = clip_scales(update_norms(inputs), norm)
    if not scales[0] < 1.0:
        return dict(tensors), False
    return {
        tensor.name: tensor.sources[0].block(0, tensor.size).reshape(tensor.shape)
        for tensor in clipped(inputs, scales).tensors
    }, True


class ClippedUpdates(Aggregator):
    """Clips every collaborator's update to ``norm``, then lets ``inner`` combine the clipped contributions.

    Use :func:`clipped_updates` to build one: it keeps a bounded inner method's sensitivity share.
    """

    def __init__(self, inner: Aggregator, norm: float) -> None:
        if norm <= 0:
            raise ValueError(f"the clipping norm must be above 0, got {norm}")
        self.inner = inner
        self.norm = norm
        self.slots = inner.slots
        self._clipped: dict[str, TensorInputs] = {}
        self._clipped_share = 0.0

    def prepare(self, inputs: RoundInputs) -> None:
        """Clip every contribution's update (unless :attr:`RoundInputs.clipped` says they were clipped to ``norm``
        beforehand: a tier's root), then let ``inner`` prepare.

        Every contribution ``inner`` receives MUST have an update of norm at most ``norm`` over all the task's
        tensors (base 0 where the model has none), in the update's own direction.
        """
        if inputs.clipped is None:
            scales = clip_scales(update_norms(inputs), self.norm)
            clipped_count, count = int(np.sum(scales < 1.0)), len(scales)
            clipped_inputs = clipped(inputs, scales)
        elif inputs.clipped.norm != self.norm:
            raise ValueError(f"the contributions were clipped to {inputs.clipped.norm}, not to {self.norm}")
        else:  # clipped where they were folded (a tier's ingest replicas)
            clipped_count, count = inputs.clipped.clipped, len(inputs.clipped.contributed.collaborators)
            clipped_inputs = inputs
        self._clipped_share = clipped_count / count if count else 0.0
        self._clipped = {tensor.name: tensor for tensor in clipped_inputs.tensors}
        self.inner.prepare(clipped_inputs)

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        return self.inner.combine(self._clipped.get(tensor.name, tensor), emit)

    def bind_state(self, state: AggregatorState) -> None:
        self.inner.bind_state(state)

    def clip_norm(self) -> float | None:
        return self.norm

    def save(self) -> Mapping[str, object]:
        return self.inner.save()

    def load(self, saved: Mapping[str, object]) -> None:
        self.inner.load(saved)

    def report(self) -> Mapping[str, float]:
        return {**self.inner.report(), "clipped_share": self._clipped_share}


class BoundedClippedUpdates(ClippedUpdates, BoundedAggregator):
    """:class:`ClippedUpdates` around a :class:`BoundedAggregator`: clipping moves no two updates further apart,
    so the share is the inner method's (its weights and contributors are the same)."""

    def __init__(self, inner: BoundedAggregator, norm: float) -> None:
        super().__init__(inner, norm)
        self.bounded = inner

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        return self.bounded.sensitivity_share(inputs)


@overload
def clipped_updates(inner: BoundedAggregator, norm: float) -> BoundedClippedUpdates: ...


@overload
def clipped_updates(inner: Aggregator, norm: float) -> ClippedUpdates: ...


def clipped_updates(inner: Aggregator, norm: float) -> ClippedUpdates:
    """``inner`` behind update clipping; bounded if ``inner`` is."""
    if isinstance(inner, BoundedAggregator):
        return BoundedClippedUpdates(inner, norm)
    return ClippedUpdates(inner, norm)
