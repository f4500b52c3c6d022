"""The round clock: a background task that lets the federation act on time (straggler cutoffs, retries).

Every second (sooner when a straggler cutoff falls due) it runs :meth:`Federation.tick` in the commit executor:
close a round whose cutoff passed, retry a round end that failed, probe a disk that was failing. An exception
is logged and counted, and the clock keeps running: a background task that dies silently would wedge the
federation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from fedagg.federation.federation import Federation

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class RoundClock:
    """Drives :meth:`Federation.tick`; ``on_error`` counts failures (a metric)."""

    def __init__(self, federation: Federation, executor: Executor, on_error: Callable[[str], None]) -> None:
        self._federation = federation
        self._executor = executor
        self._on_error = on_error

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = self._federation.seconds_to_deadline()
            await asyncio.sleep(TICK_SECONDS if remaining is None else max(0.0, min(TICK_SECONDS, remaining)))
            try:
                await loop.run_in_executor(self._executor, self._federation.tick)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the round clock's tick failed; it keeps running")
                self._on_error("round_clock")
