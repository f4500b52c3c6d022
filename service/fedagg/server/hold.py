"""Long-poll GetTasks: a collaborator with nothing to do is held until it has work, instead of told to sleep.

OpenFL answers an idle collaborator "sleep 10 s", so every round waits up to that long for collaborators that were
done early. Its clients (1.7.1 to 1.9) set no deadline on GetTasks, so fedagg holds such a call until the
federation makes progress (a round starts, a task is handed out again, training ends), or at most
``server.tasks_hold_seconds``, and only then answers. A held call is a suspended coroutine, not a thread; a drain
wakes every held call and answers it as before ("sleep"), it never cuts one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class TaskWaiters:
    """The federation's progress as held GetTasks calls see it. Used on the server's event loop only."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def token(self) -> asyncio.Event:
        """Take before looking at the federation; :meth:`wait` then cannot miss progress made after the look."""
        return self._changed

    async def wait(self, token: asyncio.Event, timeout: float) -> None:
        """Return once progress was made since ``token`` was taken, or after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(token.wait(), timeout)
        except TimeoutError:
            return

    def progress(self) -> None:
        """Wake every held call (they look at the federation again)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def progress_from_thread(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """A callback, safe from any thread, that wakes held calls on ``loop``."""

        def notify() -> None:
            loop.call_soon_threadsafe(self.progress)

        return notify
