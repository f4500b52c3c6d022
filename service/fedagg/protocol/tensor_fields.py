"""A NamedTensor as :class:`~fedagg.protocol.stream.TensorStreamDecoder` reports it: the events of a stream, and how
a tensor's small fields (name, round, flags, tags, metadata) are read into a :class:`TensorRecord`."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from fedagg.protocol import base_pb2
from fedagg.protocol.wire import MalformedMessage, WireType, as_int32

# NamedTensor field numbers (base.proto).
NAME_FIELD, ROUND_FIELD, LOSSLESS_FIELD, REPORT_FIELD, TAGS_FIELD, METADATA_FIELD, DATA_FIELD = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)


@dataclass(frozen=True, slots=True)
class TensorStart:
    """A tensor field has begun; its bytes follow. ``index`` counts tensors from 0."""

    index: int


@dataclass(frozen=True, slots=True)
class TensorRecord:
    """A NamedTensor whose small fields are decoded and whose data bytes are located in the stream.

    Reported when the data begins (the data bytes may still be arriving), or at the tensor's end when it has no
    data field.
    """

    index: int
    name: str
    round_number: int
    lossless: bool
    report: bool
    tags: tuple[str, ...]
    metadata: tuple[base_pb2.MetadataProto, ...]
    data_offset: int
    data_length: int


@dataclass(frozen=True, slots=True)
class ScalarField:
    """A field outside the tensors: a varint's value, or a length-delimited field's bytes."""

    number: int
    value: int | bytes


Event = TensorStart | TensorRecord | ScalarField


@dataclass(slots=True)
class TensorFields:
    """A NamedTensor's small fields as they are decoded, and where its data lies."""

    name: str = ""
    round_number: int = 0
    lossless: bool = False
    report: bool = False
    tags: list[str] = field(default_factory=list)
    metadata: list[base_pb2.MetadataProto] = field(default_factory=list)
    data_offset: int = 0
    data_length: int = 0

    def record(self, index: int) -> TensorRecord:
        """The finished record of tensor ``index``."""
        return TensorRecord(
            index=index,
            name=self.name,
            round_number=self.round_number,
            lossless=self.lossless,
            report=self.report,
            tags=tuple(self.tags),
            metadata=tuple(self.metadata),
            data_offset=self.data_offset,
            data_length=self.data_length,
        )


def expect_wire_type(what: str, number: int, actual: int, expected: WireType) -> None:
    """Raise :class:`MalformedMessage` naming ``what`` unless field ``number`` has the ``expected`` wire type."""
    if actual != expected:
        raise MalformedMessage(f"{what} (field {number}) has wire type {actual}, expected {int(expected)}")


def store_tensor_field(current: TensorFields, number: int, wire_type: int, value: int | bytes | None) -> None:
    """Store field ``number`` of a NamedTensor (``None``: a field that was skipped) in ``current``."""
    if value is None:
        return
    expected = {NAME_FIELD: WireType.LEN, TAGS_FIELD: WireType.LEN, METADATA_FIELD: WireType.LEN}.get(
        number, WireType.VARINT
    )
    if number <= METADATA_FIELD:
        expect_wire_type("NamedTensor field", number, wire_type, expected)
    if number == NAME_FIELD:
        current.name = _utf8(value, "NamedTensor.name")
    elif number == ROUND_FIELD:
        current.round_number = as_int32(int(value))
    elif number == LOSSLESS_FIELD:
        current.lossless = bool(value)
    elif number == REPORT_FIELD:
        current.report = bool(value)
    elif number == TAGS_FIELD:
        current.tags.append(_utf8(value, "NamedTensor.tags"))
    elif number == METADATA_FIELD:
        assert isinstance(value, bytes)
        try:
            current.metadata.append(base_pb2.MetadataProto.FromString(value))
        except DecodeError as error:
            raise MalformedMessage(
                f"NamedTensor.transformer_metadata is not a MetadataProto: {error}"
            ) from None


def _utf8(value: int | bytes, what: str) -> str:
    assert isinstance(value, bytes)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"{what} is not valid UTF-8") from None
