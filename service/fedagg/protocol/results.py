"""Incremental decoding of an uploaded ``TaskResults`` stream: header first, then one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from fedagg.protocol import aggregator_pb2
from fedagg.protocol.stream import DecodeLimits, TensorStreamDecoder
from fedagg.protocol.tensor_fields import ScalarField, TensorRecord, TensorStart
from fedagg.protocol.wire import MalformedMessage, as_int32

# TaskResults field numbers (aggregator.proto).
_HEADER, _ROUND, _TASK_NAME, _DATA_SIZE, _TENSORS = 1, 2, 3, 4, 5
_SCALAR_FIELDS = frozenset({_HEADER, _ROUND, _TASK_NAME, _DATA_SIZE})


@dataclass(frozen=True, slots=True)
class SenderHeader:
    """The TaskResults' MessageHeader, reported as soon as it is parsed, so the sender can be authenticated."""

    header: aggregator_pb2.MessageHeader


@dataclass(frozen=True, slots=True)
class ResultsHeader:
    """Everything in a TaskResults that precedes its tensors."""

    header: aggregator_pb2.MessageHeader
    round_number: int
    task_name: str
    data_size: int


ResultsEvent = SenderHeader | ResultsHeader | TensorRecord


class TaskResultsDecoder:
    """Decode a serialized ``TaskResults`` fed in arbitrary chunks.

    Emits :class:`SenderHeader` as soon as the header field is parsed (so the sender is authenticated before
    anything else is buffered), one :class:`ResultsHeader` as soon as the first tensor begins (so an upload can be
    admitted before its bulk arrives), or at the end for an upload without tensors, then a :class:`TensorRecord`
    per tensor. Fields that follow the tensors are refused: every protobuf serializer writes them in field order.
    Unknown fields are skipped unread.
    """

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self._decoder = TensorStreamDecoder(_TENSORS, limits, _SCALAR_FIELDS)
        self._header = aggregator_pb2.MessageHeader()
        self._round_number = 0
        self._task_name = ""
        self._data_size = 0
        self._header_sent = False

    @property
    def position(self) -> int:
        """Number of stream bytes consumed so far."""
        return self._decoder.position

    def feed(self, chunk: bytes | memoryview) -> list[ResultsEvent]:
        """Consume a chunk; return completed events. Raises :class:`MalformedMessage`."""
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> list[ResultsEvent]:
        """End of stream: return the remaining events or raise :class:`MalformedMessage`."""
        if self._decoder.bytes_seen == 0:
            raise MalformedMessage("the upload is empty: expected a serialized TaskResults")
        events = self._translate(self._decoder.finish())
        if not self._header_sent:
            events.append(self._results_header())
        return events

    def _translate(self, events: list[TensorStart | TensorRecord | ScalarField]) -> list[ResultsEvent]:
        out: list[ResultsEvent] = []
        for event in events:
            if isinstance(event, TensorStart):
                if not self._header_sent:
                    out.append(self._results_header())
            elif isinstance(event, TensorRecord):
                out.append(event)
            else:
                self._store(event)
                if event.number == _HEADER:
                    out.append(SenderHeader(self._header))
        return out

    def _results_header(self) -> ResultsHeader:
        self._header_sent = True
        return ResultsHeader(self._header, self._round_number, self._task_name, self._data_size)

    def _store(self, field: ScalarField) -> None:
        if self._header_sent:
            raise MalformedMessage(
                f"TaskResults field {field.number} follows the tensors; header, round_number, task_name and "
                "data_size must precede them"
            )
        number, value = field.number, field.value
        if number == _HEADER:
            if self._header.ByteSize():
                raise MalformedMessage("TaskResults.header appears twice; a sender is named once")
            self._header = _parse_header(_expect_bytes(value, "TaskResults.header"))
        elif number == _ROUND:
            self._round_number = as_int32(_expect_int(value, "TaskResults.round_number"))
        elif number == _TASK_NAME:
            try:
                self._task_name = _expect_bytes(value, "TaskResults.task_name").decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedMessage("TaskResults.task_name is not valid UTF-8") from None
        elif number == _DATA_SIZE:
            self._data_size = as_int32(_expect_int(value, "TaskResults.data_size"))


def _parse_header(raw: bytes) -> aggregator_pb2.MessageHeader:
    try:
        return aggregator_pb2.MessageHeader.FromString(raw)
    except DecodeError as error:
        raise MalformedMessage(f"TaskResults.header is not a MessageHeader: {error}") from None


def _expect_bytes(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{what} has wire type varint, expected length-delimited")
    return value


def _expect_int(value: int | bytes, what: str) -> int:
    if not isinstance(value, int):
        raise MalformedMessage(f"{what} has wire type length-delimited, expected varint")
    return value
