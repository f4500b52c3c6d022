"""Leadership of one process (``ha.enabled``): the election wired to the fence, the metrics, the event loop.

A replica serves only while it holds both the state-directory lock (taken first, in the kernel: a standby waits
there without polling) and the lease (taken second, by :class:`~fedagg.ops.election.LeaderElector`). Taking the
lock first means only one replica per working lock campaigns, so two replicas can never hold one each; on storage
whose lock does not work across nodes, every replica campaigns and the lease alone elects.

Losing the lease fences at once, on the election thread: the write fence closes (no state file is committed any
more), then the event loop is told: readiness NOT_SERVING, federation calls UNAVAILABLE, and the process exits with
status 75 so that it restarts, restores and waits as a standby. Exiting (rather than stepping down in place) reuses
the restart path: nothing in memory from the lost term survives. A clean exit releases the lease after the last
write, so a standby takes over without waiting for the lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from fedagg.federation.write_fence import close_fence
from fedagg.ops.election import ElectionTiming, LeaderElector
from fedagg.ops.leader_metrics import LeaderMetrics
from fedagg.ops.lease import LeaseRecord, LeaseRecords

log = logging.getLogger(__name__)

LEADERSHIP_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: restart, come back as a standby
FENCE_WAIT_SECONDS = 5.0
EVENT_TIMEOUT_SECONDS = 5.0


class Leadership:
    """This process's leadership: wait for it, notice its loss, give it back (module docstring)."""

    def __init__(
        self, records: LeaseRecords, identity: str, timing: ElectionTiming, metrics: LeaderMetrics
    ) -> None:
        self.identity = identity
        self.metrics = metrics
        self.announce: Callable[[LeaseRecord], None] = lambda _record: None
        """Called on a thread of its own after each takeover (the Kubernetes Event)."""
        self.lost_because = ""
        self._lost = asyncio.Event()
        self._elected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._elector = LeaderElector(
            records,
            identity,
            timing,
            on_elected=self._on_elected,
            on_lost=self._on_lost,
            on_observed=metrics.observed,
        )

    @property
    def description(self) -> str:
        """Where the lease is."""
        return self._elector.records.description

    async def wait_elected(self, stop: asyncio.Event) -> bool:
        """Campaign until elected (True) or stopped (False)."""
        self._loop = asyncio.get_running_loop()
        log.info("waiting to lead: %s on %s", self.identity, self.description)
        self._elector.start()
        waits = [asyncio.ensure_future(event.wait()) for event in (self._elected, stop)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return self.leading

    async def wait_lost(self) -> None:
        """Return once leadership is lost (the fence is closed by then)."""
        await self._lost.wait()

    @property
    def leading(self) -> bool:
        """Whether this process was elected and has not lost the lease since."""
        return self._elected.is_set() and not self._lost.is_set()

    def read_lease(self, timeout: float) -> LeaseRecord | None:
        """The lease as stored now (blocking; raises LeaseStoreError), for ``fedagg status --ops``."""
        stored = self._elector.records.read(timeout)
        return stored[0] if stored is not None else None

    @property
    def lost(self) -> bool:
        """Whether this process lost its lease (it must not serve or write any more)."""
        return self._lost.is_set()

    async def stop(self) -> None:
        """End the election; release the lease unless it was lost (call after the last state write)."""
        close_fence("shutting down", FENCE_WAIT_SECONDS)
        elector = self._elector
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: elector.stop(release=not self.lost, timeout=2 * elector.timing.retry_seconds)
        )
        self.metrics.leading(False)

    def _on_elected(self, record: LeaseRecord) -> None:  # election thread
        self.metrics.leading(True)
        threading.Thread(
            target=self.announce, args=(record,), name="fedagg-takeover-event", daemon=True
        ).start()
        self._notify(self._elected)

    def _on_lost(self, reason: str) -> None:  # election thread: fence first, then tell the loop
        self.lost_because = reason
        if close_fence(reason, FENCE_WAIT_SECONDS):
            log.error("state writes fenced: no state file is committed by this process any more")
        else:
            log.error(
                "state writes fenced, but a rename is stuck in the kernel (an unreachable file system?)"
            )
        self.metrics.leading(False)
        self._notify(self._lost)
        self._notify(self._elected)  # a campaign that never finished must end too

    def _notify(self, event: asyncio.Event) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting anyway
                self._loop.call_soon_threadsafe(event.set)
