"""Durable federation state in one directory (a PersistentVolume in Kubernetes).

Layout::

    checkpoint.json              the committed state (round, best score, quit jobs, kept models' digests):
                                 the commit point of every round end and quit job
    checkpoint.prev.json         the checkpoint of the previous round boundary (recovery falls back to it)
    models/round-000003.pbuf     the global model of each kept round (plain OpenFL ModelProto); written once,
                                 never over: best.pbuf and last.pbuf are hard links to these files
    aggregators/train/round-000003/first_moment.pbuf
                                 a task aggregator's model-sized state (an optimizer's moment) as of round 3
    metrics/round-000002.json    aggregated and collaborator metrics of each finished round
    spool/                       uploads of the open round and the one before it (:mod:`fedagg.federation.spool`)
    quarantine/                  corrupt files moved aside, never deleted
    lock                         held (flock) by the one aggregator using the directory (:mod:`.state_lock`)

Every file is written atomically and checksummed (:mod:`fedagg.federation.integrity`), and verified when read
back. Every method blocks on the disk: call them off the event loop.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedagg.federation.checkpoint import CHECKPOINT_RECORD, Checkpoint
from fedagg.federation.files import (
    atomic_copy,
    atomic_link,
    atomic_write,
    atomic_write_bytes,
    durable_directory,
    fsync_directory,
    quarantine,
)
from fedagg.federation.integrity import (
    CorruptFile,
    FileDigest,
    RunningDigest,
    read_sealed_json,
    seal_json,
    verify_file,
)
from fedagg.federation.spool import Spool
from fedagg.federation.write_fence import refuse_if_fenced
from fedagg.federation.writeback import Writeback
from fedagg.protocol.codec import FLOAT32, Float32Array, Shape
from fedagg.protocol.model_file import (
    LoadedModel,
    ModelFileError,
    model_tensor_prefix,
    read_model,
    write_model,
)

METRICS_RECORD = "fedagg/round-metrics/v1"


class ModelWriter:
    """Streams a model file tensor by tensor (and a tensor block by block), computing its digest; the disk write
    of what is written starts as it goes (:mod:`fedagg.federation.writeback`), so the fsync after it is short."""

    def __init__(self, file: BinaryIO, round_number: int) -> None:
        self._file = file
        self._round_number = round_number
        self._digest = RunningDigest()
        self._writeback = Writeback()
        self._remaining = 0
        self.names: list[str] = []

    def begin(self, name: str, shape: Shape) -> None:
        """Start tensor ``name``; its float32 values follow through :meth:`write`."""
        if self._remaining:
            raise ValueError(f"tensor {self.names[-1]!r} is missing {self._remaining} bytes")
        self._put(model_tensor_prefix(name, shape, self._round_number))
        self._remaining = int(np.prod(shape, dtype=np.int64)) * FLOAT32.itemsize
        self.names.append(name)

    def write(self, values: Float32Array) -> None:
        """The next values (C order) of the current tensor."""
        data = np.ascontiguousarray(values, dtype=FLOAT32).reshape(-1).view(np.uint8).data
        if len(data) > self._remaining:
            raise ValueError(f"tensor {self.names[-1]!r} received more values than its shape holds")
        self._put(data)
        self._remaining -= len(data)

    def add(self, name: str, values: Float32Array) -> None:
        """A whole tensor."""
        self.begin(name, values.shape)
        self.write(values)

    def finish(self) -> FileDigest:
        """The digest of everything written."""
        if self._remaining:
            raise ValueError(f"tensor {self.names[-1]!r} is missing {self._remaining} bytes")
        return self._digest.digest()

    def _put(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._digest.update(data)
        self._writeback.written(self._file, self._digest.size)


@dataclass(frozen=True)
class CheckpointCandidate:
    """A checkpoint file as found at start-up: its checkpoint, or why it cannot be used."""

    path: Path
    checkpoint: Checkpoint | None
    problem: str = ""


class StateStore:
    """All reads and writes of the state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = Spool(root / "spool")
        self.quarantine_dir = root / "quarantine"
        self.on_quarantine: Callable[[str], None] = _ignore_kind
        """Told the kind (``upload``, ``rejection``, ``close_decision``, ``checkpoint``, ``model``, ``metrics``)
        of every file moved to quarantine."""
        self._models = root / "models"
        self._legacy_deltas = root / "deltas"
        self._aggregators = root / "aggregators"
        self._metrics = root / "metrics"
        self._checkpoint = root / "checkpoint.json"
        self._previous = root / "checkpoint.prev.json"

    def prepare(self) -> None:
        """Create the directories (durably), clear uploads left half-received by the last stop and the delta files
        earlier versions derived at round ends (deltas are now computed when a reply is built)."""
        durable_directory(self.root)
        shutil.rmtree(self._legacy_deltas, ignore_errors=True)
        for directory in (self._models, self._metrics):
            durable_directory(directory)
        # earlier versions' pool of pruned models (a kept model is now written once, never over)
        shutil.rmtree(self._models / "recycled", ignore_errors=True)
        self.spool.prepare()

    def has_state(self) -> bool:
        """Whether a checkpoint exists (the directory is not new)."""
        return self._checkpoint.exists() or self._previous.exists()

    def quarantine(self, path: Path, reason: str, kind: str) -> Path:
        """Move a corrupt file into ``quarantine/`` and report it."""
        moved = quarantine(path, self.quarantine_dir, reason)
        self.on_quarantine(kind)
        return moved

    def probe(self) -> None:
        """Write, fsync and delete a small file in every directory the state is written to (the root and two
        levels below it, the quarantine aside): raises OSError while any of them refuses writes."""
        refuse_if_fenced()
        directories = [self.root, *(path for path in self.root.glob("*/") if path != self.quarantine_dir)]
        directories += [path for parent in directories[1:] for path in parent.glob("*/")]
        for directory in directories:
            probe = directory / ".probe"
            with probe.open("wb") as file:
                file.write(b"fedagg storage probe\n")
                file.flush()
                os.fsync(file.fileno())
            probe.unlink()
            fsync_directory(directory)

    # Models -------------------------------------------------------------------------------------------------

    def model_path(self, round_number: int) -> Path:
        """Where the global model of ``round_number`` is kept."""
        return self._models / f"round-{round_number:06d}.pbuf"

    def write_model(self, round_number: int, build: Callable[[ModelWriter], None]) -> FileDigest:
        """Durably write the global model of ``round_number``, streamed by ``build``; return its digest."""
        digests: list[FileDigest] = []

        def write(file: BinaryIO) -> None:
            writer = ModelWriter(file, round_number)
            build(writer)
            digests.append(writer.finish())

        atomic_write(self.model_path(round_number), write)
        return digests[0]

    def load_model(self, round_number: int, digest: FileDigest) -> LoadedModel:
        """Verify and map a kept model; raise :class:`CorruptFile` when it does not match its digest."""
        verify_file(self.model_path(round_number), digest)
        return self.map_model(round_number)

    def map_model(self, round_number: int) -> LoadedModel:
        """Map a kept model without verifying it: one this process has just written, its digest computed from the
        bytes as they were written (:meth:`write_model`). Raises :class:`CorruptFile` for a file that does not
        parse."""
        path = self.model_path(round_number)
        try:
            model = read_model(path)
        except ModelFileError as error:
            raise CorruptFile(str(error)) from None
        if model.round_number != round_number:
            raise CorruptFile(f"{path}: holds round {model.round_number}, expected {round_number}")
        return model

    def restore_model(self, round_number: int, digest: FileDigest, copies: list[Path]) -> Path | None:
        """Replace a missing or corrupt kept model by the first of ``copies`` with the same digest; return it."""
        for copy in copies:
            try:
                verify_file(copy, digest)
            except (CorruptFile, OSError):
                continue
            atomic_copy(copy, self.model_path(round_number))
            return copy
        return None

    def publish(self, round_number: int, target: Path) -> None:
        """Atomically make a published path (best.pbuf, last.pbuf) the kept model of ``round_number``: a hard link
        to it, or a copy where no link can be made (``target`` on another filesystem)."""
        source = self.model_path(round_number)
        if not atomic_link(source, target):
            atomic_copy(source, target)

    def prune_models(self, keep_from_round: int) -> None:
        """Drop kept models (with their aggregator state) of rounds before ``keep_from_round``. A dropped model is
        unlinked, never written over: a published file may still be that inode (a reader of an older best.pbuf
        keeps its bytes). Refused (:class:`~fedagg.federation.write_fence.Fenced`) once this process is no longer
        the leader: the new one owns the models."""
        refuse_if_fenced()
        for path in self._models.glob("round-*.pbuf"):
            number = path.stem.removeprefix("round-")
            if number.isdigit() and int(number) < keep_from_round:
                path.unlink(missing_ok=True)
        for directory in self._aggregators.glob("*/round-*"):
            number = directory.name.removeprefix("round-")
            if number.isdigit() and int(number) < keep_from_round:
                shutil.rmtree(directory, ignore_errors=True)

    def slot_path(self, task: str, slot: str, round_number: int) -> Path:
        """Where a task aggregator's state ``slot`` of ``round_number`` is kept."""
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", task).lstrip(".") or "_"
        return self._aggregators / folder / f"round-{round_number:06d}" / f"{slot}.pbuf"

    def load_slot(self, task: str, slot: str, round_number: int, digest: FileDigest) -> LoadedModel:
        """Verify and map a task aggregator's state slot; raise :class:`CorruptFile` when it does not verify."""
        path = self.slot_path(task, slot, round_number)
        verify_file(path, digest)
        try:
            return read_model(path)
        except ModelFileError as error:
            raise CorruptFile(str(error)) from None

    # Metrics ------------------------------------------------------------------------------------------------

    def save_round_metrics(self, round_number: int, records: list[dict[str, Any]]) -> None:
        """Durably keep the metrics of a finished round."""
        atomic_write_bytes(self._metrics_path(round_number), seal_json(METRICS_RECORD, records))

    def load_metrics(self, before_round: int) -> list[dict[str, Any]]:
        """Metrics of every kept round before ``before_round``, in round order; corrupt files are quarantined."""
        records: list[dict[str, Any]] = []
        for path in sorted(self._metrics.glob("round-*.json")):
            number = path.stem.removeprefix("round-")
            if not number.isdigit() or int(number) >= before_round:
                continue
            try:
                records.extend(read_sealed_json(path, METRICS_RECORD))
            except (CorruptFile, OSError) as error:  # OSError: a read error (EIO), or not a file
                self.quarantine(path, f"{error}; that round's metric history is lost", "metrics")
        return records

    def _metrics_path(self, round_number: int) -> Path:
        return self._metrics / f"round-{round_number:06d}.json"

    # Checkpoints --------------------------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: Checkpoint, *, new_round: bool) -> None:
        """Atomically replace the checkpoint; at a new round the old one is kept as the previous one first."""
        if new_round and self._checkpoint.exists():
            atomic_copy(self._checkpoint, self._previous)
        atomic_write_bytes(self._checkpoint, seal_json(CHECKPOINT_RECORD, checkpoint.to_json()))

    def checkpoints(self) -> Iterator[CheckpointCandidate]:
        """The current, then the previous checkpoint, each verified (missing ones are skipped)."""
        for path in (self._checkpoint, self._previous):
            if not path.exists():
                continue
            try:
                checkpoint = Checkpoint.from_json(read_sealed_json(path, CHECKPOINT_RECORD), path)
            except (CorruptFile, OSError) as error:
                yield CheckpointCandidate(path, None, str(error))
            else:
                yield CheckpointCandidate(path, checkpoint)


def publish_model(path: Path, tensors: Mapping[str, Float32Array], round_number: int) -> None:
    """Atomically write an OpenFL .pbuf model file (a model made outside a federation: init, demo, tests)."""
    atomic_write(path, lambda file: write_model(file, tensors, round_number))


def _ignore_kind(kind: str) -> None:
    """The default quarantine report: nobody listens."""
