"""Readiness: what the lifecycle wants (started, not draining, not finished) and whether progress is possible.

The lifecycle says when the aggregator should take traffic; the federation says whether it can make progress (its
state directory accepts writes and its round ends commit). Readiness is SERVING only when both agree, so a full
disk takes the pod out of its Service until the disk recovers, and a recovery puts it back unless a drain or the
end of the experiment took it out meanwhile. Used on the server's event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class ReadinessReporter(Protocol):
    """Where readiness is published (the gRPC health service)."""

    async def set_ready(self, ready: bool) -> None: ...


class Readiness:
    """Combines the lifecycle's wish with the federation's health."""

    def __init__(self, reporter: ReadinessReporter, healthy: Callable[[], bool]) -> None:
        self._reporter = reporter
        self._healthy = healthy
        self._wanted = False

    async def set_ready(self, ready: bool) -> None:
        """The lifecycle's wish (start: True; drain or the end of the experiment: False)."""
        self._wanted = ready
        await self.refresh()

    async def refresh(self) -> None:
        """Publish the combined state (call when the federation's health changes)."""
        await self._reporter.set_ready(self._wanted and self._healthy())

    def refresh_from_thread(self, loop: asyncio.AbstractEventLoop) -> Callable[[bool], None]:
        """A health callback, safe to call from any thread, that refreshes readiness on ``loop``."""

        def changed(_healthy: bool) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self.refresh()))

        return changed
