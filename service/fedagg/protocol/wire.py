"""Protocol-buffer wire-format primitives used by the incremental decoders and streaming writers."""

from __future__ import annotations

from enum import IntEnum

MAX_VARINT_BYTES = 10


class WireType(IntEnum):
    """Protocol-buffer wire types."""

    VARINT = 0
    I64 = 1
    LEN = 2
    I32 = 5


class MalformedMessage(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer (or an int32/int64 as two's complement) as a varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview) -> int:
    """Decode one complete varint (``data`` must hold exactly its bytes)."""
    result = 0
    for shift, byte in enumerate(data):
        result |= (byte & 0x7F) << (7 * shift)
    return result


def as_int32(value: int) -> int:
    """Interpret a decoded varint as a signed 32-bit integer, as protobuf's int32 does."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def field_key(field_number: int, wire_type: WireType) -> bytes:
    """The encoded key (tag) of a field."""
    return encode_varint((field_number << 3) | wire_type)


def length_delimited_prefix(field_number: int, length: int) -> bytes:
    """Key and length of a length-delimited field whose payload follows."""
    return field_key(field_number, WireType.LEN) + encode_varint(length)


_DATASTREAM_NPBYTES = 2  # DataStream.npbytes (base.proto); field 1 (size) is ignored, as OpenFL's server does


def datastream_payload(message: bytes) -> memoryview:
    """The ``npbytes`` of a serialized ``DataStream``, without copying them (empty when absent).

    Uploads arrive as DataStream messages of up to 2 MiB; slicing the payload out of the received bytes spares
    the copy a protobuf parse would make.
    """
    view = memoryview(message)
    payload = view[:0]
    position = 0
    while position < len(view):
        key, position = _read_varint(view, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == WireType.VARINT:
            _, position = _read_varint(view, position)
        elif wire_type == WireType.LEN:
            length, position = _read_varint(view, position)
            if position + length > len(view):
                raise MalformedMessage("DataStream field crosses the end of the message")
            if number == _DATASTREAM_NPBYTES:
                payload = view[position : position + length]
            position += length
        elif wire_type in (WireType.I64, WireType.I32):
            position += 8 if wire_type == WireType.I64 else 4
        else:
            raise MalformedMessage(f"DataStream field {number} has unsupported wire type {wire_type}")
    if position != len(view):
        raise MalformedMessage("DataStream message is truncated")
    return payload


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    result = 0
    for shift in range(MAX_VARINT_BYTES):
        if position >= len(view):
            raise MalformedMessage("DataStream message is truncated inside a varint")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            return result, position
    raise MalformedMessage(f"varint longer than {MAX_VARINT_BYTES} bytes in a DataStream message")
