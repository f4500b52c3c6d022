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
from dataclasses import replace

from fedagg.federation.federation import Federation, TaskReply
from fedagg.server.gate import CallGate
from fedagg.server.observer import ServerObserver

HELD_SLEEP_SECONDS = 1
"""The sleep a call held for the whole hold time is answered with: it asks again soon, and is held again."""


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


class LongPoll:
    """Answers GetTasks, holding an idle collaborator's call until it has work (module docstring)."""

    def __init__(
        self,
        federation: Federation,
        gate: CallGate,
        hold_seconds: float,
        observer: ServerObserver,
    ) -> None:
        self.waiters = TaskWaiters()
        self._federation = federation
        self._gate = gate
        self._hold_seconds = hold_seconds
        self._observer = observer

    async def tasks(self, collaborator: str) -> TaskReply:
        """The collaborator's tasks, or a sleep once the hold time passed, or quit."""
        token = self.waiters.token()
        reply = self._federation.get_tasks(collaborator)
        if reply.sleep_seconds and self._hold_seconds > 0:
            reply = await self._hold(collaborator, reply, token)
        return reply

    async def _hold(self, collaborator: str, reply: TaskReply, token: asyncio.Event) -> TaskReply:
        """Hold an idle collaborator's GetTasks until it has work, the hold time passes, or a drain begins."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._hold_seconds
        self._observer.tasks_held(1)
        try:
            while reply.sleep_seconds and self._gate.accepting:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return replace(reply, sleep_seconds=HELD_SLEEP_SECONDS)  # ask again soon: held again
                await self.waiters.wait(token, remaining)
                token = self.waiters.token()
                reply = self._federation.get_tasks(collaborator)
            return reply
        finally:
            self._observer.tasks_held(-1)
            self._observer.tasks_hold_ended(loop.time() - started)
