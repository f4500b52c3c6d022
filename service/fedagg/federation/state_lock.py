"""One aggregator per state directory: an exclusive ``flock`` on ``<state_dir>/lock``, held for the process's life.

Two processes writing the same state directory would interleave checkpoints and spool files (a replaced Job's old
pod still draining while the new one starts, two Helm releases on one volume, an operator running ``fedagg serve``
by hand). The kernel drops the lock when its holder exits, however it exits, so a SIGKILL never leaves a stale
lock behind. The lock file names its holder (pid, host, start time) for the message of whoever waits.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "lock"


class StateDirectoryLock:
    """The exclusive lock on a state directory (module docstring). Not thread-safe: used by start-up only (one
    waiting thread at a time, whose owner releases after it has given up waiting)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._descriptor is not None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it (never blocks); then record this process as its holder."""
        return self._acquire(fcntl.LOCK_EX | fcntl.LOCK_NB)

    def acquire(self) -> None:
        """Take the lock, waiting (in the kernel, without polling) until its holder lets go or exits."""
        self._acquire(fcntl.LOCK_EX)

    def _acquire(self, operation: int) -> bool:
        if self._descriptor is not None:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, operation)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except BaseException:
            os.close(descriptor)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        self._descriptor = descriptor
        return True

    def holder(self) -> str:
        """Who holds the lock, as recorded in the lock file ("unknown" when it cannot be read)."""
        try:
            recorded = json.loads(self.path.read_text())
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(recorded["since"])))
            return f"pid {int(recorded['pid'])} on {recorded['host']} since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown"

    def release(self) -> None:
        """Give the lock up (the kernel also does when the process exits)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
