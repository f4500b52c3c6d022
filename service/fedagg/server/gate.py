"""The call gate: which federation calls are admitted, which are in flight, and how a drain ends them.

All of it lives on the server's event loop (no locks): admission and counting happen in coroutines of that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fedagg.server.errors import Unavailable

T = TypeVar("T")

NOT_SERVING = "the aggregator is not serving right now (starting or draining); retry shortly"


class CallGate:
    """Admits calls while accepting, counts those in flight, and cuts long ones when a drain runs out of time."""

    def __init__(self) -> None:
        self.accepting = False
        self.refusal = NOT_SERVING
        """What a refused call is told (UNAVAILABLE)."""
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Admit a call (or refuse it with UNAVAILABLE) and count it as in flight."""
        self.check_accepting()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def check_accepting(self) -> None:
        """Raise UNAVAILABLE unless calls are admitted now."""
        if not self.accepting:
            raise Unavailable(self.refusal)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0))
        except TimeoutError:
            return False
        return True

    def cut(self) -> None:
        """From now on, calls waiting in :meth:`until_cut` end with UNAVAILABLE."""
        self._cut.set()

    async def until_cut(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Await ``awaitable`` unless the gate cuts calls first (then raise UNAVAILABLE), or ``timeout`` passes
        (then raise TimeoutError)."""
        work = asyncio.ensure_future(awaitable)
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            done, _ = await asyncio.wait({work, cut}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()  # the call was cancelled: nothing may be left pending behind it
            raise
        finally:
            cut.cancel()
        if work in done:
            return work.result()
        work.cancel()
        if not done:
            raise TimeoutError
        raise Unavailable("the aggregator is shutting down; send again once it is back")
