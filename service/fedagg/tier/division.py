"""At the root: a task's next tensors from the replicas' merged partial, through the task's own aggregator.

The task's aggregator sees one contribution per tensor: the merged partial's weighted mean, with the total weight.
Where the aggregator sums by weight (the weighted average, FedCurv's other tensors:
:func:`~fedagg.federation.aggregators.elementwise.sums_by_weight`), the merged float64 sum is also handed over as the
round end's folded prefix (:class:`~fedagg.federation.aggregators.base.FoldedPrefix`, which
:class:`~fedagg.tier.partials.TensorSum` is), so the aggregator divides ``sum(w_i * x_i)`` by ``sum(w_i)`` itself,
with the operations of a single pod's round end. An adaptive optimizer takes ``base - mean`` as its gradient and
updates its moments once, at the root. FedCurv's Fisher terms are plain sums and are taken as summed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedagg.federation.aggregators import Aggregator, AggregatorState, RoundInputs, TensorInputs
from fedagg.federation.aggregators.elementwise import sums_by_weight
from fedagg.protocol.codec import Float32Array
from fedagg.tier.partials import TaskPartial

MERGED = "tier"
"""The name the aggregator sees for the one contribution of a merged partial."""


class MeanValues:
    """A merged partial's mean of one tensor, as the one contribution the aggregator reads."""

    def __init__(self, values: Float32Array) -> None:
        self._flat = values.reshape(-1)
        self.size = int(self._flat.size)

    def block(self, start: int, stop: int) -> Float32Array:
        return self._flat[start:stop].copy()


def divide(
    aggregator: Aggregator,
    round_number: int,
    task: str,
    partial: TaskPartial,
    model: Mapping[str, Float32Array],
    state: AggregatorState | None = None,
) -> dict[str, Float32Array]:
    """The task's aggregated tensors of the round (tensors whose total weight is not positive are left out)."""
    means: dict[str, Float32Array] = {}
    tensors = []
    for name, summed in partial.tensors.items():
        mean = partial.average(name)
        if mean is None:
            continue
        if summed.plain:
            means[name] = mean
            continue
        base = model.get(name)
        tensors.append(
            TensorInputs(
                name,
                summed.shape,
                (0,),
                (MeanValues(mean),),
                (summed.weight,),
                None if base is None else MeanValues(base),
                folded=summed if sums_by_weight(aggregator, name) else None,
            )
        )
    inputs = RoundInputs(round_number, task, (MERGED,), tuple(tensors))
    aggregator.prepare(inputs)
    if aggregator.slots:
        assert state is not None, "an aggregator with slots needs its state"
        aggregator.bind_state(state)
    for tensor in tensors:
        blocks: list[Float32Array] = []
        if aggregator.combine(tensor, blocks.append):
            means[tensor.name] = (
                np.concatenate(blocks).reshape(tensor.shape) if blocks else np.empty(0, np.float32)
            )
    return means
