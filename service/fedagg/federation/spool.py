"""The spool: every acknowledged upload of the open rounds, durable before it is acknowledged.

Layout under ``<state_dir>/spool``::

    incoming/<random>.part          an upload being received (deleted at restart)
    recycled/<random>.free          a dropped round's upload, to be written over (:mod:`.spool_pool`)
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

from fedagg.federation.files import atomic_write_bytes, durable_directory, fsync_directory
from fedagg.federation.integrity import (
    FileDigest,
    RunningDigest,
    footer,
    read_sealed_json,
    seal_json,
)
from fedagg.federation.spool_pool import FilePool
from fedagg.federation.write_fence import fenced_replace, refuse_if_fenced

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

    ``over`` writes over the file at ``path`` (a pooled one, :mod:`.spool_pool`) from its start, and cuts it to
    the upload's length when sealed."""

    def __init__(self, path: Path, over: bool = False) -> None:
        self.path = path
        self._file: BinaryIO | None = path.open("r+b" if over else "wb")
        self._digest = RunningDigest()

    @property
    def size(self) -> int:
        """Payload bytes written so far."""
        return self._digest.size

    def write(self, data: bytes | memoryview) -> None:
        """Append a piece of the upload."""
        assert self._file is not None, "the spool file is already sealed"
        self._file.write(data)
        self._digest.update(data)

    def seal(self) -> FileDigest:
        """Append the checksum footer, fsync and close; the payload's digest is returned."""
        assert self._file is not None, "the spool file is already sealed"
        digest = self._digest.digest()
        self._file.write(footer(digest))
        self._file.truncate()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return digest

    def discard(self) -> None:
        """Close and delete the file (the upload was refused, ignored or abandoned); never raises: on a full or
        failing disk the close may fail to flush, and the file goes all the same."""
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
        """A file for an upload that is arriving: a pooled one to write over, else a new one."""
        path = self._incoming / f"{uuid.uuid4().hex}.part"
        return SpoolWriter(path, over=self._pool.take(path))

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
