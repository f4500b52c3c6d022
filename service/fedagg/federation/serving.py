"""Serving tensors: which form a GetAggregatedTensor request names, and encode-once caching.

OpenFL collaborators ask for a tensor in one of two forms (spec §3.6): the model itself (tags ``["model"]``)
or, from round 1 on, the change since the previous round (tags ``["aggregated", "delta", "compressed"]``).
Each (tensor, round, form) is encoded once and the bytes are shared by every collaborator that asks. Kept models
are memory-mapped model files, verified against their checksums when they were loaded.

OpenFL 1.8/1.9 collaborators restarted in the middle of a round also ask for their own results of the round
(tags ``[<own name>, "trained", ...]``); :func:`encode_own_tensor` answers that from the spooled upload, as
OpenFL 1.9's aggregator answers it from its tensor database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedagg.federation.errors import FailedPrecondition, InvalidRequest, NotFound
from fedagg.protocol.codec import COMPRESSED, Float32Array, tensor_header, without_codec_tags
from fedagg.protocol.model_file import encode_named_tensor

AGGREGATED_TAG = "aggregated"
DELTA_TAG = "delta"
MODEL_TAG = "model"


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


class EncodedTensorCache:
    """Encoded tensors by key; each is built once even when many threads ask at the same time.

    Lock order: ``_lock`` (guards ``_entries`` and ``_building``), then never anything else; a key's build lock is
    taken without ``_lock`` held, and the build itself (CPU work, no I/O) runs under the key's lock only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, bytes] = {}
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """The cached bytes for ``key``, built by ``build`` on first use."""
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            value = build()
            with self._lock:
                self._entries[key] = value
                self._building.pop(key, None)
            return value

    def retain(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop every entry whose key ``keep`` rejects."""
        with self._lock:
            self._entries = {key: value for key, value in self._entries.items() if keep(key)}


class TensorServer:
    """The kept global models and their encoded tensors, for GetAggregatedTensor. Thread-safe.

    ``_lock`` guards ``_models`` and ``_current`` only (never held while encoding); lock order: the federation's
    locks, then this one, then the cache's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[int, Mapping[str, Float32Array]] = {}
        self._current = 0
        self._cache = EncodedTensorCache()

    def install(self, models: Iterable[tuple[int, Mapping[str, Float32Array]]], current: int) -> None:
        """Serve ``models`` (round, tensors) from now on, ``current`` being the round in progress."""
        with self._lock:
            self._models = dict(models)
            self._current = current
        self._cache.retain(lambda key: isinstance(key, tuple) and key[1] in self._models)

    def model(self, round_number: int) -> Mapping[str, Float32Array] | None:
        """A kept model's tensors."""
        with self._lock:
            return self._models.get(round_number)

    def encoded(self, request: TensorRequest) -> bytes:
        """The serialized NamedTensor answering a GetAggregatedTensor request (encoded once, then shared)."""
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
        if request.name not in model:
            raise NotFound(
                f"tensor {request.name!r} is not in round {number}'s model (tensors: {bounded_names(model)})"
            )
        if served.form == TensorForm.DELTA and (previous is None or request.name not in previous):
            raise NotFound(
                f"the delta of {request.name!r} for round {number} needs round {number - 1}'s model, "
                "which is no longer kept; ask with tags ['model']"
            )

        def build() -> bytes:
            values = model[request.name]
            if served.form == TensorForm.DELTA:
                assert previous is not None
                values = np.subtract(values, previous[request.name], dtype=np.float32)
            header = tensor_header(
                request.name,
                values.shape,
                round_number=number,
                tags=served.tags,
                lossless=served.lossless,
                report=request.report,
            )
            return encode_named_tensor(header, values)

        key = (request.name, number, served.form, served.tags, served.lossless)
        return self._cache.get(key, build)


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


def encode_own_tensor(request: TensorRequest, values: Float32Array, lossless: bool = True) -> bytes:
    """A collaborator's own uploaded tensor as OpenFL 1.9 returns it: the request's tags plus ``compressed``."""
    header = tensor_header(
        request.name,
        values.shape,
        round_number=request.round_number,
        tags=sorted({*request.tags, COMPRESSED}),
        lossless=lossless,
        report=request.report,
    )
    return encode_named_tensor(header, values)
