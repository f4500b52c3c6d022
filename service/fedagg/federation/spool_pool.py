"""Spool files of dropped rounds, kept to be written over by the next uploads instead of deleted.

Writing a new file costs the kernel a fresh page-cache page (and disk blocks) for every 4 KiB; writing over a file
whose pages are still cached is a copy. On this benchmark's virtual machine, where freed memory goes back to the
host, 200 MB written to a new file took 0.18-0.20 CPU-s and over a cached one 0.024 (8x), and writes to new files
(the spool's and the model's) were about a quarter of the server's CPU per round. So when a round's spool is dropped its results files move here, and
the next round's uploads take them (:meth:`FilePool.take`): each upload is written from the start of one and cut
to its own length when sealed (:class:`~fedagg.federation.spool.SpoolWriter`).

What this costs: the disk space of one round's uploads stays allocated between rounds (the spool of the round
before is kept one round for recovery anyway, so the peak is unchanged), and files the next round did not need
are deleted when the round after it is dropped. The pool is scratch: nothing in it is read, and a restart keeps
whatever files it finds here for the next uploads.

``_lock`` guards ``_free``: taken by upload writers opening a file (I/O executor threads) and by the round end's
clean-up refilling the pool; it is never held across more than a list operation.
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


class FilePool:
    """The pool directory (``spool/recycled``) and the files in it (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._free: list[Path] = []

    def prepare(self) -> None:
        """Create the directory and take stock of the files left in it."""
        durable_directory(self.directory)
        with self._lock:
            self._free = sorted(self.directory.glob(f"*{FREE_SUFFIX}"))

    def take(self, target: Path) -> bool:
        """Move a pooled file to ``target`` (True), or leave ``target`` alone when the pool is empty (False)."""
        while True:
            with self._lock:
                if not self._free:
                    return False
                path = self._free.pop()
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
        for path in unused:
            path.unlink(missing_ok=True)
        kept = []
        for path in files:
            target = self.directory / f"{uuid.uuid4().hex}{FREE_SUFFIX}"
            os.replace(path, target)
            os.utime(target)  # pooled now, by this process: not the upload another one may have written
            kept.append(target)
        with self._lock:
            self._free.extend(kept)
