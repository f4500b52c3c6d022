"""The write fence: once closed, no file of the state directory is committed by this process any more.

Every commit of a state file is a rename into place (:func:`fedagg.federation.files.atomic_file`, the spool's
accept, the published models, quarantine), and every one goes through :func:`fenced_replace`; the storage probe,
which writes and deletes a scratch file, asks :func:`refuse_if_fenced` first. A leader that loses
its lease closes the fence (:func:`close_fence`) before anything else: from then on each commit raises
:class:`Fenced` (an OSError, so the federation treats it as storage refusing writes: nothing is acknowledged,
readiness drops) and the process exits, to come back as a standby. The fence is process-wide because a process
serves one state directory; it never reopens.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


class Fenced(OSError):
    """A commit refused because this process may no longer write the state directory."""


_commit_lock = threading.Lock()
"""Guards the commit renames against :func:`close_fence`: held across one ``os.replace`` (never across anything
else), so that when ``close_fence`` returns no rename is under way and none starts. Taken by any thread that
commits; it nests inside no other lock."""
_closed_because = ""


def fenced_replace(source: Path, target: Path) -> None:
    """``os.replace(source, target)`` unless the fence is closed (then raise :class:`Fenced`)."""
    with _commit_lock:
        refuse_if_fenced()
        os.replace(source, target)


def refuse_if_fenced() -> None:
    """Raise :class:`Fenced` once the fence is closed (for writes that are not commits: the storage probe)."""
    if _closed_because:
        raise Fenced(errno.EROFS, f"not the leader any more ({_closed_because}): state writes refused")


def close_fence(reason: str, timeout: float) -> bool:
    """Refuse every later commit; wait up to ``timeout`` seconds for a rename under way (False: one is stuck in the
    kernel, e.g. on an unreachable network filesystem). Safe from any thread, idempotent."""
    global _closed_because  # noqa: PLW0603 - the process-wide switch this module is
    _closed_because = _closed_because or reason  # set first: a commit waiting for the lock sees it
    if not _commit_lock.acquire(timeout=timeout):
        return False
    _commit_lock.release()
    return True
