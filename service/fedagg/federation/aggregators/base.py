"""The aggregation interface: how one task's contributions become the next model, block by block.

An :class:`Aggregator` combines, for one task of one round, the tensors of every collaborator that the round
counts (in the plan's collaborator order). Each contribution is a :class:`~fedagg.federation.sources.TensorSource`
read block by block from the spool, so memory stays bounded whatever the model size and the number of
collaborators: an aggregator may keep a block per contributor and per-contributor scalars (norms, distances,
scores), never a whole tensor per contributor.

The round end calls :meth:`Aggregator.prepare` once with every tensor of the task (for methods that look at whole
updates: Krum, Bulyan, clipping), then :meth:`Aggregator.combine` for each tensor in the model's order. Each
method's docstring states its contract in MUST sentences (tests/unit/test_contracts_aggregators.py checks each by
name). An aggregator that keeps model-sized state between rounds (an adaptive optimizer's moments) declares ``slots``; the round end
then gives it an :class:`AggregatorState` that reads the previous round's slots and writes the new ones, block by
block, into files committed with the round. Small state (step counts, a clipping norm) goes through
:meth:`Aggregator.save` / :meth:`Aggregator.load` as JSON values.

To plug in an aggregator of your own, subclass :class:`Aggregator` and name its class path in the configuration
(``federation.tasks.<task>.aggregation: mypackage.module.MyAggregator``); ``aggregation_settings`` are passed to the
constructor as keyword arguments. Read contributions with :meth:`TensorInputs.blocks`: the round end sizes blocks
so that one of every contribution fits ``limits.aggregation_bytes``. tests/unit/test_aggregation.py holds the conformance suite every aggregator passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from fedagg.federation.sources import TensorSource
from fedagg.protocol.codec import FLOAT32, Float32Array, Shape

BLOCK_ELEMENTS = 1 << 20
"""The most values of one contribution an aggregator reads at once."""
MIN_BLOCK_ELEMENTS = 4096
BYTES_PER_BLOCK_VALUE = 16
"""What one value of one contribution's block may cost while combined: float32 read, float64 copy, temporaries."""

T = TypeVar("T")
Emit = Callable[[Float32Array], None]
"""Receives an aggregate's consecutive blocks (float32)."""
Float64Array = npt.NDArray[np.float64]


def blocks(size: int, block_elements: int | None = None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``block_elements`` (default :data:`BLOCK_ELEMENTS`) covering ``size``."""
    step = block_elements or BLOCK_ELEMENTS
    for start in range(0, size, step):
        yield start, min(start + step, size)


def block_elements_for(budget_bytes: int, contributions: int) -> int:
    """The block size that keeps one block of every contribution within ``budget_bytes`` (bounded both ways)."""
    fitting = budget_bytes // (BYTES_PER_BLOCK_VALUE * max(1, contributions))
    return max(MIN_BLOCK_ELEMENTS, min(BLOCK_ELEMENTS, fitting))


class FoldedPrefix(Protocol):
    """``sum(w_i * x_i)`` (float64, :func:`add_weighted` in contribution order) over a tensor's first
    :attr:`count` contributions, kept while they arrived so the round end need not read them again."""

    @property
    def count(self) -> int:
        """How many of the first contributions the sum holds."""
        ...

    def block(self, start: int, stop: int) -> Float64Array:
        """The sum's flattened values ``[start, stop)``, a fresh array the caller may add to."""
        ...


@dataclass(frozen=True)
class TensorInputs:
    """One tensor of the task: its contributions (``contributors`` index into :attr:`RoundInputs.collaborators`)."""

    name: str
    shape: Shape
    contributors: tuple[int, ...]
    sources: tuple[TensorSource, ...]
    weights: tuple[float, ...]
    """Each contribution's weight: its collaborator's data size (``-1`` counts as 1)."""
    base: TensorSource | None
    """The round's global model values of this tensor (None for a tensor the model does not hold yet)."""
    block_elements: int | None = None
    """How many values of each contribution to read at once (None: :data:`BLOCK_ELEMENTS`); the round end sizes
    it from ``limits.aggregation_bytes`` and the number of contributions."""
    folded: FoldedPrefix | None = None
    """The weighted sum of the first contributions, folded as they arrived (set by the round end only for the
    plain weighted average: :func:`weighted_sum` starts from it; any other method reads every source)."""

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=np.int64))

    def blocks(self) -> Iterator[tuple[int, int]]:
        """``[start, stop)`` ranges covering the tensor, one block at a time."""
        return blocks(self.size, self.block_elements)

    def only(self, contributors: tuple[int, ...]) -> TensorInputs:
        """These inputs restricted to some contributors (in the given order)."""
        keep = [self.contributors.index(index) for index in contributors if index in self.contributors]
        return replace(
            self,
            contributors=tuple(self.contributors[i] for i in keep),
            sources=tuple(self.sources[i] for i in keep),
            weights=tuple(self.weights[i] for i in keep),
            folded=None,
        )


