"""When the server may stop: every collaborator has its quit job, and none may still be waiting for it.

A quit job is recorded durably before its reply leaves (:meth:`Federation.record_quit`), so a crash between the
record and the reply leaves a collaborator whose quit is on disk but that never received it: it keeps asking. A
restarted aggregator that found every quit recorded would stop at once and leave that collaborator retrying
forever. So quits recorded by an earlier process count as delivered only once their collaborator asks again (and is
answered quit again), or once ``redelivery_seconds`` have passed since the start (a collaborator that did get its
quit has exited and will not ask).

Used on the event loop only (no lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

log = logging.getLogger(__name__)


class QuitDelivery:
    """Decides when every quit job has reached its collaborator (module docstring)."""

    def __init__(self, redelivery_seconds: float) -> None:
        self._redelivery_seconds = redelivery_seconds
        self._unconfirmed: set[str] = set()
        self._all_sent = False
        self._done = asyncio.Event()
        self._window: asyncio.Task[None] | None = None

    def start(self, recorded_before: Collection[str], all_sent: bool) -> None:
        """At start: the quits an earlier process recorded, and whether every collaborator has one."""
        self._unconfirmed = set(recorded_before) if self._redelivery_seconds > 0 else set()
        self._all_sent = all_sent
        if self._unconfirmed:
            log.info(
                "quit jobs of %s were recorded before this start; they are answered quit again when they ask, "
                "for %.0f s (server.quit_redelivery_seconds)",
                ", ".join(sorted(self._unconfirmed)),
                self._redelivery_seconds,
            )
            self._window = asyncio.create_task(self._close_window())
        self._check()

    def answered(self, collaborator: str, all_sent: bool) -> None:
        """``collaborator`` was just answered its quit job; ``all_sent``: every collaborator's is recorded."""
        self._unconfirmed.discard(collaborator)
        self._all_sent = all_sent
        self._check()

    async def wait(self) -> None:
        """Return once every collaborator has received its quit job."""
        await self._done.wait()

    async def stop(self) -> None:
        """Cancel the redelivery window (the server is stopping)."""
        if self._window is not None:
            self._window.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._window

    async def _close_window(self) -> None:
        await asyncio.sleep(self._redelivery_seconds)
        if self._unconfirmed:
            log.info(
                "%s did not ask again within %.0f s: their quit jobs count as delivered",
                ", ".join(sorted(self._unconfirmed)),
                self._redelivery_seconds,
            )
        self._unconfirmed.clear()
        self._check()

    def _check(self) -> None:
        if self._all_sent and not self._unconfirmed:
            self._done.set()
