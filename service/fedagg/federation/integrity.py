"""Checksums on what fedagg writes to its state directory, verified whenever it is read back.

* Spooled uploads end with a fixed 24-byte footer: a magic string, the payload length, the payload's CRC-32 and
  the footer's own CRC-32.
* JSON records (checkpoints, rejection records, close decisions, round metrics) are sealed:
  ``{"format": ..., "crc32": ..., "body": ...}``, the CRC-32 covering the canonical JSON of the body.
* Kept model files stay plain OpenFL ``.pbuf`` files (so OpenFL and ``fedagg model show`` read them); their
  length and CRC-32 are recorded in the checkpoint that names them.

CRC-32 detects accidental corruption (flipped bits, torn or truncated files, a stray write); it is not a defence
against someone who can write to the state directory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zlib_ng import zlib_ng

READ_BLOCK_BYTES = 8 << 20
_FOOTER_HEAD = struct.Struct("<8sQI")  # magic, payload length, payload CRC-32; then the head's own CRC-32
_FOOTER_MAGIC = b"FEDAGGS1"
FOOTER_BYTES = _FOOTER_HEAD.size + 4


class CorruptFile(Exception):
    """A state file whose content does not match its checksum or format (for logs: names the file)."""


@dataclass(frozen=True, slots=True)
class FileDigest:
    """Length and CRC-32 of a file's content."""

    size: int
    crc32: int

    def to_json(self) -> dict[str, int]:
        """A JSON-serialisable dict."""
        return {"size": self.size, "crc32": self.crc32}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileDigest:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError/ValueError for anything else."""
        return cls(int(data["size"]), int(data["crc32"]))


class RunningDigest:
    """CRC-32 and length of bytes seen so far."""

    def __init__(self) -> None:
        self.size = 0
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        """Account for ``data`` (zlib-ng: the same CRC-32 as zlib at memory speed, the GIL released)."""
        self._crc = zlib_ng.crc32(data, self._crc)
        self.size += len(data)

    def digest(self) -> FileDigest:
        """The digest of everything seen."""
        return FileDigest(self.size, self._crc)


def digest_of(path: Path, length: int | None = None) -> FileDigest:
    """Digest of the first ``length`` bytes of ``path`` (the whole file when None), read block by block."""
    running = RunningDigest()
    buffer = bytearray(READ_BLOCK_BYTES)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        remaining = length
        while remaining is None or remaining > 0:
            wanted = READ_BLOCK_BYTES if remaining is None else min(READ_BLOCK_BYTES, remaining)
            count = file.readinto(view[:wanted])
            if not count:
                break
            running.update(view[:count])
            if remaining is not None:
                remaining -= count
    return running.digest()


def verify_file(path: Path, expected: FileDigest) -> None:
    """Raise :class:`CorruptFile` unless ``path`` has exactly the expected length and CRC-32."""
    size = path.stat().st_size
    if size != expected.size:
        raise CorruptFile(f"{path}: {size} bytes, its checksum record says {expected.size}")
    actual = digest_of(path)
    if actual != expected:
        raise CorruptFile(f"{path}: CRC-32 {actual.crc32:08x}, expected {expected.crc32:08x}")


def footer(digest: FileDigest) -> bytes:
    """The footer that seals a payload of ``digest``."""
    head = _FOOTER_HEAD.pack(_FOOTER_MAGIC, digest.size, digest.crc32)
    return head + struct.pack("<I", zlib_ng.crc32(head))


def verify_footer(path: Path) -> FileDigest:
    """Check a footer-sealed file; return the digest of its payload (the bytes before the footer)."""
    size = path.stat().st_size
    if size < FOOTER_BYTES:
        raise CorruptFile(f"{path}: {size} bytes is too short to hold a checksum footer")
    with path.open("rb") as file:
        file.seek(size - FOOTER_BYTES)
        raw = file.read(FOOTER_BYTES)
    magic, length, crc = _FOOTER_HEAD.unpack(raw[:-4])
    if magic != _FOOTER_MAGIC or raw[-4:] != struct.pack("<I", zlib_ng.crc32(raw[:-4])):
        raise CorruptFile(f"{path}: no valid checksum footer")
    if length != size - FOOTER_BYTES:
        raise CorruptFile(f"{path}: footer says {length} payload bytes, the file holds {size - FOOTER_BYTES}")
    actual = digest_of(path, length)
    if actual.crc32 != crc:
        raise CorruptFile(f"{path}: payload CRC-32 {actual.crc32:08x}, footer says {crc:08x}")
    return actual


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal_json(kind: str, body: Any) -> bytes:
    """Serialize ``body`` as a sealed record of ``kind``."""
    record = {"format": kind, "crc32": zlib_ng.crc32(_canonical(body)), "body": body}
    return json.dumps(record, sort_keys=True, indent=1, allow_nan=False).encode()


def unseal_json(data: bytes, kind: str, source: Path) -> Any:
    """The body of a sealed record of ``kind``; raise :class:`CorruptFile` for anything else."""
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptFile(f"{source}: not JSON ({error})") from None
    if not isinstance(record, dict) or record.get("format") != kind or "body" not in record:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CorruptFile(f"{source}: not a {kind} record (format {found!r})")
    body = record["body"]
    if record.get("crc32") != zlib_ng.crc32(_canonical(body)):
        raise CorruptFile(f"{source}: checksum mismatch")
    return body


def read_sealed_json(path: Path, kind: str) -> Any:
    """Read and verify a sealed record."""
    return unseal_json(path.read_bytes(), kind, path)
