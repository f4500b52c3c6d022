"""Retrying a collaborator's calls through outages: back-off with jitter, a probe of the cause, a budget.

UNAVAILABLE and CANCELLED (:data:`RETRIED_CODES`) are diagnosed (:mod:`fedagg.collaborator.diagnostics`): a
transient cause (nothing listens yet, the name does not resolve yet, the aggregator restarting or draining) is
logged as a warning naming the address and the cause, and retried with exponential back-off and jitter until
``RetryPolicy.give_up_after`` seconds have passed (then :class:`AggregatorUnreachable`). A cause retrying cannot
fix (TLS verification failing on either side, a name the aggregator's certificate does not carry, TLS against
plaintext) raises :class:`ConnectionFailed` at once. Any other status raises :class:`AggregatorError` with the
server's message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedagg.collaborator.errors import AggregatorError, AggregatorUnreachable, ConnectionFailed
from fedagg.collaborator.problems import ConnectionProblem

connection_log = logging.getLogger("fedagg.collaborator.connection")
"""Connection problems (warnings, one per retry) and recoveries (info)."""

CONFIRM_SECONDS = 0.2
"""Seconds between the two probes that must agree before a connection problem is called permanent."""
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""Statuses an outage produces. CANCELLED reaches this client only from the other side (it never cancels its own
calls): a server stopping cuts the calls still in flight (RST_STREAM CANCEL), as a drain or a replica that lost its
lease does; every call is safe to repeat (an upload counts once)."""
_Reply = TypeVar("_Reply")


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for UNAVAILABLE: ``initial`` seconds doubling up to ``maximum``, with full jitter.

    ``give_up_after``: seconds (wall clock, from the first failure of an outage) after which a call stops
    retrying and raises :class:`AggregatorUnreachable`.
    """

    initial: float = 0.5
    maximum: float = 10.0
    give_up_after: float = 600.0

    def delays(self) -> Iterator[float]:
        """Successive sleeps; stops when ``give_up_after`` seconds of sleeping are used up."""
        delay, slept = self.initial, 0.0
        while slept < self.give_up_after:
            pause = random.uniform(delay / 2, delay)
            slept += pause
            yield pause
            delay = min(delay * 2, self.maximum)


class Outage:
    """One stretch of failed attempts: when it began, how often it was retried, what the probe found."""

    PROBE_INTERVAL = 2.0  # seconds: the same gRPC detail within this is not probed again

    def __init__(self, retry: RetryPolicy) -> None:
        self.started = time.monotonic()
        self.attempts = 0
        self.delays = retry.delays()
        self.problem: ConnectionProblem | None = None
        self._probed_details: str | None = None
        self._probed_at = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def needs_probe(self, details: str) -> bool:
        return (
            self.problem is None
            or details != self._probed_details
            or time.monotonic() - self._probed_at >= self.PROBE_INTERVAL
        )

    def probed(self, details: str, problem: ConnectionProblem) -> None:
        self.problem, self._probed_details, self._probed_at = problem, details, time.monotonic()


class Retrier:
    """Runs calls to the aggregator at ``address``, retrying through outages ``probe`` calls transient."""

    def __init__(self, address: str, retry: RetryPolicy, probe: Callable[[str], ConnectionProblem]) -> None:
        self.address = address
        self.policy = retry
        self._probe = probe

    def call(self, invoke: Callable[[], _Reply]) -> _Reply:
        """``invoke()``'s result; ``invoke`` is called again (whole) after each transient failure."""
        outage: Outage | None = None
        while True:
            try:
                reply = invoke()
            except grpc.RpcError as error:
                outage = self.retry_or_raise(error, outage)
            else:
                self.recovered(outage)
                return reply

    def retry_or_raise(self, error: grpc.RpcError, outage: Outage | None) -> Outage:
        """Sleep before the next attempt when retrying can help; otherwise raise the right error."""
        code, details = error.code(), error.details() or ""
        if code not in RETRIED_CODES:
            raise AggregatorError(code, details) from None
        outage = outage or Outage(self.policy)
        if outage.needs_probe(details):
            found = self._probe(details)
            if not found.transient:  # a verdict that ends the run is confirmed by a second probe
                time.sleep(CONFIRM_SECONDS)
                if (again := self._probe(details)).cause != found.cause:
                    found = again
            outage.probed(details, found)
        problem = outage.problem
        assert problem is not None
        if not problem.transient:
            raise ConnectionFailed(problem) from None
        pause = next(outage.delays, None)
        elapsed = outage.elapsed()
        budget = self.policy.give_up_after
        if pause is None or elapsed >= budget:
            raise AggregatorUnreachable(problem, elapsed) from None
        pause = min(pause, budget - elapsed)  # the last attempt is made when the budget runs out
        outage.attempts += 1
        connection_log.warning(
            "%s; retrying in %.1fs (attempt %d, giving up %.0fs from now)",
            problem,
            pause,
            outage.attempts,
            max(budget - elapsed, 0.0),
            extra={"cause": problem.cause.value, "address": self.address},
        )
        time.sleep(pause)
        return outage

    def recovered(self, outage: Outage | None) -> None:
        """Log the end of ``outage`` if calls were retried."""
        if outage is not None and outage.attempts:
            connection_log.info(
                "connected to the aggregator at %s after %d attempts (%.0fs)",
                self.address,
                outage.attempts + 1,
                outage.elapsed(),
            )
