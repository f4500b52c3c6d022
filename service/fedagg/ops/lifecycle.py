"""Graceful drain: how the aggregator leaves when Kubernetes asks it to (SIGTERM, SIGINT).

1. Readiness goes NOT_SERVING at once, so the Service stops routing new connections here.
2. For ``drain_seconds`` calls are still served while endpoint removal propagates.
3. New calls are refused with UNAVAILABLE (OpenFL collaborators sleep and retry exactly that).
4. Calls in flight get until the grace budget nearly runs out; uploads still arriving then are cut with
   UNAVAILABLE. An upload is only ever applied whole, after it arrived completely, so a cut never half-applies.
5. The server stops; commits under way finish (they are durable), and the process exits within the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

STOP_MARGIN_SECONDS = 1.0


class Drainable(Protocol):
    """The federation server as the drain sees it."""

    def stop_accepting(self) -> None: ...

    async def wait_idle(self, timeout: float) -> bool: ...

    def cut(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


class Readiness(Protocol):
    """Where readiness is reported."""

    async def set_ready(self, ready: bool) -> None: ...


async def drain(
    server: Drainable,
    readiness: Readiness,
    *,
    drain_seconds: float,
    grace_seconds: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Drain ``server`` within ``grace_seconds`` (see the module docstring)."""
    started = clock()
    deadline = started + grace_seconds - min(STOP_MARGIN_SECONDS, grace_seconds / 4)
    await readiness.set_ready(False)
    log.info("draining: readiness NOT_SERVING; refusing new calls in %.1fs", drain_seconds)
    await sleep(min(drain_seconds, max(deadline - clock(), 0)))
    server.stop_accepting()
    if not await server.wait_idle(deadline - clock()):
        log.warning("grace period ending: cutting calls still in flight with UNAVAILABLE")
    server.cut()
    await server.stop(grace=max(0.0, min(STOP_MARGIN_SECONDS, started + grace_seconds - clock())))
    log.info("drained in %.1fs", clock() - started)
