"""A dropped round's uploads, kept to be written over by the next round's uploads instead of deleted.

Writing a new file costs the kernel a fresh page-cache page (and disk blocks) for every 4 KiB; writing over a file
whose pages are still cached is a copy. On this benchmark's virtual machine, where freed memory goes back to the
host, 200 MB written to a new file took 0.18-0.20 CPU-s and over a cached one 0.024 (8x), and writes to new spool
files were about a quarter of the server's CPU per round.

So when a round's spool is dropped its results files move to ``spool/recycled``, and the next round's large
uploads take them, the largest first (:meth:`FilePool.take`): each is written from the start of one and cut to its
own length when sealed (:class:`~fedagg.federation.spool.SpoolWriter`). Uploads smaller than
:data:`POOLED_FROM_BYTES` (OpenFL's validation tasks send only metrics) neither take a pooled file nor enter the
pool: taking one would cut it down to a few bytes and leave the next model-sized upload a new file (which is what
happened while the pool handed its files out in any order: in an OpenFL round of three tasks, most model-sized
uploads still went to new files). Nothing else may be pooled: a pooled file is written over, so no reader may hold
it. Spool files are opened by name by their readers (the fold, the round end, own results), and a dropped round's
files have none. Models are never pooled: a published best.pbuf or last.pbuf is the kept model's inode, and a
reader outside this process may hold it for as long as it likes (:mod:`fedagg.federation.published`).

What this costs: the disk space of one round's uploads stays allocated between rounds (the spool of the round
before is kept one round for recovery anyway, so the peak is unchanged), and files the next round did not need are
deleted when the next ones are pooled. A pool is scratch: nothing in it is read, and a restart keeps whatever files
it finds for the next writes.

``_lock`` guards ``_free`` (sizes and paths, smallest first): taken by writers opening a file (I/O executor
threads) and by the round end's clean-up refilling the pool; it is never held across more than a list operation.
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


class FilePool:
    """A pool directory (``spool/recycled``) and the files in it (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
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
        while True:
            with self._lock:
                if not self._free:
                    return False
                _, path = self._free.pop()
            try:
                os.replace(path, target)
            except OSError as error:  # gone or unreadable: the next one, or a new file
                log.debug("%s: not reused (%s)", path.name, error)
                continue
            return True

    def refill(self, files: Iterable[Path]) -> None:
        """Make ``files`` (a dropped round's results) the pool, deleting what the pool held and nobody took."""
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
