"""Incremental decoding of messages that carry NamedTensors, as their bytes arrive.

OpenFL sends ``TaskResults`` as a serialized message cut into ``DataStream`` chunks, and stores models as a
serialized ``ModelProto``. Both are "a few small fields plus repeated NamedTensor", where each tensor's
``data_bytes`` may be hundreds of megabytes. :class:`TensorStreamDecoder` walks such a byte stream without ever
buffering tensor data: small fields are decoded, and each tensor's data bytes are only *located* (absolute offset
and length in the stream), so the caller can spool the raw stream to disk and map the data later.

The decoder is a push parser: feed it chunks split anywhere (inside a varint, a tag, a tensor header...) and it
returns the events completed so far. It is not thread-safe; use one decoder per stream.

Everything it keeps in memory is bounded by :class:`DecodeLimits`: the length of each small field, the number of
tags and metadata entries per tensor, and the total of all small fields (names, tags, shapes) of the stream.
Fields the caller does not ask for are skipped without being buffered. A tensor's small fields must precede its
data (every protobuf serializer writes fields in number order), so a :class:`TensorRecord` is complete, and
reported, as soon as the data begins: a receiver can check a tensor before its bulk arrives.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from fedagg.protocol.tensor_fields import (
    DATA_FIELD,
    Event,
    ScalarField,
    TensorFields,
    TensorStart,
    expect_wire_type,
    store_tensor_field,
)
from fedagg.protocol.wire import MAX_VARINT_BYTES, MalformedMessage, WireType, decode_varint


class LimitExceeded(MalformedMessage):
    """A stream over one of its :class:`DecodeLimits`; ``limit`` names the field of the limit."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


FIELD_COST = 32
"""Bytes of the descriptor budget every decoded field costs, whatever its length (a 1-byte field is not free)."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what a decoder holds in memory; exceeding one raises :class:`MalformedMessage`."""

    field_bytes: int = 1 << 20
    """Longest small field: a name, a tag, a metadata entry, a header."""
    tags_per_tensor: int = 64
    metadata_per_tensor: int = 8
    descriptor_bytes: int = 64 << 20
    """All small fields of the stream together (every tensor's name, tags and metadata), each charged at least
    :data:`FIELD_COST` bytes: the decoding work of a stream, not only what it holds, is bounded."""
    tensors: int = 1 << 20
    """Tensors in the stream."""


@dataclass(slots=True)
class _Varint:
    at_boundary: bool = False


@dataclass(slots=True)
class _Exact:
    length: int


@dataclass(slots=True)
class _Skip:
    remaining: int


_Request = _Varint | _Exact | _Skip
_Parser = Generator[_Request, int | bytes | None, None]


