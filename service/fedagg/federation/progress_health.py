"""Whether the federation can make progress (not the gRPC health service, :mod:`fedagg.server.health`): its state
directory accepts writes and its round ends commit."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from fedagg.federation.errors import StorageUnavailable
from fedagg.federation.events import FederationListener

log = logging.getLogger(__name__)

HealthCallback = Callable[[bool], None]


def describe_os_error(error: OSError) -> str:
    """A short, path-free description of a disk error, e.g. ``ENOSPC (No space left on device)``."""
    code = errno.errorcode.get(error.errno or 0, "error")
    return f"{code} ({error.strerror or error})"


class FederationHealth:
    """Tracks storage failures and failed round ends; tells subscribers when progress stops or resumes.

    Storage fails per operation (``spool``, ``round_end``, ``quit``...): a success of one operation clears only its
    own failure, so a spool that refuses writes keeps the federation unhealthy while checkpoints still succeed; the
    disk probe (which writes in every directory of the state) clears them all.

    ``_lock`` guards ``_storage_failing_since``, ``_failing_operations``, ``_round_end_failing`` and
    ``_subscribers``; subscribers and the listener are called with it released. Never held across I/O.
    """

    def __init__(self, listener: FederationListener, clock: Callable[[], float] = time.monotonic) -> None:
        self._listener = listener
        self._clock = clock
        self._lock = threading.Lock()
        self._storage_failing_since: float | None = None
        self._failing_operations: set[str] = set()
        self._round_end_failing = False
        self._subscribers: list[HealthCallback] = []

    def subscribe(self, callback: HealthCallback) -> None:
        """Call ``callback(healthy)`` on every change from now on."""
        with self._lock:
            self._subscribers.append(callback)

    @property
    def healthy(self) -> bool:
        """Storage writable and no round end waiting for a retry."""
        with self._lock:
            return self._storage_failing_since is None and not self._round_end_failing

    @property
    def storage_failing(self) -> bool:
        """Whether the last storage operation failed."""
        with self._lock:
            return self._storage_failing_since is not None

    @property
    def round_end_failing(self) -> bool:
        """Whether a round end failed and waits for a retry."""
        with self._lock:
            return self._round_end_failing

    def storage_failing_for(self) -> float:
        """Seconds since storage started failing (0 while it works)."""
        with self._lock:
            since = self._storage_failing_since
        return 0.0 if since is None else self._clock() - since

    def storage_failed(self, operation: str, error: OSError) -> None:
        """A storage operation failed with ``error``."""
        log.error("storage error during %s: %s", operation, describe_os_error(error))
        self._listener.storage_failed(operation)
        with self._lock:
            self._failing_operations.add(operation)
        self._update(storage_failing=True)

    def storage_ok(self, operation: str | None = None) -> None:
        """``operation`` succeeded (None: the disk probe, which wrote everywhere the state is written)."""
        with self._lock:
            if operation is None:
                self._failing_operations.clear()
            else:
                self._failing_operations.discard(operation)
            still_failing = bool(self._failing_operations)
        self._update(storage_failing=still_failing)

    def round_end_failed(self) -> None:
        """A round end was not committed."""
        self._update(round_end_failing=True)

    def round_end_ok(self) -> None:
        """A round end was committed."""
        self._update(round_end_failing=False)

    def _update(self, *, storage_failing: bool | None = None, round_end_failing: bool | None = None) -> None:
        with self._lock:
            before = self._storage_failing_since is None and not self._round_end_failing
            if storage_failing is not None and storage_failing != (self._storage_failing_since is not None):
                self._storage_failing_since = self._clock() if storage_failing else None
            if round_end_failing is not None:
                self._round_end_failing = round_end_failing
            after = self._storage_failing_since is None and not self._round_end_failing
            subscribers = list(self._subscribers)
        if before != after:
            log.log(
                logging.INFO if after else logging.ERROR,
                "federation %s",
                "healthy again" if after else "stuck",
            )
            for callback in subscribers:
                callback(after)


class StorageGuard:
    """Turns a disk error in ``operation`` into :class:`StorageUnavailable` (UNAVAILABLE for the client) and reports
    it to the federation's health; a success clears a storage failure when the operation ``proves_writable``."""

    def __init__(self, health: FederationHealth, operation: str, *, proves_writable: bool = True) -> None:
        self._health = health
        self._operation = operation
        self._proves_writable = proves_writable

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, OSError):
            self._health.storage_failed(self._operation, error)
            raise StorageUnavailable(
                f"the aggregator cannot write its state: {describe_os_error(error)}; retry later"
            ) from None
        if error is None and self._proves_writable:
            self._health.storage_ok(self._operation)
