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
