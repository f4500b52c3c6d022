"""What a root adds to the aggregator process: its claim journal, partial collection and round notices, and the
``fedagg.tier.v1.Tier`` service beside the Aggregator service on its tier port.

The root's federation is a standalone federation fed by claims (:mod:`fedagg.tier.root_rounds`); its server listens
on ``topology.tier_port`` with the tier certificates and trusts the replicas named in ``topology.replicas`` to vouch
for the collaborators they forward. A partial kept wakes the federation (:meth:`Federation.tick
<fedagg.federation.federation.Federation.tick>`) on a thread of its own, where the round end may run.

Single-owner: built by the assembly, closed by the process at exit (:meth:`RootTier.close`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from fedagg.config.topology import TopologySettings
from fedagg.federation.federation import Federation
from fedagg.federation.store import StateStore
from fedagg.protocol import tier_pb2, tier_pb2_grpc, tier_report_pb2, tier_report_pb2_grpc
from fedagg.server.options import ConnectionLimits, Register
from fedagg.tier.claims import ClaimBook
from fedagg.tier.collection import PartialCollection
from fedagg.tier.events import TierListener
from fedagg.tier.root_rounds import CountedClaims, RootRounds
from fedagg.tier.root_service import TierService, describe_replicas
from fedagg.tier.round_notices import RoundNotices

log = logging.getLogger(__name__)

TIER_SERVICE = "fedagg.tier.v1.Tier"
TIER_REPORT_SERVICE = "fedagg.ops.v1.TierReport"
TIER_DIRECTORY = "tier"
"""The root's claim journal lives in this directory of its state directory."""


class RootTier:
    """A root's tier parts (module docstring). Constructing it reads the claim journal: off the event loop."""

    def __init__(
        self,
        state_dir: Path,
        topology: TopologySettings,
        aggregation_bytes: int,
        listener: TierListener,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = ClaimBook(state_dir / TIER_DIRECTORY, clock)
        self.collection = PartialCollection(
            self.book, topology.replicas, topology.lost_replica_seconds, clock, listener
        )
        self.notices = RoundNotices()
        self.rounds = RootRounds(self.book, self.collection, self.notices, aggregation_bytes)
        self._replicas = topology.replicas
        self._listener = listener
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="fedagg-tier")
        self._ticks = ThreadPoolExecutor(1, thread_name_prefix="fedagg-tier-round")

    def registration(self, federation: Federation, store: StateStore) -> Register:
        """What registers the Tier service of ``federation`` on the root's server."""

        def model_file(round_number: int) -> Path | None:
            current = not federation.finished and round_number == federation.round_number
            return store.model_path(round_number) if current else None

        def on_partial() -> None:
            self._ticks.submit(federation.tick).add_done_callback(_report_failure)

        service = TierService(
            self.book,
            self.collection,
            self._replicas,
            self._executor,
            listener=self._listener,
            model_file=model_file,
            notices=self.notices,
            claims=CountedClaims(federation, self.book),
            on_partial=on_partial,
        )

        def register(server: grpc.aio.Server) -> list[str]:
            tier_pb2_grpc.add_TierServicer_to_server(service, server)
            return [TIER_SERVICE]

        return register

    def report_registration(self, federation: Federation) -> Register:
        """What registers ``fedagg.ops.v1.TierReport`` (the replicas in the current round) on the ops port."""
        service = TierReportService(self.collection, lambda: federation.round_number)

        def register(server: grpc.aio.Server) -> list[str]:
            tier_report_pb2_grpc.add_TierReportServicer_to_server(service, server)
            return [TIER_REPORT_SERVICE]

        return register

    def close(self) -> None:
        """Stop the tier's threads and close the claim journal (after the server stopped)."""
        self._ticks.shutdown(cancel_futures=True)
        self._executor.shutdown(cancel_futures=True)
        self.book.close()


def root_connection_limits(limits: ConnectionLimits, collaborators: int) -> ConnectionLimits:
    """A root's connection limits: each replica's one connection carries every call it relays (a GetTasks long poll
    held per collaborator, and one more call each) besides its own (claims, partials, the model, the round watch), so
    ``max_concurrent_streams`` is at least 2 x collaborators + 16 (with 16, a replica serving more than about 16
    collaborators stalls: its claims wait behind the held long polls)."""
    return replace(limits, max_concurrent_streams=max(limits.max_concurrent_streams, 2 * collaborators + 16))


class TierReportService(tier_report_pb2_grpc.TierReportServicer):
    """The root's replicas in its current round, for ``fedagg status --ops`` (read-only; used on the event loop,
    as the collection is)."""

    def __init__(self, collection: PartialCollection, round_number: Callable[[], int]) -> None:
        self._collection = collection
        self._round_number = round_number

    async def Describe(
        self, request: tier_report_pb2.DescribeTierRequest, context: Any
    ) -> tier_pb2.DescribeReplicasReply:
        return describe_replicas(self._collection, self._round_number())


def _report_failure(done: Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.error("the root could not take up a delivered partial: %r", error)
