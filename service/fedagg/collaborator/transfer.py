"""Tensors between the wire and a collaborator's own arrays: one copy each way, one tensor in flight.

Download: a GetAggregatedTensor reply arrives as the raw bytes of its message (no protobuf parse of the data);
:func:`parse_tensor_reply` decodes its small fields and returns the tensor's data as a read-only view into those
bytes, which the caller copies (or adds) into its own array, then drops.

Upload: :func:`task_results_messages` yields the serialized ``DataStream`` messages of a ``TaskResults``, built
tensor by tensor from the arrays themselves: each message's bytes are the only copy this side makes. The
concatenated ``npbytes`` are byte for byte ``TaskResults.SerializeToString()`` (protobuf writes fields in number
order, and a tensor's data is its last field), cut into pieces of at most 2 MiB as OpenFL's client cuts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import (
    COMPRESSED,
    FLOAT32,
    CodecError,
    Float32Array,
    check_codec_tags,
    check_data_length,
    shape_from_metadata,
    tensor_header,
)
from fedagg.protocol.model_file import named_tensor_body
from fedagg.protocol.stream import TensorStreamDecoder
from fedagg.protocol.tensor_fields import ScalarField, TensorRecord
from fedagg.protocol.wire import MalformedMessage, WireType, encode_varint, field_key, length_delimited_prefix

CHUNK_BYTES = 2 * 1024 * 1024
"""Largest ``npbytes`` of an upload message (OpenFL's client uses the same)."""

_REPLY_HEADER, _REPLY_TENSOR = 1, 3  # GetAggregatedTensorResponse.header, .tensor
_RESULTS_TENSORS = 5  # TaskResults.tensors
_SIZE_KEY = field_key(1, WireType.VARINT)  # DataStream.size
_NPBYTES = 2  # DataStream.npbytes


@dataclass(frozen=True)
class TensorReply:
    """A decoded GetAggregatedTensor reply; ``values`` is a read-only view into the reply's bytes."""

    header: aggregator_pb2.MessageHeader
    name: str
    values: Float32Array


def parse_tensor_reply(raw: bytes) -> TensorReply:
    """Decode a serialized GetAggregatedTensorResponse without copying its data.

    Raises :class:`CodecError` for a reply that is not one NoCompression float32 tensor.
    """
    decoder = TensorStreamDecoder(_REPLY_TENSOR, scalar_fields=frozenset({_REPLY_HEADER}))
    try:
        events = decoder.feed(raw) + decoder.finish()
    except MalformedMessage as error:
        raise CodecError(f"the GetAggregatedTensor reply is malformed: {error}") from None
    records = [event for event in events if isinstance(event, TensorRecord)]
    if len(records) != 1:
        raise CodecError(f"the GetAggregatedTensor reply carries {len(records)} tensors, not one")
    record = records[0]
    header = aggregator_pb2.MessageHeader()
    for event in events:
        if isinstance(event, ScalarField) and isinstance(event.value, bytes):
            header.MergeFromString(event.value)  # as protobuf does with a repeated message field
    check_codec_tags(record.name, record.tags)
    shape = shape_from_metadata(record.name, record.metadata)
    check_data_length(record.name, shape, record.data_length)
    count = record.data_length // FLOAT32.itemsize
    values = np.frombuffer(raw, FLOAT32, count, record.data_offset) if count else np.empty(0, FLOAT32)
    return TensorReply(header, record.name, values.reshape(shape))


@dataclass(frozen=True)
class OutgoingTensor:
    """One tensor of an upload; ``values`` is called while the upload streams (again if it is re-sent).

    What ``values`` returns must stay unchanged only until the next tensor's ``values`` is called, so that a
    tensor computed on the fly (a delta) can reuse one scratch array.
    """

    name: str
    values: Callable[[], npt.ArrayLike]
    round_number: int
    tags: tuple[str, ...]
    """As OpenFL's codec sends them: sorted, with ``compressed``."""
    lossless: bool = True
    report: bool = False

    @classmethod
    def of(
        cls,
        name: str,
        values: npt.ArrayLike | Callable[[], npt.ArrayLike],
        *,
        round_number: int,
        tags: Iterable[str],
        lossless: bool = True,
        report: bool = False,
    ) -> OutgoingTensor:
        """A tensor to upload, tagged as OpenFL's codec tags it (``tags`` sorted, plus ``compressed``)."""
        produce = values if callable(values) else (lambda: values)
        return cls(name, produce, round_number, tuple(sorted({*tags, COMPRESSED})), lossless, report)


def task_results_messages(
    results: aggregator_pb2.TaskResults,
    tensors: Iterable[OutgoingTensor | base_pb2.NamedTensor],
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[bytes]:
    """Serialized DataStream messages carrying ``results`` (its fields but tensors) followed by ``tensors``.

    A ready-made NamedTensor is sent as it is serialized (a copy: meant for small or hand-made tensors).
    """
    chunks = _Chunks(chunk_bytes)
    yield from chunks.add(results.SerializeToString())
    for tensor in tensors:
        chunks.settle()
        body = [tensor.SerializeToString()] if isinstance(tensor, base_pb2.NamedTensor) else _body(tensor)
        yield from chunks.add(length_delimited_prefix(_RESULTS_TENSORS, sum(len(part) for part in body)))
        for part in body:
            yield from chunks.add(part)
    yield from chunks.rest()


def _body(tensor: OutgoingTensor) -> list[bytes | memoryview]:
    """The serialized NamedTensor in parts; its data is a view of the array, not a copy."""
    values = np.asarray(tensor.values(), dtype=FLOAT32, order="C")
    header = tensor_header(
        tensor.name,
        values.shape,
        round_number=tensor.round_number,
        tags=tensor.tags,
        lossless=tensor.lossless,
        report=tensor.report,
    )
    return named_tensor_body(header, values)


class _Chunks:
    """Cuts a byte stream given in parts into DataStream messages of ``chunk_bytes`` of payload each."""

    def __init__(self, chunk_bytes: int) -> None:
        self._chunk_bytes = chunk_bytes
        self._pending: list[bytes | memoryview] = []
        self._size = 0

    def add(self, part: bytes | memoryview) -> Iterator[bytes]:
        """The messages ``part`` completes; its tail waits (as a view, not a copy) for the next part."""
        view = memoryview(part).cast("B")
        while view:
            taken = min(self._chunk_bytes - self._size, len(view))
            self._pending.append(view[:taken])
            self._size += taken
            view = view[taken:]
            if self._size == self._chunk_bytes:
                yield self._message()

    def settle(self) -> None:
        """Copy the waiting tail (under one chunk): the array it points into may change from now on."""
        if len(self._pending) > 1 or any(isinstance(piece, memoryview) for piece in self._pending):
            self._pending = [b"".join(self._pending)]

    def rest(self) -> Iterator[bytes]:
        """The last, shorter message, if any."""
        if self._size:
            yield self._message()

    def _message(self) -> bytes:
        """A serialized ``DataStream(size=size, npbytes=<pending>)``: the one copy of the pending pieces."""
        size, pieces = self._size, self._pending
        self._pending, self._size = [], 0
        return b"".join([_SIZE_KEY, encode_varint(size), length_delimited_prefix(_NPBYTES, size), *pieces])
