"""GetMetricStream: the metric history, then live records, with a bounded queue and a cap on streams per caller.

The federation delivers live records from its own threads; each stream keeps at most
``caller_limits.metric_stream_queue`` of them waiting for its client, dropping the oldest beyond that (a slow
reader loses records, it never makes the server hold more), and a caller may keep at most
``caller_limits.metric_streams`` streams open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator

from fedagg.federation.metric_log import MetricLog, MetricRecord
from fedagg.server.errors import ResourceExhausted
from fedagg.server.gate import CallGate
from fedagg.server.observer import Limit, ServerObserver
from fedagg.server.options import CallerLimits


class _LiveQueue:
    """Live records waiting for one stream's client: at most ``size``, the oldest dropped. Event-loop only."""

    def __init__(self, size: int, observer: ServerObserver) -> None:
        self._records: deque[MetricRecord | None] = deque()
        self._size = size
        self._observer = observer
        self._arrived = asyncio.Event()

    def put(self, record: MetricRecord | None) -> None:
        if record is not None and len(self._records) >= self._size:
            self._records.popleft()
            self._observer.limit_breached(Limit.METRIC_STREAM_QUEUE)
        self._records.append(record)
        self._arrived.set()

    async def get(self) -> MetricRecord | None:
        while not self._records:
            self._arrived.clear()
            await self._arrived.wait()
        return self._records.popleft()


class MetricStreams:
    """Open metric streams per caller, and the records they serve. Event-loop only (no lock)."""

    def __init__(self, limits: CallerLimits, gate: CallGate, observer: ServerObserver) -> None:
        self._limits = limits
        self._gate = gate
        self._observer = observer
        self._open: Counter[str] = Counter()

    async def records(self, caller: str, metrics: MetricLog) -> AsyncIterator[MetricRecord]:
        """Every metric so far, then live ones as they arrive; ends when the experiment has finished."""
        if self._open[caller] >= self._limits.metric_streams:
            self._observer.limit_breached(Limit.METRIC_STREAMS)
            raise ResourceExhausted(
                f"{caller!r} already has {self._open[caller]} metric streams open "
                "(server.caller_limits.metric_streams)"
            )
        loop = asyncio.get_running_loop()
        queue = _LiveQueue(self._limits.metric_stream_queue, self._observer)

        def deliver(record: MetricRecord | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the stream is gone
                loop.call_soon_threadsafe(queue.put, record)

        self._open[caller] += 1
        history, closed, unsubscribe = metrics.subscribe(deliver)
        try:
            for record in history:
                yield record
            if closed:
                return
            while (live := await self._gate.until_cut(queue.get())) is not None:
                yield live
        finally:
            unsubscribe()
            self._open[caller] -= 1
