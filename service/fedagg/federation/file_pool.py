"""Files of dropped rounds, kept to be written over instead of deleted: a dropped round's uploads (by the next
uploads) and a pruned round's model (by the next round's model).

Writing a new file costs the kernel a fresh page-cache page (and disk blocks) for every 4 KiB; writing over a file
whose pages are still cached is a copy. On this benchmark's virtual machine, where freed memory goes back to the
host, 200 MB written to a new file took 0.18-0.20 CPU-s and over a cached one 0.024 (8x), and writes to new files
(the spool's and the model's) were about a quarter of the server's CPU per round; a new model file is written at
every round end, while every collaborator waits.

So when a round's spool is dropped its results files move to ``spool/recycled``, and the next round's large
uploads take them, the largest first (:meth:`FilePool.take`): each is written from the start of one and cut to its
own length when sealed (:class:`~fedagg.federation.spool.SpoolWriter`). Uploads smaller than
:data:`POOLED_FROM_BYTES` (OpenFL's validation tasks send only metrics) neither take a pooled file nor enter the
pool: taking one would cut it down to a few bytes and leave the next model-sized upload a new file (which is what
happened while the pool handed its files out in any order: in an OpenFL round of three tasks, most model-sized
uploads still went to new files). Likewise a pruned model moves to ``models/recycled`` and the next round's model
is written over it (:func:`~fedagg.federation.files.atomic_file`).

A pooled model may still be mapped by this process: a tensor reply waiting for the reply budget holds a view of
the model it was asked for, and reads it only when it is built. Such a file is not written over (``skip_in_use``:
the files this process maps or holds open are read from ``/proc/self/maps`` and ``/proc/self/fd`` when one is
taken); it stays pooled and goes at the next refill. Spool files need no such check: their readers open them by
name, and a dropped round's files have none.

What this costs: the disk space of one round's uploads and one model stays allocated between rounds (the spool of
the round before is kept one round for recovery anyway, and the next model is written before the oldest is pruned,
so the peaks are unchanged), and files the next round did not need are deleted when the next ones are pooled. A
pool is scratch: nothing in it is read, and a restart keeps whatever files it finds for the next writes.

``_lock`` guards ``_free`` (sizes and paths, smallest first): taken by writers opening a file (I/O executor
threads, the round end) and by the round end's clean-up refilling the pool; it is never held across more than a
list operation.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from fedagg.federation.files import durable_directory

log = logging.getLogger(__name__)

FREE_SUFFIX = ".free"
POOLED_FROM_BYTES = 1 << 20
"""Files at least this large are pooled, and only writes this large take one."""
PROC_MAPS = Path("/proc/self/maps")
PROC_FDS = Path("/proc/self/fd")


class FilePool:
    """A pool directory (``spool/recycled``, ``models/recycled``) and the files in it (module docstring)."""

    def __init__(self, directory: Path, *, skip_in_use: bool = False) -> None:
        self.directory = directory
        self._skip_in_use = skip_in_use
        self._lock = threading.Lock()
        self._free: list[tuple[int, Path]] = []

    def prepare(self) -> None:
        """Create the directory and take stock of the files left in it."""
        durable_directory(self.directory)
        found = self._sized(self.directory.glob(f"*{FREE_SUFFIX}"))
        with self._lock:
            self._free = found

    def take(self, target: Path) -> bool:
        """Move the largest pooled file to ``target`` (True), or leave ``target`` alone when the pool has none to
        give (False)."""
        with self._lock:
            candidates = list(reversed(self._free))
        in_use: frozenset[tuple[int, int]] = frozenset()
        if self._skip_in_use and candidates:
            try:
                in_use = _in_use()
            except OSError as error:  # no /proc: any pooled file may be in use, so a new file it is
                log.debug("%s: nothing reused (%s)", self.directory, error)
                return False
        for entry in candidates:
            _, path = entry
            if in_use and _identity(path) in in_use:
                continue  # mapped or open here: it stays pooled
            with self._lock:
                if entry not in self._free:
                    continue  # taken meanwhile
                self._free.remove(entry)
            try:
                os.replace(path, target)
            except OSError as error:  # gone or unreadable: the next one, or a new file
                log.debug("%s: not reused (%s)", path.name, error)
                continue
            return True
        return False

    def refill(self, files: Iterable[Path]) -> None:
        """Make ``files`` (a dropped round's results, a pruned model) the pool, deleting what the pool held and
        nobody took."""
        with self._lock:
            unused, self._free = self._free, []
        for _, path in unused:
            path.unlink(missing_ok=True)
        kept = []
        for size, path in self._sized(files):
            if size < POOLED_FROM_BYTES:
                path.unlink(missing_ok=True)
                continue
            target = self.directory / f"{uuid.uuid4().hex}{FREE_SUFFIX}"
            os.replace(path, target)
            os.utime(target)  # pooled now, by this process: not the upload another one may have written
            kept.append((size, target))
        with self._lock:
            self._free = sorted(self._free + kept)

    @staticmethod
    def _sized(files: Iterable[Path]) -> list[tuple[int, Path]]:
        """``files`` with their sizes, smallest first (a file that cannot be read is left out)."""
        sized = []
        for path in files:
            try:
                sized.append((path.stat().st_size, path))
            except OSError as error:
                log.debug("%s: not pooled (%s)", path.name, error)
        return sorted(sized)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _in_use() -> frozenset[tuple[int, int]]:
    """(device, inode) of every file this process maps (``/proc/self/maps``) or holds open (``/proc/self/fd``)."""
    found: set[tuple[int, int]] = set()
    with PROC_MAPS.open() as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) >= 5 and fields[4] != "0":
                major, minor = fields[3].split(":")
                found.add((os.makedev(int(major, 16), int(minor, 16)), int(fields[4])))
    for descriptor in os.listdir(PROC_FDS):
        try:
            status = os.stat(PROC_FDS / descriptor)
        except OSError:
            continue  # closed meanwhile
        found.add((status.st_dev, status.st_ino))
    return frozenset(found)
