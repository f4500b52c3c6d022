"""The spool: every acknowledged upload of the open rounds, durable before it is acknowledged.

Layout under ``<state_dir>/spool``::

    incoming/<random>.part          an upload being received (deleted at restart)
    recycled/<random>.free          a dropped round's upload, to be written over (:mod:`.file_pool`)
    round-000003/000001.results     an accepted upload: its raw TaskResults bytes, then a checksum footer
    round-000003/000002.rejected    a rejected upload: a sealed record of who sent what and why it was refused
    round-000003/close.json         the round's close decision, written before the round's outputs

Sequence numbers give the commit order. An upload is acknowledged only after its file is fsynced and renamed into
its round's directory (and the directory fsynced), so acknowledged contributions survive a crash and are replayed
on restart; a rejection is recorded the same way, so a restart never asks a collaborator for work it was already
told was received.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from fedagg.federation.file_pool import POOLED_FROM_BYTES, FilePool
from fedagg.federation.files import atomic_write_bytes, durable_directory, fsync_directory
from fedagg.federation.integrity import (
    FileDigest,
    RunningDigest,
    footer,
    read_sealed_json,
    seal_json,
)
from fedagg.federation.write_fence import fenced_replace, refuse_if_fenced
from fedagg.federation.writeback import Writeback

REJECTION_RECORD = "fedagg/rejection/v1"
CLOSE_RECORD = "fedagg/round-close/v1"


log = logging.getLogger(__name__)


class EntryKind(StrEnum):
    """What a spool entry holds."""

    RESULTS = "results"
    REJECTED = "rejected"


@dataclass(frozen=True)
class SpoolEntry:
    """An acknowledged upload (or rejection record) in a round's spool directory."""

    round_number: int
    sequence: int
    kind: EntryKind
    path: Path


class SpoolWriter:
    """An upload being written to ``spool/incoming`` as it arrives; not thread-safe (one upload, one writer).

    The file is created when the upload first passes :data:`~fedagg.federation.file_pool.POOLED_FROM_BYTES`
    (the bytes before that wait in memory), and then it is the pool's largest file when there is one, written over
    from its start and cut to the upload's length when sealed: a small upload (a validation task's metrics) never
    takes, and cuts down, the file a model-sized upload would have reused. A smaller upload is written to a new
    file when sealed."""

    def __init__(self, path: Path, pool: FilePool | None = None) -> None:
        self.path = path
        self._pool = pool
        self._file: BinaryIO | None = None
        self._head = bytearray()
        self._sealed = False
        self._digest = RunningDigest()
        self._writeback = Writeback()

    @property
    def size(self) -> int:
        """Payload bytes written so far."""
        return self._digest.size

    def write(self, data: bytes | memoryview) -> None:
        """Append a piece of the upload."""
        assert not self._sealed, "the spool file is already sealed"
        self._digest.update(data)
        if self._file is None and len(self._head) + len(data) < POOLED_FROM_BYTES:
            self._head += data
            return
        file = self._open(pooled=True)
        file.write(data)
        self._writeback.written(file, self._digest.size)

    def _open(self, *, pooled: bool) -> BinaryIO:
        """The file, created (over a pooled one when ``pooled`` and the pool has one) with the bytes held so far."""
        if self._file is None:
            reused = pooled and self._pool is not None and self._pool.take(self.path)
            self._file = self.path.open("r+b" if reused else "wb")  # a reused file's tail is cut when sealed
            self._file.write(self._head)
            self._head = bytearray()
        return self._file

    def seal(self) -> FileDigest:
        """Append the checksum footer, fsync and close; the payload's digest is returned."""
        assert not self._sealed, "the spool file is already sealed"
        self._sealed = True
        digest = self._digest.digest()
        file = self._open(pooled=False)
        file.write(footer(digest))
        file.truncate()
        file.flush()
        os.fsync(file.fileno())
        file.close()
        self._file = None
        return digest

    def discard(self) -> None:
        """Close and delete the file (the upload was refused, ignored or abandoned); never raises: on a full or
        failing disk the close may fail to flush, and the file goes all the same."""
        self._sealed, self._head = True, bytearray()
        try:
            if self._file is not None:
                file, self._file = self._file, None
                file.close()
        except OSError as error:
            log.debug("%s: closing a discarded upload failed: %s", self.path.name, error)
        finally:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as error:
                log.warning(
                    "%s: cannot delete a discarded upload (%s); the next start will", self.path, error
                )


