"""At the root: a task's next tensors from the replicas' merged partial, through the task's own aggregator.

The task's aggregator sees one contribution per tensor: the merged partial's weighted mean, with the total weight.
Where the aggregator sums by weight (the weighted average, FedCurv's other tensors:
:func:`~fedagg.federation.aggregators.elementwise.sums_by_weight`), the merged float64 sum is also handed over as the
round end's folded prefix (:class:`~fedagg.federation.aggregators.base.FoldedPrefix`, which
:class:`~fedagg.tier.partials.TensorSum` is), so the aggregator divides ``sum(w_i * x_i)`` by ``sum(w_i)`` itself,
with the operations of a single pod's round end. An adaptive optimizer takes ``base - mean`` as its gradient and
updates its moments once, at the root. FedCurv's Fisher terms are plain sums and are taken as summed.

Under differential privacy the replicas clipped every contribution before folding it: the task's inputs say so
(:class:`~fedagg.federation.aggregators.base.ClippedBeforehand`: the norm, how many were clipped, and the
contributors and weights each tensor stands for), and the mechanism adds its noise once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace

import numpy as np

from fedagg.federation.aggregators import Aggregator, AggregatorState, RoundInputs, TensorInputs
from fedagg.federation.aggregators.base import ClippedBeforehand
from fedagg.federation.aggregators.clipping import HeldValues
from fedagg.federation.aggregators.elementwise import sums_by_weight
from fedagg.federation.sources import TensorSource
from fedagg.protocol.codec import Float32Array
from fedagg.tier.partials import TaskPartial

MERGED = "tier"
"""The name the aggregator sees for the one contribution of a merged partial."""


class Unread:
    """A contribution a merged partial stands for but no longer holds (what :attr:`ClippedBeforehand.contributed`
    lists): reading it is a bug."""

    def __init__(self, size: int) -> None:
        self.size = size

    def block(self, start: int, stop: int) -> Float32Array:
        raise RuntimeError("a merged partial holds the sum of its contributions, not each one")


def clipped_beforehand(
    round_number: int, task: str, partial: TaskPartial, aggregator: Aggregator, tensors: list[TensorInputs]
) -> ClippedBeforehand | None:
    """What the task's merged ``tensors`` stand for when the replicas clipped its contributions (None when they did
    not); raises ValueError unless they clipped to the aggregator's norm of the round."""
    norm = aggregator.clip_norm()
    if norm != partial.clipping_norm:
        raise ValueError(
            f"task {task!r}: the replicas clipped its contributions to {partial.clipping_norm}, the round's "
            f"clipping norm is {norm}"
        )
    if norm is None:
        return None
    index = {collaborator: position for position, (collaborator, _) in enumerate(partial.contributors)}
    contributed = []
    for tensor in tensors:
        holders = partial.holders(tensor.name)
        contributed.append(
            replace(
                tensor,
                contributors=tuple(index[collaborator] for collaborator, _ in holders),
                sources=tuple(Unread(tensor.size) for _ in holders),
                weights=tuple(weight for _, weight in holders),
                folded=None,
            )
        )
    collaborators = tuple(index)
    return ClippedBeforehand(
        norm, partial.clipped, RoundInputs(round_number, task, collaborators, tuple(contributed))
    )


def task_inputs(
    round_number: int,
    task: str,
    partial: TaskPartial,
    aggregator: Aggregator,
    base: Callable[[str], TensorSource | None],
    owned: Collection[str] = (),
    block_elements: int | None = None,
) -> tuple[RoundInputs, dict[str, Float32Array]]:
    """The task's round inputs from a merged partial (one contribution per tensor, its weighted mean), and the
    tensors taken as summed; tensors in ``owned`` (an earlier task's) and those whose total weight is not positive
    are left out. Contributions the replicas clipped are marked so (:attr:`RoundInputs.clipped`), and their plain
    sums go through the aggregator, which adds its noise to them too."""
    summed: dict[str, Float32Array] = {}
    tensors = []
    for name, tensor_sum in partial.tensors.items():
        if name in owned:
            continue
        mean = partial.average(name)
        if mean is None:
            continue
        if tensor_sum.plain and partial.clipping_norm is None:
            summed[name] = mean
            continue
        tensors.append(
            TensorInputs(
                name,
                tensor_sum.shape,
                (0,),
                (HeldValues(mean),),
                (tensor_sum.weight,),
                base(name),
                block_elements,
                folded=tensor_sum if sums_by_weight(aggregator, name) else None,
            )
        )
    clipped = clipped_beforehand(round_number, task, partial, aggregator, tensors)
    return RoundInputs(round_number, task, (MERGED,), tuple(tensors), clipped), summed


def divide(
    aggregator: Aggregator,
    round_number: int,
    task: str,
    partial: TaskPartial,
    model: Mapping[str, Float32Array],
    state: AggregatorState | None = None,
) -> dict[str, Float32Array]:
    """The task's aggregated tensors of the round (tensors whose total weight is not positive are left out)."""

    def base(name: str) -> TensorSource | None:
        values = model.get(name)
        return None if values is None else HeldValues(values)

    inputs, means = task_inputs(round_number, task, partial, aggregator, base)
    aggregator.prepare(inputs)
    if aggregator.slots:
        assert state is not None, "an aggregator with slots needs its state"
        aggregator.bind_state(state)
    for tensor in inputs.tensors:
        blocks: list[Float32Array] = []
        if aggregator.combine(tensor, blocks.append):
            means[tensor.name] = (
                np.concatenate(blocks).reshape(tensor.shape) if blocks else np.empty(0, np.float32)
            )
    return means
