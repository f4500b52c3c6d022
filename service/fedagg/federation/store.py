"""Durable federation state in one directory (a PersistentVolume in Kubernetes).

Layout::

    checkpoint.json              round, best score, quit jobs sent: the commit point of every round end
    models/round-000003.pbuf     the global model of each kept round (OpenFL ModelProto)
    metrics/round-000002.json    aggregated and collaborator metrics of each finished round
    spool/incoming/              uploads being received
    spool/round-000003/000001.results   acknowledged uploads of the current round, in commit order

Every file is written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
either the old or the new version. An upload is acknowledged only after its spool file is renamed into its
round's directory, so acknowledged contributions survive a crash and are replayed on restart.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fedagg.protocol.codec import Float32Array
from fedagg.protocol.model_file import LoadedModel, read_model, write_model

CHECKPOINT_FORMAT = 1


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` via a temporary sibling, fsync it and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload``."""

    def write(file: BinaryIO) -> None:
        file.write(payload)

    atomic_write(path, write)


def publish_model(path: Path, tensors: Mapping[str, Float32Array], round_number: int) -> None:
    """Atomically write an OpenFL .pbuf model file."""
    atomic_write(path, lambda file: write_model(file, tensors, round_number))


class SpoolFile:
    """An upload being written to disk as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = path.open("wb")
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk of the upload."""
        assert self._file is not None
        self._file.write(chunk)
        self.size += len(chunk)

    def sync(self) -> None:
        """Flush and fsync; the file is complete after this."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def discard(self) -> None:
        """Close and delete the file (the upload was refused or abandoned)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SpoolEntry:
    """An acknowledged upload in a round's spool directory."""

    sequence: int
    path: Path


@dataclass(frozen=True)
class Checkpoint:
    """The federation state at a round boundary (plus quit jobs sent since)."""

    federation_uuid: str
    round_number: int
    first_round: int
    best_score: float | None
    best_round: int | None
    last_round: int | None
    quit_sent: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"format": CHECKPOINT_FORMAT, **asdict(self), "quit_sent": list(self.quit_sent)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path) -> Checkpoint:
        """Parse a checkpoint; raise ValueError naming the file and the problem."""
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: checkpoint format {data.get('format')!r} is not {CHECKPOINT_FORMAT}")
        try:
            return cls(
                federation_uuid=str(data["federation_uuid"]),
                round_number=int(data["round_number"]),
                first_round=int(data["first_round"]),
                best_score=None if data["best_score"] is None else float(data["best_score"]),
                best_round=None if data["best_round"] is None else int(data["best_round"]),
                last_round=None if data["last_round"] is None else int(data["last_round"]),
                quit_sent=tuple(str(name) for name in data["quit_sent"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: malformed checkpoint ({error!r})") from None


class StateStore:
    """All reads and writes of the state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / "spool" / "incoming"
        self._models = root / "models"
        self._metrics = root / "metrics"
        self._checkpoint = root / "checkpoint.json"
        for directory in (self._incoming, self._models, self._metrics):
            directory.mkdir(parents=True, exist_ok=True)

    # Spool --------------------------------------------------------------------------------------------------

    def open_spool(self) -> SpoolFile:
        """A new file for an upload that is arriving."""
        return SpoolFile(self._incoming / f"{uuid.uuid4().hex}.part")

    def accept_spool(self, spool: SpoolFile, round_number: int, sequence: int) -> SpoolEntry:
        """Move a complete, synced upload into its round's directory; durable when this returns."""
        directory = self._round_spool(round_number)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{sequence:06d}.results"
        os.replace(spool.path, target)
        fsync_directory(directory)
        return SpoolEntry(sequence, target)

    def spooled(self, round_number: int) -> list[SpoolEntry]:
        """The acknowledged uploads of a round, in commit order."""
        directory = self._round_spool(round_number)
        if not directory.is_dir():
            return []
        entries = [SpoolEntry(int(path.stem), path) for path in directory.glob("*.results")]
        return sorted(entries, key=lambda entry: entry.sequence)

    def drop_spool(self, keep_from_round: int) -> None:
        """Delete spooled uploads of rounds before ``keep_from_round`` and any partial upload."""
        for directory in (self.root / "spool").glob("round-*"):
            if int(directory.name.removeprefix("round-")) < keep_from_round:
                shutil.rmtree(directory)
        for partial in self._incoming.glob("*.part"):
            partial.unlink(missing_ok=True)

    def _round_spool(self, round_number: int) -> Path:
        return self.root / "spool" / f"round-{round_number:06d}"

    # Models -------------------------------------------------------------------------------------------------

    def model_path(self, round_number: int) -> Path:
        """Where the global model of ``round_number`` is kept."""
        return self._models / f"round-{round_number:06d}.pbuf"

    def save_model(self, round_number: int, tensors: Mapping[str, Float32Array]) -> Path:
        """Durably keep the global model of ``round_number``."""
        path = self.model_path(round_number)
        publish_model(path, tensors, round_number)
        return path

    def load_model(self, round_number: int) -> LoadedModel:
        """Map a kept global model."""
        return read_model(self.model_path(round_number))

    def has_model(self, round_number: int) -> bool:
        """Whether the global model of ``round_number`` is kept."""
        return self.model_path(round_number).is_file()

    def prune_models(self, keep_from_round: int) -> None:
        """Delete kept models of rounds before ``keep_from_round``."""
        for path in self._models.glob("round-*.pbuf"):
            if int(path.stem.removeprefix("round-")) < keep_from_round:
                path.unlink(missing_ok=True)

    # Metrics ------------------------------------------------------------------------------------------------

    def save_round_metrics(self, round_number: int, records: list[dict[str, Any]]) -> None:
        """Durably keep the metrics of a finished round."""
        atomic_write_bytes(self._metrics / f"round-{round_number:06d}.json", json.dumps(records).encode())

    def load_metrics(self, before_round: int) -> list[dict[str, Any]]:
        """Metrics of every kept round before ``before_round``, in round order."""
        records: list[dict[str, Any]] = []
        for path in sorted(self._metrics.glob("round-*.json")):
            if int(path.stem.removeprefix("round-")) < before_round:
                records.extend(json.loads(path.read_text()))
        return records

    # Checkpoint ---------------------------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Atomically replace the checkpoint."""
        atomic_write_bytes(
            self._checkpoint, json.dumps(checkpoint.to_json(), indent=1, sort_keys=True).encode()
        )

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None for a fresh state directory."""
        if not self._checkpoint.is_file():
            return None
        return Checkpoint.from_json(json.loads(self._checkpoint.read_text()), self._checkpoint)
