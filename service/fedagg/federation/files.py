"""Durable file operations on the state directory: atomic replacement, directory syncs and quarantine.

Every file fedagg creates is written to a temporary sibling, fsynced, renamed into place and made durable by an
fsync of its directory, so a crash leaves either the old or the new version. A new directory is made durable by
an fsync of its parent. None of these functions may run on the event loop: they block on the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fedagg.federation.write_fence import fenced_replace, refuse_if_fenced

log = logging.getLogger(__name__)


def fsync_directory(path: Path) -> None:
    """Make a rename, creation or unlink in ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def durable_directory(path: Path) -> Path:
    """Create ``path`` (and missing parents) so that it survives a crash; return it."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_directory(directory.parent)
    return path


@contextlib.contextmanager
def atomic_file(path: Path, *, sync: bool = True) -> Iterator[BinaryIO]:
    """A file written to a temporary sibling and, when the block ends without error, fsynced and renamed to ``path``.

    ``sync=False`` skips the fsyncs: for files that are derived again after a crash, never trusted across one.
    """
    durable_directory(path.parent)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as file:
            yield file
            file.flush()
            if sync:
                os.fsync(file.fileno())
        fenced_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if sync:
        fsync_directory(path.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, sync: bool = True) -> None:
    """Write ``path`` with ``write`` through :func:`atomic_file`."""
    with atomic_file(path, sync=sync) as file:
        write(file)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload``."""

    def write(file: BinaryIO) -> None:
        file.write(payload)

    atomic_write(path, write)


def atomic_copy(source: Path, target: Path) -> None:
    """Atomically replace ``target`` with a copy of ``source`` (copied by the kernel, not through memory)."""

    def copy(file: BinaryIO) -> None:
        with source.open("rb") as origin:
            size = os.fstat(origin.fileno()).st_size
            copied = 0
            while copied < size:
                sent = os.sendfile(file.fileno(), origin.fileno(), copied, size - copied)
                if sent == 0:
                    raise OSError(f"{source} shrank while it was copied")
                copied += sent

    atomic_write(target, copy)


def atomic_link(source: Path, target: Path) -> bool:
    """Atomically replace ``target`` with a hard link to ``source``; False where no link can be made (another
    filesystem, or one without hard links), ``target`` untouched."""
    refuse_if_fenced()  # before the link: its time stamp changes the shared inode, a state file
    temporary = target.with_name(f".{target.name}.link-{uuid.uuid4().hex[:8]}")
    try:
        os.link(source, temporary)
        os.utime(temporary)  # published now, by this process (the link shares the model's inode and times)
    except OSError:
        return False
    try:
        fenced_replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(target.parent)
    return True


def quarantine(path: Path, directory: Path, reason: str) -> Path:
    """Move a corrupt or unusable file aside (never delete evidence); return where it went."""
    durable_directory(directory)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = directory / f"{stamp}-{uuid.uuid4().hex[:6]}-{path.parent.name}-{path.name}"
    fenced_replace(path, target)
    fsync_directory(path.parent)
    fsync_directory(directory)
    log.error("QUARANTINED %s -> %s: %s", path, target, reason)
    return target
