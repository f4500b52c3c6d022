"""Leader election on a lease (:class:`~fedagg.ops.lease.LeaseRecords`), the way client-go's leaderelection does it.

* A candidate reads the record. It takes it (compare-and-swap on the version read) when there is none, when it
  is vacant (released by a clean exit), or when it has not changed for ``lease_seconds`` as measured on the
  candidate's own monotonic clock since it first saw that version: wall clocks of different machines are never
  compared.
* The leader renews every ``retry_seconds``. It counts a renewal from the moment it *sent* it, so its deadline
  (``renew_deadline_seconds`` after the last successful renewal was sent) always falls before any candidate's
  expiry (``lease_seconds`` after it saw that renewal), because ``renew_deadline_seconds < lease_seconds``.
* A leader that sees another holder, or reaches its deadline without a renewal, has lost: :attr:`on_lost` runs
  at once on the election thread (it fences; see :mod:`fedagg.federation.write_fence`), and the thread ends.
  Every call to the store is bounded by the time left to the deadline, so a hung store cannot delay the fence.

The election runs on its own thread; the event loop only waits for :meth:`LeaderElector.elected`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from fedagg.ops.lease import LeaseConflict, LeaseRecord, LeaseRecords, LeaseStoreError, utc_now

log = logging.getLogger(__name__)

MINIMUM_CALL_SECONDS = 0.05


@dataclass(frozen=True)
class ElectionTiming:
    """The three durations of an election (``ha.*``): renew_deadline < lease and retry < renew_deadline."""

    lease_seconds: int
    renew_deadline_seconds: float
    retry_seconds: float


class LeaderElector:
    """One candidate's side of the election, on a thread of its own (module docstring).

    ``on_elected(record)`` and ``on_lost(reason)`` run on the election thread; ``on_observed(record)`` runs there
    for every change of the record this candidate sees (metrics: holder changes, transitions).
    """

    def __init__(
        self,
        records: LeaseRecords,
        identity: str,
        timing: ElectionTiming,
        *,
        on_elected: Callable[[LeaseRecord], None],
        on_lost: Callable[[str], None],
        on_observed: Callable[[LeaseRecord], None] = lambda _record: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self.identity = identity
        self.timing = timing
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._on_observed = on_observed
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Touched by the election thread only while it runs; read by others after join().
        self._observed: tuple[str, float] | None = None  # (version, when first seen on our clock)
        self._version = ""
        self._renewed_at = 0.0
        self.leading = False
        self.record: LeaseRecord | None = None

    def start(self) -> None:
        """Start campaigning (and, once elected, renewing) on the election thread."""
        self._thread = threading.Thread(target=self._run, name="fedagg-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool, timeout: float) -> None:
        """End the thread; with ``release``, a leader then marks the lease vacant so a standby takes it at once
        (call only after this process's last state write)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if release and self.leading and self.record is not None:
            vacant = replace(self.record, holder="", renewed=utc_now(), lease_seconds=1)
            try:
                self.records.replace(vacant, self._version, timeout)
                log.info("released %s", self.records.description)
            except (LeaseConflict, LeaseStoreError) as error:
                log.warning(
                    "could not release %s (a standby takes it when it expires): %s",
                    self.records.description,
                    error,
                )
            self.leading = False

    def _run(self) -> None:
        while not self._stopping.is_set():
            sent = self._clock()
            if self.leading:
                verdict = self._renew(sent)
                if verdict:
                    self._lose(verdict)
                    return
                wait = min(
                    self.timing.retry_seconds, self._renewed_at + self.timing.renew_deadline_seconds - sent
                )
            else:
                if self._campaign(sent):
                    self.leading = True
                    log.info("elected: %s holds %s", self.identity, self.records.description)
                    self._on_elected(self._record())
                wait = self.timing.retry_seconds
            self._stopping.wait(max(wait - (self._clock() - sent), 0.0))

    def _record(self) -> LeaseRecord:
        assert self.record is not None
        return self.record

    def _campaign(self, now: float) -> bool:
        """One attempt to take the lease; True when this candidate holds it now."""
        timeout = self.timing.retry_seconds
        try:
            found = self.records.read(timeout)
            stamp = utc_now()
            if found is None:
                taken = LeaseRecord(self.identity, self.timing.lease_seconds, stamp, stamp, 0)
                self._written(taken, self.records.create(taken, timeout), now)
                return True
            record, version = found
            self._observe(record, version, now)
            if not self._expired(record, now):
                return False
            taken = LeaseRecord(
                self.identity,
                self.timing.lease_seconds,
                stamp,
                stamp,
                record.transitions + (0 if record.holder == self.identity else 1),
            )
            self._written(taken, self.records.replace(taken, version, timeout), now)
            return True
        except LeaseConflict:
            return False  # another candidate was faster: read again next time
        except LeaseStoreError as error:
            log.warning("election: %s", error)
            return False

    def _renew(self, sent: float) -> str:
        """One renewal; "" when it succeeded or there is time left, else why leadership is lost."""
        deadline = self._renewed_at + self.timing.renew_deadline_seconds
        if sent >= deadline:
            return f"no renewal for {self.timing.renew_deadline_seconds:g}s (ha.renew_deadline_seconds)"
        timeout = max(min(self.timing.retry_seconds, deadline - sent), MINIMUM_CALL_SECONDS)
        try:
            found = self.records.read(timeout)
            if found is None:
                return "the lease was deleted"
            record, version = found
            self._observe(record, version, sent)
            if record.holder != self.identity:
                return f"the lease is held by {record.holder or 'nobody (released)'}"
            renewed = replace(record, renewed=utc_now(), lease_seconds=self.timing.lease_seconds)
            self._written(renewed, self.records.replace(renewed, version, timeout), sent)
        except (LeaseConflict, LeaseStoreError) as error:
            log.warning("election: renewal failed (%.1fs left to renew): %s", deadline - self._clock(), error)
            if self._clock() >= deadline:
                return f"no renewal for {self.timing.renew_deadline_seconds:g}s (ha.renew_deadline_seconds)"
        return ""

    def _observe(self, record: LeaseRecord, version: str, now: float) -> None:
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)
            self._on_observed(record)

    def _expired(self, record: LeaseRecord, now: float) -> bool:
        if record.vacant or record.holder == self.identity:
            return True
        assert self._observed is not None
        return now - self._observed[1] >= record.lease_seconds

    def _written(self, record: LeaseRecord, version: str, sent: float) -> None:
        self.record = record
        self._version = version
        self._observed = (version, sent)
        self._renewed_at = sent
        self._on_observed(record)

    def _lose(self, reason: str) -> None:
        self.leading = False
        log.error("leadership lost: %s", reason)
        self._on_lost(reason)
