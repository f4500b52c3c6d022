"""A byte budget for tensor replies: what downloads may make the server hold at once.

A tensor reply is a copy of its tensor (and gRPC copies it once more) from the moment it is built until the client
has read it. With many collaborators downloading a large model at once, those copies, not the model, set the
server's memory. :class:`ReplyBudget` admits a reply to be built only while the bytes of replies built and not yet
delivered stay within the budget; the others wait their turn, first come first served. A reply larger than the
whole budget is admitted when it is the only one in flight, so no download waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

BudgetListener = Callable[[int, int], None]
"""Told ``(bytes in flight, replies waiting)`` after every change."""


class ReplyBudget:
    """Bytes of replies in flight, at most ``limit`` (0: unbounded). Event-loop only: no lock, no threads."""

    def __init__(self, limit: int, listener: BudgetListener | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        """Bytes of replies admitted and not yet released."""
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._listener = listener

    @property
    def waiting(self) -> int:
        """Replies waiting for their turn."""
        return len(self._waiting)

    def _report(self) -> None:
        if self._listener is not None:
            self._listener(self.in_flight, self.waiting)

    def _fits(self, size: int) -> bool:
        return self.limit == 0 or self.in_flight == 0 or self.in_flight + size <= self.limit

    async def acquire(self, size: int) -> None:
        """Wait until a reply of ``size`` bytes may be built; the caller then owes one :meth:`release`."""
        if not self._waiting and self._fits(size):
            self.in_flight += size
            self._report()
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._waiting.append(entry)
        self._report()
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():  # admitted, then cancelled before it could run
                self.release(size)
            else:
                with contextlib.suppress(ValueError):  # _admit may have dropped it already
                    self._waiting.remove(entry)
                self._admit()
            raise

    def release(self, size: int) -> None:
        """A reply of ``size`` bytes was delivered (or abandoned): admit whoever now fits."""
        self.in_flight -= size
        self._admit()

    def _admit(self) -> None:
        """Admit the waiting replies that now fit, in order, then report."""
        while self._waiting:
            size, turn = self._waiting[0]
            if turn.cancelled():  # its caller is gone; it cleans up after itself
                self._waiting.popleft()
                continue
            if not self._fits(size):
                break
            self._waiting.popleft()
            self.in_flight += size
            turn.set_result(None)
        self._report()