@dataclass(frozen=True)
class RoundInputs:
    """Every tensor of one task in one round."""

    round_number: int
    task: str
    collaborators: tuple[str, ...]
    tensors: tuple[TensorInputs, ...]
    clipped: ClippedBeforehand | None = None
    """Set when every contribution was clipped before it was merged with the others (a tier's ingest replicas clip
    each one as they fold it): the tensors then hold the merged contributions, ``clipped`` what they stand for."""

    def common_tensors(self) -> tuple[TensorInputs, ...]:
        """The tensors every collaborator sent (what whole-update methods compare)."""
        everyone = tuple(range(len(self.collaborators)))
        return tuple(tensor for tensor in self.tensors if tensor.contributors == everyone)


@dataclass(frozen=True)
class ClippedBeforehand:
    """Contributions each clipped to ``norm`` (update relative to the round's model, over the task's tensors, as
    :func:`~fedagg.federation.aggregators.clipping.clipped` clips them) before they were merged."""

    norm: float
    clipped: int
    """How many contributions were clipped (their update's norm was above ``norm``)."""
    contributed: RoundInputs
    """The task as it was contributed: its collaborators and each tensor's contributors and weights. Its sources
    are not to be read (a merged partial no longer holds the contributions)."""


class AggregatorState(Protocol):
    """Model-sized state kept between rounds, per slot and tensor."""

    def previous(self, slot: str, tensor: str) -> TensorSource | None:
        """The slot's values for ``tensor`` from the previous round (None the first time)."""
        ...

    def write(self, slot: str, tensor: str, shape: Shape) -> Emit:
        """Where this round's values of the slot for ``tensor`` go, block by block."""
        ...


class Aggregator(ABC):
    """Combines one task's contributions, tensor by tensor, block by block. Used by one round end at a time.

    The round end calls, for one task of one round: :meth:`load` (after a restart or an undone attempt),
    :meth:`prepare`, :meth:`bind_state` (when ``slots`` is not empty), :meth:`combine` per tensor, then
    :meth:`save` and :meth:`report`. A round end that does not commit is undone with :meth:`load` and redone.
    """

    slots: tuple[str, ...] = ()
    """Names of model-sized state kept between rounds (see :class:`AggregatorState`)."""
    privacy_refusal = "it declares no sensitivity share (it is not a BoundedAggregator)"
    """Why server-side differential privacy cannot wrap this method (what the configuration check says)."""

    def prepare(self, inputs: RoundInputs) -> None:  # noqa: B027 (an optional hook)
        """Look at the whole task before any tensor is combined (default: nothing to do).

        It MUST read contributions only through their sources, at most one block of ``tensor.blocks()`` at a
        time. It raises ValueError when the task cannot be aggregated this round (too few contributions): the
        task's tensors then keep their values.
        """

    @abstractmethod
    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        """Pass the aggregate of ``tensor`` to ``emit``; return False when it has none (the model keeps its value).

        It MUST return False, emitting nothing, when ``tensor`` has no contribution. When it returns True it MUST
        have emitted float32 blocks of ``tensor.size`` values in all. Contributions equal to the model MUST give
        the model (to float32 rounding). The aggregate MUST NOT depend on the block size. The same inputs, state
        and loaded state MUST give the same bits (no clock, no unseeded generator), so a redone round gives the
        same model.
        """

    def bind_state(self, state: AggregatorState) -> None:  # noqa: B027 (an optional hook)
        """Receive the state of this round (called before :meth:`combine` when ``slots`` is not empty).

        Slot values written through ``state`` MUST be finite whenever the contributions are finite.
        """

    def save(self) -> Mapping[str, Any]:
        """Small state to keep between rounds, as JSON values (default: none).

        The result MUST be JSON values.
        """
        return {}

    def load(self, saved: Mapping[str, Any]) -> None:  # noqa: B027 (an optional hook)
        """Take back what :meth:`save` returned after a previous round (also after a restart, or to undo a round
        end that did not commit).

        It MUST accept ``{}`` (nothing saved yet). ``load(save())`` on a fresh instance MUST aggregate the next
        round as the saved one would.
        """

    def report(self) -> Mapping[str, float]:
        """Figures to publish as metrics and in the status after a round (default: none).

        It MUST NOT raise, before any round too.
        """
        return {}

    def clip_norm(self) -> float | None:
        """The norm to which every contribution of the next round end is clipped, when :attr:`RoundInputs.clipped`
        says they were clipped beforehand (None, the default: this method takes only contributions as sent).

        A tier's ingest replicas clip each contribution of the task to it as they fold it (the root publishes it
        with the round); the root's :meth:`prepare` then receives the merged contributions with ``clipped`` set.
        """
        return None


