"""The root's tier port: the ``fedagg.tier.v1.Tier`` service the ingest replicas call, over mTLS.

Every call is authenticated by the client certificate's CN, which must be one of ``topology.replicas``
(UNAUTHENTICATED otherwise, naming the CN). Claims are made durable on the I/O executor before they are answered
(UNAVAILABLE, retried by the replica, while another claim of the same contribution is being recorded; at a serving
root the federation counts them, FAILED_PRECONDITION naming why for results its round does not take).
A replica delivers one partial at a time (RESOURCE_EXHAUSTED for a second stream while one is open); a partial
that does not match the replica's claims is refused with FAILED_PRECONDITION naming the contributions, a malformed
one with INVALID_ARGUMENT. FetchModel streams the round's model file (measured once per round; FAILED_PRECONDITION
for a round whose model the root does not serve). WatchRounds streams the root's round (:mod:`~fedagg.tier.round_notices`):
the latest notice at once, then each change. The port has its own limits (:class:`TierLimits`): message size, streams per
connection, the bytes of sums a partial may announce. FetchOwnResults, AwaitOwnResultsAsks and DeliverOwnResults relay
a collaborator's own results from the replica holding them to the one asking (:mod:`~fedagg.tier.own_results_relay`,
bounded by :attr:`TierLimits.relay`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from fedagg.federation.errors import FailedPrecondition
from fedagg.protocol import tier_pb2, tier_pb2_grpc
from fedagg.server.auth import peer_common_name
from fedagg.tier.claims import ClaimBook, ClaimDecision, ClaimOutcome
from fedagg.tier.collection import ClaimMismatch, PartialCollection
from fedagg.tier.events import TierListener
from fedagg.tier.model_files import ServedModel, read_block
from fedagg.tier.own_results_relay import AnswerRefused, OwnResultsRelay, RelayLimits
from fedagg.tier.round_notices import RoundNotices
from fedagg.tier.wire import CHUNK_BYTES, PartialRefused, received_partial

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class TierLimits:
    """What the replicas may hold of the root's tier port."""

    partial_bytes: int = 1 << 36
    """The most bytes of float64 sums one partial may announce (64 GiB)."""
    message_bytes: int = CHUNK_BYTES + (16 << 20)
    """The largest message (a sums chunk, or a header naming every tensor and contributor)."""
    streams_per_connection: int = 8
    relay: RelayLimits = field(default_factory=RelayLimits)
    """What the relay of own results may hold."""


class ClaimTaker(Protocol):
    """Who answers the replicas' claims: the claim book, or at a serving root the federation that counts them."""

    def claim(
        self, round_number: int, collaborator: str, task: str, replica: str, rejected: str = ""
    ) -> ClaimDecision:
        """Let ``replica`` hold (collaborator, round, task) unless another does (``rejected``: the upload was
        rejected there, "<reason>: <why>": it counts as done and is never in a partial). MUST be durable when it returns
        GRANTED or TAKEN; MAY raise :class:`~fedagg.federation.errors.FailedPrecondition` when the round does not
        take the contribution. Blocks on the disk."""
        ...


