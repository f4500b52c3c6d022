"""Update clipping: each collaborator's update (its tensors minus the round's global model) is scaled down to at
most a norm, over every tensor of the task together, before another aggregator combines the results.

The norms take one pass over the spool; the clipped values are computed block by block as they are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    AggregatorState,
    Emit,
    Float64Array,
    RoundInputs,
    TensorInputs,
)
from fedagg.federation.sources import TensorSource
from fedagg.protocol.codec import FLOAT32, Float32Array


class ClippedSource:
    """``base + scale * (x - base)``: a contribution whose update is scaled (block by block)."""

    def __init__(self, base: TensorSource, source: TensorSource, scale: float) -> None:
        self._base = base
        self._source = source
        self._scale = scale
        self.size = source.size

    def block(self, start: int, stop: int) -> Float32Array:
        if self._scale >= 1.0:
            return self._source.block(start, stop)
        base = self._base.block(start, stop).astype(np.float64)
        update = self._source.block(start, stop) - base
        return (base + self._scale * update).astype(FLOAT32)


def update_norms(inputs: RoundInputs) -> Float64Array:
    """Each collaborator's update norm over the task's tensors that the global model holds (one pass)."""
    squared = np.zeros(len(inputs.collaborators), dtype=np.float64)
    for tensor in inputs.tensors:
        if tensor.base is None:
            continue
        for start, stop in tensor.blocks():
            base = tensor.base.block(start, stop).astype(np.float64)
            for index, source in zip(tensor.contributors, tensor.sources, strict=True):
                squared[index] += float(np.sum((source.block(start, stop) - base) ** 2))
    return np.sqrt(squared)


def clipped(inputs: RoundInputs, scales: Float64Array) -> dict[str, TensorInputs]:
    """The task's tensors with every contribution's update scaled by its collaborator's factor."""
    result = {}
    for tensor in inputs.tensors:
        base = tensor.base
        if base is None:
            result[tensor.name] = tensor
            continue
        sources = tuple(
            ClippedSource(base, source, float(scales[index]))
            for index, source in zip(tensor.contributors, tensor.sources, strict=True)
        )
        result[tensor.name] = replace(tensor, sources=sources)
    return result


def clip_scales(norms: Float64Array, clipping_norm: float) -> Float64Array:
    """``min(1, C / ||update||)`` per collaborator (a zero update is left as it is)."""
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, clipping_norm / norms)


class ClippedUpdates(Aggregator):
    """Clips every collaborator's update to ``norm``, then lets ``inner`` combine the clipped contributions."""

    def __init__(self, inner: Aggregator, norm: float) -> None:
        if norm <= 0:
            raise ValueError(f"the clipping norm must be above 0, got {norm}")
        self.inner = inner
        self.norm = norm
        self.slots = inner.slots
        self._clipped: dict[str, TensorInputs] = {}
        self._clipped_share = 0.0

    def prepare(self, inputs: RoundInputs) -> None:
        norms = update_norms(inputs)
        scales = clip_scales(norms, self.norm)
        self._clipped_share = float(np.mean(scales < 1.0)) if len(scales) else 0.0
        self._clipped = clipped(inputs, scales)
        self.inner.prepare(replace(inputs, tensors=tuple(self._clipped[t.name] for t in inputs.tensors)))

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        return self.inner.combine(self._clipped.get(tensor.name, tensor), emit)

    def bind_state(self, state: AggregatorState) -> None:
        self.inner.bind_state(state)

    def save(self) -> Mapping[str, object]:
        return self.inner.save()

    def load(self, saved: Mapping[str, object]) -> None:
        self.inner.load(saved)

    def report(self) -> Mapping[str, float]:
        return {**self.inner.report(), "clipped_share": self._clipped_share}
