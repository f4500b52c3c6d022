"""Serving aggregated tensors: which form a GetAggregatedTensor request names, and encode-once caching.

OpenFL collaborators ask for a tensor in one of two forms (spec §3.6): the model itself (tags ``["model"]``)
or, from round 1 on, the change since the previous round (tags ``["aggregated", "delta", "compressed"]``).
Each (tensor, round, form) is encoded once and the bytes are shared by every collaborator that asks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum

from fedagg.federation.errors import InvalidRequest, NotFound
from fedagg.protocol.codec import COMPRESSED, without_codec_tags

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
    """Encoded tensors by key; each is built once even when many threads ask at the same time."""

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
