"""The round's model on its way from the root to the ingest replicas: fetched once per round, checked, kept.

The root serves a round's model file (:class:`ServedModel`: its path, size and SHA-256, computed once); a replica
streams it into its state directory (:class:`ModelCopies`), checks size and SHA-256 before it renames the file
into place (fsynced), and keeps the checksum beside it, so a replica that restarts uses its copy after checking
it again, without asking the root. A copy that does not match is deleted, never served.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fedagg.federation.files import atomic_write_bytes, fsync_directory
from fedagg.federation.write_fence import fenced_replace
from fedagg.protocol import tier_pb2

READ_BYTES = 1 << 20


class ModelMismatch(ValueError):
    """A fetched or kept model that is not what its checksum says."""


@dataclass(frozen=True)
class ServedModel:
    """A model file as the root serves it."""

    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> ServedModel:
        """Measure ``path`` (reads it whole). Blocks on the disk."""
        return cls(path, path.stat().st_size, file_sha256(path))


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file. Blocks on the disk."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def read_block(path: Path, offset: int) -> bytes:
    """Up to :data:`READ_BYTES` of ``path`` from ``offset``. Blocks on the disk."""
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(READ_BYTES)


class ModelCopies:
    """A replica's copies of the rounds' models in ``directory`` (module docstring). Methods block on the disk,
    but :meth:`receive`, which runs its disk work on ``executor``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, round_number: int) -> Path:
        """Where round ``round_number``'s model is kept."""
        return self.directory / f"model-{round_number:06d}.pbuf"

    def kept(self, round_number: int) -> Path | None:
        """The kept copy of the round's model, if there is one that matches its checksum (a mismatch is deleted)."""
        path, checksum = self.path(round_number), self._checksum_path(round_number)
        if not path.exists() or not checksum.exists():
            return None
        if file_sha256(path) != checksum.read_text().strip():
            path.unlink(missing_ok=True)
            checksum.unlink(missing_ok=True)
            return None
        return path

    def drop_before(self, round_number: int) -> None:
        """Delete the copies (and checksums) of rounds before ``round_number``."""
        for path in self.directory.glob("model-*"):
            number = path.name.removeprefix("model-").split(".", 1)[0]
            if number.isdigit() and int(number) < round_number:
                path.unlink(missing_ok=True)

    def _checksum_path(self, round_number: int) -> Path:
        return self.path(round_number).with_suffix(".sha256")

    async def receive(
        self, round_number: int, chunks: AsyncIterator[tier_pb2.ModelChunk], executor: Executor
    ) -> Path:
        """Write a FetchModel stream to the round's copy; raise :class:`ModelMismatch` (nothing kept) unless the
        bytes match the size and SHA-256 the first chunk announced."""
        loop = asyncio.get_running_loop()
        target = self.path(round_number)
        partial = target.with_suffix(".part")
        file = await loop.run_in_executor(executor, partial.open, "wb")
        digest, size, announced = hashlib.sha256(), 0, None
        try:
            async for chunk in chunks:
                if announced is None:
                    announced = (chunk.size, chunk.sha256)
                digest.update(chunk.data)
                size += len(chunk.data)
                await loop.run_in_executor(executor, file.write, chunk.data)
            await loop.run_in_executor(executor, _sync_close, file)
            if announced is None or (size, digest.hexdigest()) != announced:
                raise ModelMismatch(
                    f"round {round_number}'s model from the root has {size} bytes with SHA-256 "
                    f"{digest.hexdigest()}; the root announced {announced}"
                )
            await loop.run_in_executor(executor, self._keep, round_number, partial, announced[1])
        finally:
            file.close()
            partial.unlink(missing_ok=True)
        return target

    def _keep(self, round_number: int, partial: Path, sha256: str) -> None:
        fenced_replace(partial, self.path(round_number))
        fsync_directory(self.directory)
        atomic_write_bytes(self._checksum_path(round_number), f"{sha256}\n".encode())


def _sync_close(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