class Spool:
    """The spool directory. Methods block on the disk; call them off the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / "incoming"
        self._pool = FilePool(root / "recycled")

    def prepare(self) -> None:
        """Create the directories and delete uploads that were still arriving at the last stop."""
        durable_directory(self._incoming)
        for partial in self._incoming.glob("*.part"):
            partial.unlink(missing_ok=True)
        self._pool.prepare()

    def open(self) -> SpoolWriter:
        """A writer for an upload that is arriving (it writes over a pooled file when the upload is large)."""
        return SpoolWriter(self._incoming / f"{uuid.uuid4().hex}.part", self._pool)

    def accept(self, writer: SpoolWriter, round_number: int, sequence: int) -> SpoolEntry:
        """Move a sealed upload into its round's directory; durable when this returns."""
        directory = self._round_directory(round_number)
        target = directory / f"{sequence:06d}.{EntryKind.RESULTS}"
        fenced_replace(writer.path, target)
        fsync_directory(directory)
        return SpoolEntry(round_number, sequence, EntryKind.RESULTS, target)

    def record_rejection(self, round_number: int, sequence: int, body: dict[str, Any]) -> SpoolEntry:
        """Durably record that an upload was received and rejected."""
        target = self._round_directory(round_number) / f"{sequence:06d}.{EntryKind.REJECTED}"
        atomic_write_bytes(target, seal_json(REJECTION_RECORD, body))
        return SpoolEntry(round_number, sequence, EntryKind.REJECTED, target)

    def read_rejection(self, entry: SpoolEntry) -> Any:
        """A rejection record's body (verified)."""
        return read_sealed_json(entry.path, REJECTION_RECORD)

    def entries(self, round_number: int) -> list[SpoolEntry]:
        """A round's entries in commit order (files with foreign names are left alone)."""
        directory = self.root / f"round-{round_number:06d}"
        if not directory.is_dir():
            return []
        entries = []
        for path in directory.iterdir():
            stem, _, suffix = path.name.partition(".")
            if stem.isdigit() and suffix in set(EntryKind):
                entries.append(SpoolEntry(round_number, int(stem), EntryKind(suffix), path))
        return sorted(entries, key=lambda entry: entry.sequence)

    def close_decision_path(self, round_number: int) -> Path:
        """Where a round's close decision is recorded."""
        return self.root / f"round-{round_number:06d}" / "close.json"

    def record_close_decision(self, round_number: int, body: dict[str, Any]) -> None:
        """Durably record which collaborators a round closes with."""
        atomic_write_bytes(self.close_decision_path(round_number), seal_json(CLOSE_RECORD, body))

    def read_close_decision(self, round_number: int) -> Any | None:
        """A round's close decision (verified), or None when it has none."""
        path = self.close_decision_path(round_number)
        if not path.is_file():
            return None
        return read_sealed_json(path, CLOSE_RECORD)

    def drop_rounds_before(self, round_number: int) -> None:
        """Drop the spool of every round before ``round_number``: its results files go to the pool (for the next
        uploads to write over), the rest is deleted. Refused (:class:`~fedagg.federation.write_fence.Fenced`) once
        this process is no longer the leader: the new one owns the spool."""
        refuse_if_fenced()
        dropped = []
        for directory in self.root.glob("round-*"):
            number = directory.name.removeprefix("round-")
            if number.isdigit() and int(number) < round_number:
                dropped.append(directory)
        self._pool.refill(path for directory in dropped for path in directory.glob(f"*.{EntryKind.RESULTS}"))
        for directory in dropped:
            shutil.rmtree(directory)
        fsync_directory(self.root)

    def _round_directory(self, round_number: int) -> Path:
        return durable_directory(self.root / f"round-{round_number:06d}")
