"""A byte budget for replies, with a share per caller: what downloads may make the server hold at once.

A tensor reply is a copy of its tensor (and gRPC copies it once more) from the moment it is built until the client
has read it. With many collaborators downloading a large model at once, those copies, not the model, set the
server's memory. :class:`ReplyBudget` admits a reply to be built only while the bytes of replies built and not yet
delivered stay within the budget, and while its caller holds fewer than ``per_caller`` replies; the others wait
their turn, first come first served among callers under their share (a caller at its share never holds up the
others). A reply larger than the whole budget is admitted when it is the only one in flight, so no download waits
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

BudgetListener = Callable[[int, int], None]
"""Told ``(bytes in flight, replies waiting)`` after every change."""


@dataclass(frozen=True, eq=False)
class _Turn:
    caller: str
    size: int
    admitted: asyncio.Future[None]


class ReplyBudget:
    """Bytes of replies in flight, at most ``limit`` (0: unbounded), and at most ``per_caller`` replies per caller.

    Event-loop only: no lock, no threads. Every successful :meth:`acquire` owes exactly one :meth:`release`.
    """

    def __init__(
        self,
        limit: int,
        listener: BudgetListener | None = None,
        *,
        per_caller: int = 0,
        on_share_reached: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.per_caller = per_caller
        """Replies one caller may hold at once (0: unbounded)."""
        self.in_flight = 0
        """Bytes of replies admitted and not yet released."""
        self._held: Counter[str] = Counter()
        self._waiting: deque[_Turn] = deque()
        self._listener = listener
        self._on_share_reached = on_share_reached
        """Told when a caller asks for a reply while it holds its whole share (it waits for its own)."""

    @property
    def waiting(self) -> int:
        """Replies waiting for their turn."""
        return len(self._waiting)

    def held_by(self, caller: str) -> int:
        """Replies ``caller`` holds now."""
        return self._held[caller]

    def _report(self) -> None:
        if self._listener is not None:
            self._listener(self.in_flight, self.waiting)

    def _fits(self, size: int) -> bool:
        return self.limit == 0 or self.in_flight == 0 or self.in_flight + size <= self.limit

    def _under_share(self, caller: str) -> bool:
        return self.per_caller == 0 or self._held[caller] < self.per_caller

    def _take(self, caller: str, size: int) -> None:
        self.in_flight += size
        self._held[caller] += 1

    async def acquire(self, size: int, caller: str = "") -> None:
        """Wait until a reply of ``size`` bytes for ``caller`` may be built; the caller then owes one release."""
        if not self._waiting and self._fits(size) and self._under_share(caller):
            self._take(caller, size)
            self._report()
            return
        if not self._under_share(caller) and self._on_share_reached is not None:
            self._on_share_reached()
        turn = _Turn(caller, size, asyncio.get_running_loop().create_future())
        self._waiting.append(turn)
        self._report()
        try:
            await turn.admitted
        except asyncio.CancelledError:
            if not turn.admitted.cancelled():  # admitted, then cancelled before it could run
                self.release(size, caller)
            else:
                with contextlib.suppress(ValueError):  # _admit may have dropped it already
                    self._waiting.remove(turn)
                self._admit()
            raise

    def release(self, size: int, caller: str = "") -> None:
        """A reply of ``size`` bytes was delivered (or abandoned): admit whoever now fits."""
        self.in_flight -= size
        self._held[caller] -= 1
        if self._held[caller] <= 0:
            del self._held[caller]
        self._admit()

    def _admit(self) -> None:
        """Admit the waiting replies that now fit, in order (skipping callers at their share), then report."""
        for turn in list(self._waiting):
            if turn.admitted.cancelled():  # its caller is gone; it cleans up after itself
                self._waiting.remove(turn)
                continue
            if not self._under_share(turn.caller):
                continue
            if not self._fits(turn.size):
                break
            self._waiting.remove(turn)
            self._take(turn.caller, turn.size)
            turn.admitted.set_result(None)
        self._report()