class TensorStreamDecoder:
    """Push parser for a message whose field ``tensor_field`` is ``repeated NamedTensor``.

    The fields in ``scalar_fields`` (all others when None) are reported as :class:`ScalarField`; other fields are
    skipped unread.
    """

    def __init__(
        self,
        tensor_field: int,
        limits: DecodeLimits | None = None,
        scalar_fields: frozenset[int] | None = None,
    ) -> None:
        self._tensor_field = tensor_field
        self._limits = limits or DecodeLimits()
        self._scalar_fields = scalar_fields
        self._descriptor_bytes = 0
        self._pending = bytearray()
        self._position = 0
        self._events: list[Event] = []
        self._tensor_count = 0
        self._current: TensorFields | None = None
        self._parser = self._parse_message()
        self._request: _Request = next(self._parser)

    @property
    def position(self) -> int:
        """Number of stream bytes consumed so far."""
        return self._position

    @property
    def bytes_seen(self) -> int:
        """Number of stream bytes fed so far (consumed or waiting to complete a field)."""
        return self._position + len(self._pending)

    def feed(self, chunk: bytes | memoryview) -> list[Event]:
        """Consume ``chunk`` and return the events it completed. Raises :class:`MalformedMessage`."""
        view = memoryview(chunk)
        pos = 0
        while True:
            request = self._request
            if isinstance(request, _Skip) and request.remaining == 0:
                self._advance(None)
            elif isinstance(request, _Exact) and request.length == 0:
                self._complete(b"")
            elif pos == len(view):
                break
            elif isinstance(request, _Skip):
                taken = min(request.remaining, len(view) - pos)
                pos += taken
                self._position += taken
                request.remaining -= taken
            elif isinstance(request, _Exact):
                wanted = request.length - len(self._pending)
                if len(view) - pos < wanted:
                    self._pending += view[pos:]
                    break
                self._pending += view[pos : pos + wanted]
                pos += wanted
                self._complete(bytes(self._pending))
            else:
                pos = self._take_varint(view, pos)
        events, self._events = self._events, []
        return events

    def finish(self) -> list[Event]:
        """Declare the end of the stream; raise :class:`MalformedMessage` if it ended mid-message."""
        request = self._request
        if isinstance(request, _Varint) and request.at_boundary and not self._pending:
            events, self._events = self._events, []
            return events
        raise MalformedMessage(self._truncation_message())

    def _take_varint(self, view: memoryview, pos: int) -> int:
        end = pos
        while end < len(view) and view[end] & 0x80:
            end += 1
        if end == len(view):
            self._pending += view[pos:]
            if len(self._pending) >= MAX_VARINT_BYTES:
                raise MalformedMessage(
                    f"varint longer than {MAX_VARINT_BYTES} bytes at byte {self._position}"
                )
            return end
        self._pending += view[pos : end + 1]
        if len(self._pending) > MAX_VARINT_BYTES:
            raise MalformedMessage(f"varint longer than {MAX_VARINT_BYTES} bytes at byte {self._position}")
        self._complete(decode_varint(self._pending))
        return end + 1

    def _complete(self, value: int | bytes) -> None:
        self._position += len(self._pending) if isinstance(value, int) else len(value)
        self._pending.clear()
        self._advance(value)

    def _advance(self, value: int | bytes | None) -> None:
        try:
            self._request = self._parser.send(value)
        except StopIteration:  # pragma: no cover - the parser loops forever
            raise MalformedMessage("decoder stopped unexpectedly") from None

    def _truncation_message(self) -> str:
        current = self._current
        if current is None:
            return f"stream ended in the middle of a field at byte {self._position}"
        name = f" '{current.name}'" if current.name else ""
        return f"stream ended inside tensor #{self._tensor_count - 1}{name} at byte {self._position}"

    def _parse_message(self) -> _Parser:
        while True:
            key = yield _Varint(at_boundary=True)
            assert isinstance(key, int)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise MalformedMessage(f"invalid field number 0 at byte {self._position}")
            self._charge(FIELD_COST)
            if number == self._tensor_field:
                expect_wire_type("tensor", number, wire_type, WireType.LEN)
                length = yield _Varint()
                assert isinstance(length, int)
                if self._tensor_count >= self._limits.tensors:
                    raise LimitExceeded(
                        "tensors", f"the message carries more than {self._limits.tensors} tensors"
                    )
                self._events.append(TensorStart(self._tensor_count))
                self._tensor_count += 1
                yield from self._parse_tensor(length)
            elif self._scalar_fields is None or number in self._scalar_fields:
                value = yield from self._read_field(number, wire_type)
                if value is not None:
                    self._events.append(ScalarField(number, value))
            else:
                yield from self._skip_field(number, wire_type)

    def _skip_field(self, number: int, wire_type: int) -> Generator[_Request, int | bytes | None, None]:
        if wire_type == WireType.LEN:
            length = yield _Varint()
            assert isinstance(length, int)
            yield _Skip(length)
        else:
            yield from self._read_field(number, wire_type)

    def _read_field(
        self, number: int, wire_type: int
    ) -> Generator[_Request, int | bytes | None, int | bytes | None]:
        if wire_type == WireType.VARINT:
            value = yield _Varint()
            return value
        if wire_type == WireType.LEN:
            length = yield _Varint()
            assert isinstance(length, int)
            limits = self._limits
            if length > limits.field_bytes:
                raise LimitExceeded(
                    "field_bytes",
                    f"field {number} is {length} bytes long; the limit for fields other than tensor data is "
                    f"{limits.field_bytes} bytes",
                )
            self._charge(length)
            return (yield _Exact(length))
        if wire_type in (WireType.I64, WireType.I32):
            yield _Skip(8 if wire_type == WireType.I64 else 4)
            return None
        raise MalformedMessage(
            f"field {number} has unsupported wire type {wire_type} at byte {self._position}"
        )

    def _charge(self, cost: int) -> None:
        self._descriptor_bytes += cost
        if self._descriptor_bytes > self._limits.descriptor_bytes:
            raise LimitExceeded(
                "descriptor_bytes",
                f"the names, tags and metadata of this message exceed {self._limits.descriptor_bytes} bytes "
                f"(each field counted as at least {FIELD_COST})",
            )

    def _parse_tensor(self, length: int) -> _Parser:
        index = self._tensor_count - 1
        end = self._position + length
        current = self._current = TensorFields()
        reported = False
        while self._position < end:
            key = yield _Varint()
            assert isinstance(key, int)
            number, wire_type = key >> 3, key & 7
            self._charge(FIELD_COST)
            if number > DATA_FIELD:
                yield from self._skip_field(number, wire_type)
                continue
            if reported:
                raise MalformedMessage(
                    f"field {number} of tensor #{index} '{current.name}' follows its data_bytes; a tensor's "
                    "fields must precede its data (as every protobuf serializer writes them)"
                )
            if number == DATA_FIELD:
                expect_wire_type("NamedTensor.data_bytes", number, wire_type, WireType.LEN)
                data_length = yield _Varint()
                assert isinstance(data_length, int)
                current.data_offset, current.data_length = self._position, data_length
                if self._position + data_length > end:
                    break
                self._events.append(current.record(index))
                reported = True
                yield _Skip(data_length)
                continue
            value = yield from self._read_field(number, wire_type)
            self._store_tensor_field(current, index, number, wire_type, value)
        if self._position != end:
            raise MalformedMessage(f"a field of tensor #{index} crosses the end of the tensor at byte {end}")
        self._current = None
        if not reported:
            self._events.append(current.record(index))

    def _store_tensor_field(
        self, current: TensorFields, index: int, number: int, wire_type: int, value: int | bytes | None
    ) -> None:
        store_tensor_field(current, number, wire_type, value)
        limits = self._limits
        if len(current.tags) > limits.tags_per_tensor:
            raise LimitExceeded(
                "tags_per_tensor",
                f"tensor #{index} '{current.name}' has more than {limits.tags_per_tensor} tags",
            )
        if len(current.metadata) > limits.metadata_per_tensor:
            raise LimitExceeded(
                "metadata_per_tensor",
                f"tensor #{index} '{current.name}' has more than {limits.metadata_per_tensor} "
                "transformer_metadata entries",
            )