class BoundedAggregator(Aggregator):
    """An aggregator whose aggregate one contribution can move only so far: what differential privacy wraps.

    Server-side differential privacy clips every contribution's update to a norm C (the clip ball around the
    round's model), combines with a :class:`BoundedAggregator` and adds Gaussian noise of standard deviation
    ``z * share * C``. The guarantee holds only if ``share`` is a true bound, hence this contract.
    """

    @abstractmethod
    def sensitivity_share(self, inputs: RoundInputs) -> float:
        """The share of C by which one contribution can move the aggregate of ``inputs``.

        Moving one contribution by at most C within the clip ball MUST move the aggregates of the task's tensors
        (one L2 norm over all of them) by at most ``share * C``, the other contributions, the weights and the
        contributors being those of ``inputs``. It MUST NOT read the contributions' values (the share may not
        depend on the data it protects).
        """


def add_weighted(
    summed: Float64Array, values: Float32Array, weight: float, scratch: Float64Array | None = None
) -> None:
    """``summed += w * x`` in float64: one step of :func:`weighted_sum` (a zero weight adds nothing). ``scratch``
    (at least as long as ``values``) holds the product instead of fresh memory; the bits are the same."""
    if not weight:
        return
    if scratch is None:
        summed += values * np.float64(weight)
    else:
        product = scratch[: values.size]
        np.multiply(values, np.float64(weight), out=product)
        summed += product


def weighted_sum(
    sources: tuple[TensorSource, ...],
    weights: Float64Array,
    start: int,
    stop: int,
    folded: FoldedPrefix | None = None,
) -> Float64Array:
    """``sum(w_i * x_i)`` over one block, in float64, summed in contribution order; from ``folded`` (the sum of
    the first contributions) when given, so the result has the same bits either way."""
    skip = 0 if folded is None else folded.count
    summed = np.zeros(stop - start, dtype=np.float64) if folded is None else folded.block(start, stop)
    for source, weight in zip(sources[skip:], weights[skip:], strict=True):
        add_weighted(summed, source.block(start, stop), float(weight))
    return summed


_BLOCK_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedagg-blocks")
"""Computes blocks of element-wise aggregates side by side (numpy and file reads release the GIL)."""


def in_order(
    compute: Callable[[int, int], T], ranges: Iterable[tuple[int, int]], ahead: int = 2
) -> Iterator[T]:
    """``compute(start, stop)`` of each range, in order, at most ``ahead`` computed at once on worker threads.

    Only for element-wise work, whose values do not depend on which thread computes a block or when; memory is
    that of ``ahead + 1`` blocks.
    """
    pending: deque[Future[T]] = deque()
    try:
        for start, stop in ranges:
            pending.append(_BLOCK_WORKERS.submit(compute, start, stop))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def stacked(sources: tuple[TensorSource, ...], start: int, stop: int) -> Float32Array:
    """One block of every contribution, one row each."""
    return np.stack([source.block(start, stop) for source in sources]).astype(FLOAT32, copy=False)


def without_overflow(
    reduce: Callable[[npt.NDArray[Any]], npt.NDArray[Any]], rows: Float32Array
) -> Float32Array:
    """``reduce(rows)`` (over axis 0) in float32, as the reference implementations compute it; where float32
    overflows (finite values, an infinite result), the float64 result, which a mean or median keeps finite."""
    with np.errstate(over="ignore"):
        result = np.asarray(reduce(rows), dtype=FLOAT32)
        overflowed = ~np.isfinite(result)
        if overflowed.any():
            result[overflowed] = reduce(rows[:, overflowed].astype(np.float64))
    return result


FLOAT32_LIMIT = float(np.finfo(FLOAT32).max)


def finite_float32(values: npt.NDArray[np.floating[Any]]) -> Float32Array:
    """``values`` as float32, held within float32's finite range (a finite sum never becomes inf)."""
    clipped: Float32Array = np.clip(values, -FLOAT32_LIMIT, FLOAT32_LIMIT).astype(FLOAT32)
    return clipped
