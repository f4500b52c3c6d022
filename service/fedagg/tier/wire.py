"""Partials to and from the tier protocol: a :class:`PartialHeader`, then the float64 sums in header order.

The sums travel as raw little-endian float64 bytes in chunks of at most :data:`CHUNK_BYTES`, so no message holds a
whole tensor; the receiver checks that exactly the bytes the header announces arrive.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator

import numpy as np

from fedagg.protocol import tier_pb2
from fedagg.tier.partials import MetricSum, RoundPartial, TaskPartial, TensorSum

CHUNK_BYTES = 1 << 20
FLOAT64_LE = np.dtype("<f8")


class PartialRefused(ValueError):
    """A partial delivery that cannot be used; the message names what is wrong."""


def partial_chunks(partial: RoundPartial) -> Iterator[tier_pb2.PartialChunk]:
    """The messages that deliver ``partial``."""
    header = tier_pb2.PartialHeader(round=partial.round_number, generation=partial.generation)
    for task, part in partial.tasks.items():
        header.tasks.append(
            tier_pb2.TaskPartial(
                task=task,
                contributors=[
                    tier_pb2.Contributor(
                        collaborator=c,
                        weight=w,
                        metrics=[
                            tier_pb2.ReportedMetric(name=name, tags=list(tags), value=value)
                            for (name, tags), value in part.reported.get(c, ())
                        ],
                    )
                    for c, w in part.contributors
                ],
                tensors=[
                    tier_pb2.TensorSum(
                        name=name, shape=list(s.shape), weight=s.weight, plain=s.plain, absent=s.absent
                    )
                    for name, s in part.tensors.items()
                ],
                metrics=[
                    tier_pb2.MetricSum(name=name, tags=list(tags), weighted=m.weighted, weight=m.weight)
                    for (name, tags), m in part.metrics.items()
                ],
                clipping_norm=part.clipping_norm or 0.0,
                clipped=part.clipped,
            )
        )
    yield tier_pb2.PartialChunk(header=header)
    for part in partial.tasks.values():
        for summed in part.tensors.values():
            data = summed.values.astype(FLOAT64_LE, copy=False).data.cast("B")
            for start in range(0, len(data), CHUNK_BYTES):
                yield tier_pb2.PartialChunk(sums=bytes(data[start : start + CHUNK_BYTES]))


def _announced_bytes(header: tier_pb2.PartialHeader) -> int:
    """The bytes of sums a header announces, checked before anything is allocated for them."""
    total = 0
    for task in header.tasks:
        for tensor in task.tensors:
            if any(size < 0 for size in tensor.shape):
                raise PartialRefused(
                    f"task {task.task!r}: tensor {tensor.name!r} has shape {list(tensor.shape)[:8]}"
                )
            total += math.prod(int(size) for size in tensor.shape) * FLOAT64_LE.itemsize  # no int64 overflow
    return total


def _empty_partial(header: tier_pb2.PartialHeader, replica: str) -> RoundPartial:
    partial = RoundPartial(header.round, replica, header.generation)
    for task in header.tasks:
        if task.task in partial.tasks:
            raise PartialRefused(f"PartialHeader.tasks repeats task {task.task!r}")
        part = partial.tasks[task.task] = TaskPartial()
        part.contributors = [(c.collaborator, c.weight) for c in task.contributors]
        part.reported = {
            c.collaborator: [((m.name, tuple(m.tags)), m.value) for m in c.metrics] for c in task.contributors
        }
        if len({name for name, _ in part.contributors}) != len(part.contributors):
            raise PartialRefused(f"task {task.task!r}: TaskPartial.contributors names a collaborator twice")
        if task.clipped > len(part.contributors) or (task.clipped and task.clipping_norm <= 0):
            raise PartialRefused(
                f"task {task.task!r}: TaskPartial.clipped is {task.clipped} of {len(part.contributors)} "
                f"contributions clipped to {task.clipping_norm}"
            )
        part.clipping_norm = task.clipping_norm if task.clipping_norm > 0 else None
        part.clipped = task.clipped
        for tensor in task.tensors:
            if tensor.name in part.tensors:
                raise PartialRefused(f"task {task.task!r}: TaskPartial.tensors repeats {tensor.name!r}")
            part.tensors[tensor.name] = TensorSum.zeros(tuple(tensor.shape), tensor.plain)
            part.tensors[tensor.name].weight = tensor.weight
            part.tensors[tensor.name].absent = list(tensor.absent)
        for metric in task.metrics:
            part.metrics[(metric.name, tuple(metric.tags))] = MetricSum(metric.weighted, metric.weight)
    return partial


async def received_partial(
    chunks: AsyncIterator[tier_pb2.PartialChunk], replica: str, max_bytes: int
) -> RoundPartial:
    """The partial a delivery stream carries (header first, then exactly the announced sums)."""
    first = await anext(chunks, None)
    if first is None or not first.HasField("header"):
        raise PartialRefused("a partial delivery starts with a PartialChunk.header")
    announced = _announced_bytes(first.header)
    if announced > max_bytes:
        raise PartialRefused(
            f"the partial announces {announced} bytes of sums, more than the tier allows ({max_bytes})"
        )
    partial = _empty_partial(first.header, replica)
    targets = [summed.values for part in partial.tasks.values() for summed in part.tensors.values()]
    views = iter([target.data.cast("B") for target in targets if target.nbytes])
    view, filled = next(views, None), 0
    async for chunk in chunks:
        if not chunk.HasField("sums"):
            raise PartialRefused("a partial delivery has one PartialChunk.header, first")
        data = memoryview(chunk.sums)
        while data:
            if view is None:
                raise PartialRefused(f"the partial's sums exceed the {announced} bytes its header announces")
            taken = min(len(data), len(view) - filled)
            view[filled : filled + taken] = data[:taken]
            data, filled = data[taken:], filled + taken
            if filled == len(view):
                view, filled = next(views, None), 0
    if view is not None:
        raise PartialRefused(f"the partial's sums end before the {announced} bytes its header announces")
    return partial
