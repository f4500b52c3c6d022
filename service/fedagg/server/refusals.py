"""Logging refused callers without letting a retrying impostor flood the log.

OpenFL 1.8/1.9 collaborators retry every refused call every few seconds, forever (UNAUTHENTICATED included). Each
refusal is still counted (``fedagg_auth_failures_total``), but it is logged at most once per interval for the same
caller and reason, with the number of refusals left unlogged since. At most ``capacity`` callers are remembered,
so an impostor that changes its name every call cannot grow the table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("fedagg.server.auth")

LOG_INTERVAL_SECONDS = 60.0
CAPACITY = 1024


class RefusalLog:
    """Rate-limited warnings about refused callers. Thread-safe.

    ``_lock`` guards ``_seen`` only and is never held while logging (lock order: leaf).
    """

    def __init__(
        self,
        interval: float = LOG_INTERVAL_SECONDS,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # last report, suppressed

    def refused(self, caller: str, reason: str, message: str) -> bool:
        """Note a refusal; log it unless the same caller was refused for the same reason recently. True if logged."""
        key = (caller[:128], reason)
        now = self._clock()
        with self._lock:
            last, suppressed = self._seen.pop(key, (-self._interval, 0))
            due = now - last >= self._interval
            self._seen[key] = (now, 0) if due else (last, suppressed + 1)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        if due:
            more = f" ({suppressed} more refusals since the last report)" if suppressed else ""
            log.warning("refused caller %s: %s%s", key[0], message, more)
        return due
