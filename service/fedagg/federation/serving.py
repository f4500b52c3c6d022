"""Serving tensors: which form a GetAggregatedTensor request names, and encode-once caching.

OpenFL collaborators ask for a tensor in one of two forms (spec §3.6): the model itself (tags ``["model"]``)
or, from round 1 on, the change since the previous round (tags ``["aggregated", "delta", "compressed"]``).
Kept models are memory-mapped model files, verified against their checksums when they were loaded. A model reply's
tensor data is a view of its file, copied once into the reply; a delta reply's is computed when the reply is built
(new minus previous, block by block, from the two mapped files: no delta file is written at a round end). A reply
is measured before it is built (:class:`ServedTensor`), so the server admits its bytes before anything is read or
computed.

OpenFL 1.8/1.9 collaborators restarted in the middle of a round also ask for their own results of the round
(tags ``[<own name>, "trained", ...]``); :func:`own_tensor` answers that from the spooled upload, as
OpenFL 1.9's aggregator answers it from its tensor database.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from fedagg.federation.errors import FailedPrecondition, InvalidRequest, NotFound
from fedagg.protocol import base_pb2
from fedagg.protocol.codec import COMPRESSED, FLOAT32, Float32Array, Shape, tensor_header, without_codec_tags
from fedagg.protocol.model_file import LoadedModel, named_tensor_body, named_tensor_size

AGGREGATED_TAG = "aggregated"
DELTA_TAG = "delta"
MODEL_TAG = "model"
DELTA_BLOCK_ELEMENTS = 1 << 20


class TensorForm(StrEnum):
    """The two shapes in which an aggregated tensor is served."""

    MODEL = "model"
    DELTA = "delta"


@dataclass(frozen=True)
class TensorRequest:
    """What a GetAggregatedTensor request asks for."""

    name: str
    round_number: int
    report: bool
    tags: tuple[str, ...]
    require_lossless: bool


@dataclass(frozen=True)
class ServedForm:
    """How a request is answered: the form, the reply's tags and its lossless flag."""

    form: TensorForm
    tags: tuple[str, ...]
    lossless: bool


def resolve_form(request: TensorRequest) -> ServedForm:
    """Map a request's tags to the form OpenFL's aggregator would serve; raise for anything else."""
    lossless = request.require_lossless or COMPRESSED in request.tags
    tags = set(without_codec_tags(request.tags))
    if request.report:
        raise InvalidRequest(
            f"GetAggregatedTensorRequest.report is true for '{request.name}'; aggregated model tensors are "
            "served with report=false (metrics are not fetched)"
        )
    if {AGGREGATED_TAG, DELTA_TAG} <= tags:
        if tags != {AGGREGATED_TAG, DELTA_TAG}:
            raise InvalidRequest(
                f"GetAggregatedTensorRequest.tags {list(request.tags)}: unexpected extra tags"
            )
        if request.round_number == 0:
            raise NotFound(
                f"there is no delta for round 0 of '{request.name}' (no previous round); ask with tags ['model']"
            )
        return ServedForm(TensorForm.DELTA, (AGGREGATED_TAG, COMPRESSED, DELTA_TAG), lossless)
    if tags in ({MODEL_TAG}, {AGGREGATED_TAG}):
        return ServedForm(TensorForm.MODEL, tuple(sorted(tags | {COMPRESSED})), lossless)
    raise InvalidRequest(
        f"GetAggregatedTensorRequest.tags {list(request.tags)} name no served tensor; use ['model'] or "
        "['aggregated', 'delta', 'compressed']"
    )


@dataclass(frozen=True)
class ServedTensor:
    """A NamedTensor reply, measured before it is built: nothing of the tensor's data is read or computed until
    :meth:`parts` is called.

    The server measures ``size`` (cheap, on any thread), waits until its reply budget admits that many bytes, then
    calls :meth:`parts` once, off the event loop (it may map files, read the spool or compute a delta), and calls
    ``release`` once the reply is built to let go of the touched pages.
    """

    header: base_pb2.NamedTensor
    """Every field of the NamedTensor but its data."""
    size: int
    """Bytes of the serialized NamedTensor: the header, and the data's field prefix and float32 bytes."""
    values: Callable[[], Float32Array]
    """The tensor's values (a view of a mapped file where possible); called by :meth:`parts`."""
    release: Callable[[], None]

    @classmethod
    def of(
        cls,
        header: base_pb2.NamedTensor,
        shape: Shape,
        values: Callable[[], Float32Array],
        release: Callable[[], None],
    ) -> ServedTensor:
        """The reply of ``header`` with the float32 ``values`` of ``shape`` (measured from the shape alone)."""
        return cls(header, named_tensor_size(header, math.prod(shape) * FLOAT32.itemsize), values, release)

    def parts(self) -> list[bytes | memoryview]:
        """The serialized NamedTensor as parts: the header's bytes, then the data's prefix and a view of the data."""
        return named_tensor_body(self.header, self.values())