class TierService(tier_pb2_grpc.TierServicer):
    """The root's side of the tier (module docstring). Its state is used on the event loop only."""

    def __init__(
        self,
        book: ClaimBook,
        collection: PartialCollection,
        replicas: tuple[str, ...],
        executor: Executor,
        limits: TierLimits | None = None,
        listener: TierListener | None = None,
        model_file: Callable[[int], Path | None] | None = None,
        notices: RoundNotices | None = None,
        claims: ClaimTaker | None = None,
        on_partial: Callable[[], None] | None = None,
    ) -> None:
        self._book = book
        self._claims: ClaimTaker = claims or book
        self._on_partial = on_partial
        self._collection = collection
        self._replicas = frozenset(replicas)
        self._executor = executor
        self._limits = limits or TierLimits()
        self._listener = listener or TierListener()
        self._model_file = model_file
        self._notices = notices or RoundNotices()
        self._served: dict[int, ServedModel] = {}
        self._delivering: set[str] = set()
        self._relay = OwnResultsRelay(book, self._limits.relay)
        self.partial_arrived = asyncio.Event()
        """Set whenever a new partial is kept (the round end waits on it)."""

    async def _replica(self, context: Context) -> str:
        name = peer_common_name(context)
        if name is None or name not in self._replicas:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"client certificate CN {name!r} is not an ingest replica of this root "
                f"(topology.replicas: {sorted(self._replicas)})",
            )
        assert name is not None
        self._book.contact(name)
        return name

    async def Claim(self, request: tier_pb2.ClaimRequest, context: Context) -> tier_pb2.ClaimReply:
        replica = await self._replica(context)
        if not request.collaborator or not request.task:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ClaimRequest.collaborator and ClaimRequest.task must be set",
            )
        try:
            decision = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._claims.claim,
                request.round,
                request.collaborator,
                request.task,
                replica,
                request.rejected[:1024],
            )
        except FailedPrecondition as refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(refused)[:1024])
        except OSError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the root cannot record the claim now: {error}")
        if decision.outcome == ClaimOutcome.PENDING:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{decision.holder}'s claim of the same contribution is being recorded; ask again",
            )
        return tier_pb2.ClaimReply(granted=decision.outcome == ClaimOutcome.GRANTED, holder=decision.holder)

    async def DeliverPartial(
        self, request_iterator: AsyncIterator[tier_pb2.PartialChunk], context: Context
    ) -> tier_pb2.DeliverReply:
        replica = await self._replica(context)
        if replica in self._delivering:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{replica} is delivering a partial already; deliver one at a time",
            )
        self._delivering.add(replica)
        try:
            partial = await received_partial(request_iterator, replica, self._limits.partial_bytes)
            recorded = self._collection.take(partial)
        except ClaimMismatch as mismatch:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(mismatch)[:1024])
        except PartialRefused as refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refused)[:1024])
        finally:
            self._delivering.discard(replica)
        if recorded:
            log.info(
                "round %d: partial of %s (generation %d) collected: %d contribution(s)",
                partial.round_number,
                replica,
                partial.generation,
                len(partial.contributions),
            )
            self._listener.partial_collected(replica, partial.sum_bytes)
            self.partial_arrived.set()
            if self._on_partial is not None:
                self._on_partial()
        return tier_pb2.DeliverReply(recorded=recorded)

    async def DescribeReplicas(
        self, request: tier_pb2.DescribeReplicasRequest, context: Context
    ) -> tier_pb2.DescribeReplicasReply:
        await self._replica(context)
        return describe_replicas(self._collection, request.round)

    async def FetchModel(
        self, request: tier_pb2.FetchModelRequest, context: Context
    ) -> AsyncIterator[tier_pb2.ModelChunk]:
        await self._replica(context)
        loop = asyncio.get_running_loop()
        served = self._served.get(request.round)
        if served is None:
            path = None if self._model_file is None else self._model_file(request.round)
            if path is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the root serves no model of round {request.round} (only the current round's)",
                )
            assert path is not None
            try:
                served = await loop.run_in_executor(self._executor, ServedModel.of, path)
            except OSError as error:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"the root cannot read its model now: {error}"
                )
            self._served[request.round] = served
        offset = 0
        while True:
            try:
                data = await loop.run_in_executor(self._executor, read_block, served.path, offset)
            except OSError as error:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"the root cannot read its model now: {error}"
                )
            first = offset == 0
            yield tier_pb2.ModelChunk(
                size=served.size if first else 0, sha256=served.sha256 if first else "", data=data
            )
            offset += len(data)
            if not data or offset >= served.size:
                return

    async def WatchRounds(
        self, request: tier_pb2.WatchRoundsRequest, context: Context
    ) -> AsyncIterator[tier_pb2.RoundNotice]:
        replica = await self._replica(context)
        self._book.watching(replica, True)
        try:
            async for notice in self._notices.watch():
                yield notice.message()
        finally:
            self._book.watching(replica, False)

    async def FetchOwnResults(
        self, request: tier_pb2.OwnResultsRequest, context: Context
    ) -> AsyncIterator[tier_pb2.OwnResultsChunk]:
        asker = await self._replica(context)
        lost = {view.replica for view in self._collection.replicas(request.round) if view.lost}
        try:
            async with self._relay.answer(asker, request, lost) as answer:
                for start in range(0, max(len(answer), 1), CHUNK_BYTES):
                    data = bytes(memoryview(answer)[start : start + CHUNK_BYTES])
                    yield tier_pb2.OwnResultsChunk(size=len(answer) if start == 0 else 0, data=data)
        except AnswerRefused as refusal:
            await context.abort(refusal.code, str(refusal)[:1024])

    async def AwaitOwnResultsAsks(
        self, request: tier_pb2.AwaitOwnResultsAsksRequest, context: Context
    ) -> AsyncIterator[tier_pb2.OwnResultsAsk]:
        holder = await self._replica(context)
        asks = self._relay.asks(holder)
        try:
            async for ask in asks:
                yield ask
        finally:
            await asks.aclose()

    async def DeliverOwnResults(
        self, request_iterator: AsyncIterator[tier_pb2.OwnResultsChunk], context: Context
    ) -> tier_pb2.DeliverOwnResultsReply:
        holder = await self._replica(context)
        try:
            await self._relay.take_answer(holder, request_iterator)
        except AnswerRefused as refusal:
            await context.abort(refusal.code, str(refusal)[:1024])
        return tier_pb2.DeliverOwnResultsReply()


def describe_replicas(collection: PartialCollection, round_number: int) -> tier_pb2.DescribeReplicasReply:
    """The replicas' state in the round, as the tier protocol carries it."""
    reply = tier_pb2.DescribeReplicasReply(round=round_number)
    for view in collection.replicas(round_number):
        reply.replicas.append(
            tier_pb2.ReplicaState(
                replica=view.replica,
                claimed=view.claimed,
                delivered=view.generation is not None,
                generation=view.generation or 0,
                seconds_since_contact=-1.0
                if view.seconds_since_contact is None
                else view.seconds_since_contact,
                lost=view.lost,
            )
        )
    return reply


def tier_server(
    service: TierService, credentials: grpc.ServerCredentials, address: str, limits: TierLimits | None = None
) -> tuple[grpc.aio.Server, int]:
    """The root's tier server (not started) bound to ``address`` with mTLS, and its port."""
    limits = limits or TierLimits()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.message_bytes),
            ("grpc.max_send_message_length", limits.message_bytes),
            ("grpc.max_concurrent_streams", limits.streams_per_connection),
        ]
    )
    tier_pb2_grpc.add_TierServicer_to_server(service, server)
    port = server.add_secure_port(address, credentials)
    return server, port
