"""The root's round as the ingest replicas see it: the latest (round, phase), and a wake-up for every change.

The root's federation publishes its round from whichever thread changes it (the commit executor: a round closing,
a new round, the experiment finished); each replica's ``WatchRounds`` stream reads it on the event loop. Watchers
see the latest notice, not every one: a replica needs only where the root is now (a round cannot be OPEN again
after COLLECTING, and the next round opens only once the partials of the last one are collected; a COLLECTING
notice with more stragglers replaces the last).

Thread-safe: ``_lock`` guards ``_latest`` and ``_wakers``; it is never held across a call into the event loop
other than ``call_soon_threadsafe``, which does not block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fedagg.protocol import tier_pb2


@dataclass(frozen=True)
class RoundNotice:
    """Where the root is: a round and its phase (:class:`fedagg.protocol.tier_pb2.RoundPhase`)."""

    round_number: int
    phase: tier_pb2.RoundPhase.ValueType
    stragglers: tuple[str, ...] = ()
    """COLLECTING: the collaborators whose contributions the replicas' partials leave out."""
    clipping_norms: tuple[tuple[str, float], ...] = ()
    """(task, norm): the tasks whose contributions the replicas clip before folding them, to the round's norm."""

    def message(self) -> tier_pb2.RoundNotice:
        return tier_pb2.RoundNotice(
            round=self.round_number,
            phase=self.phase,
            stragglers=self.stragglers,
            clipping_norms=dict(self.clipping_norms),
        )


class RoundNotices:
    """The latest notice, published from any thread, watched on event loops (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: RoundNotice | None = None
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def latest(self) -> RoundNotice | None:
        with self._lock:
            return self._latest

    def publish(
        self,
        round_number: int,
        phase: tier_pb2.RoundPhase.ValueType,
        stragglers: tuple[str, ...] = (),
        clipping_norms: tuple[tuple[str, float], ...] = (),
    ) -> None:
        """Make ``(round_number, phase, stragglers, clipping_norms)`` the latest notice and wake every watcher (from
        any thread)."""
        notice = RoundNotice(round_number, phase, stragglers, clipping_norms)
        with self._lock:
            if notice == self._latest:
                return
            self._latest = notice
            wakers = list(self._wakers)
        for loop, event in wakers:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def watch(self) -> AsyncIterator[RoundNotice]:
        """The latest notice (once there is one), then each newer one, until the caller stops iterating."""
        waker = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._wakers.add(waker)
        sent: RoundNotice | None = None
        try:
            while True:
                waker[1].clear()
                latest = self.latest
                if latest is not None and latest != sent:
                    sent = latest
                    yield latest
                    continue
                await waker[1].wait()
        finally:
            with self._lock:
                self._wakers.discard(waker)