class TensorServer:
    """The kept global models, served straight from their files. Thread-safe.

    Nothing is encoded in advance and nothing is cached in memory: a reply's tensor data is a view of a model file
    (or a delta computed from two of them when the reply is built), copied once into the reply, after which the
    touched pages are released from this process's resident memory. ``_lock`` guards ``_models`` and ``_current``
    only (never held while a reply is built); lock order: the federation's locks, then this one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[int, LoadedModel] = {}
        self._current = 0

    def install(self, models: dict[int, LoadedModel], current: int) -> None:
        """Serve ``models`` (by round) from now on, ``current`` being the round in progress."""
        with self._lock:
            self._models, self._current = dict(models), current

    def model(self, round_number: int) -> LoadedModel | None:
        """A kept model."""
        with self._lock:
            return self._models.get(round_number)

    def served(self, request: TensorRequest) -> ServedTensor:
        """The NamedTensor answering a GetAggregatedTensor request."""
        served = resolve_form(request)
        number = request.round_number
        with self._lock:
            current = self._current
            model = self._models.get(number)
            previous = self._models.get(number - 1)
            kept = sorted(self._models)
        if model is None:
            if number > current:
                raise FailedPrecondition(f"round {number} has not started; the current round is {current}")
            raise NotFound(f"round {number}'s model is no longer kept (kept rounds: {kept})")
        if request.name not in model.tensors:
            raise NotFound(
                f"tensor {request.name!r} is not in round {number}'s model "
                f"(tensors: {bounded_names(model.tensors)})"
            )
        if served.form == TensorForm.DELTA:
            source, values = self._delta(request, number, model, previous)
        else:
            source, values = model, _view(model.tensors[request.name])
        shape = model.tensors[request.name].shape
        header = tensor_header(
            request.name, shape, round_number=number, tags=served.tags, lossless=served.lossless, report=False
        )
        return ServedTensor.of(header, shape, values, source.release)

    @staticmethod
    def _delta(
        request: TensorRequest,
        number: int,
        model: LoadedModel,
        previous: LoadedModel | None,
    ) -> tuple[_Releasable, Callable[[], Float32Array]]:
        """The change since the previous round, computed when the reply is built from the two models (block by
        block, each block's mapped pages dropped once subtracted), the same float32 values a whole-tensor
        subtraction gives."""
        name = request.name
        if previous is None or name not in previous.tensors:
            raise NotFound(
                f"the delta of {name!r} for round {number} needs round {number - 1}'s model, "
                "which is no longer kept; ask with tags ['model']"
            )
        if previous.tensors[name].shape != model.tensors[name].shape:
            raise NotFound(
                f"{name!r} has no delta for round {number}: round {number - 1}'s tensor has another shape "
                f"({list(previous.tensors[name].shape)}); ask with tags ['model']"
            )

        def difference() -> Float32Array:
            new, base = model.tensors[name], previous.tensors[name]
            values = np.empty(new.shape, FLOAT32)
            flat, flat_new, flat_base = values.reshape(-1), new.reshape(-1), base.reshape(-1)
            for start in range(0, flat.size, DELTA_BLOCK_ELEMENTS):
                block = slice(start, start + DELTA_BLOCK_ELEMENTS)
                np.subtract(flat_new[block], flat_base[block], out=flat[block], dtype=FLOAT32)
                model.release_values(flat_new[block])
                previous.release_values(flat_base[block])
            return values

        return _BothModels(model, previous), difference


class _Releasable(Protocol):
    """What holds the mapped pages a reply touches."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class _BothModels:
    """A model and the previous one, whose pages a computed delta touched."""

    model: LoadedModel
    previous: LoadedModel

    def release(self) -> None:
        self.model.release()
        self.previous.release()


def _view(values: Float32Array) -> Callable[[], Float32Array]:
    """Values that are already there (a view of a mapped file)."""
    return lambda: values


def bounded_names(names: Iterable[str], limit: int = 8) -> str:
    """``names`` sorted, at most ``limit`` of them, then "... N more": error details stay short."""
    ordered = sorted(names)
    shown = ", ".join(repr(name) for name in ordered[:limit])
    rest = len(ordered) - limit
    return f"[{shown}, ... {rest} more]" if rest > 0 else f"[{shown}]"


def tensor_owner(request: TensorRequest, collaborators: Iterable[str]) -> str | None:
    """The collaborator a request's tags name (a request for that collaborator's own results), if any."""
    named = set(request.tags) & set(collaborators)
    if len(named) > 1:
        raise InvalidRequest(
            f"GetAggregatedTensorRequest.tags name several collaborators: {sorted(named)[:4]}"
        )
    return named.pop() if named else None


def own_tensor(request: TensorRequest, shape: Shape, values: Callable[[], Float32Array]) -> ServedTensor:
    """A collaborator's own uploaded tensor as OpenFL 1.9 returns it: the request's tags plus ``compressed``."""
    header = tensor_header(
        request.name,
        shape,
        round_number=request.round_number,
        tags=sorted({*request.tags, COMPRESSED}),
        lossless=True,
        report=request.report,
    )
    return ServedTensor.of(header, shape, values, _nothing_to_release)


def _nothing_to_release() -> None:
    """A reply built from memory, or from a mapping of its own that goes with it, holds no pages to drop."""
