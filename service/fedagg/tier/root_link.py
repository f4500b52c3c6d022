"""An ingest replica's link to its root: claims, partial deliveries and the replicas' state, over mTLS.

Every call has a deadline. UNAVAILABLE and DEADLINE_EXCEEDED (the root restarting, a network blip) are retried
with exponential back-off until ``patience`` runs out, then :class:`RootUnreachable` is raised (the replica then
answers its collaborators UNAVAILABLE, which OpenFL clients retry); any other status is a :class:`TierRefusal`
carrying the root's code and message. Claims and deliveries are idempotent, so retrying them is safe.

:meth:`RootLink.watch_rounds` follows the root's round (WatchRounds) for as long as the replica runs, reconnecting
with the same back-off whenever the stream breaks; :attr:`RootLink.watching` says whether it is up. The link's one
channel also carries the collaborators' calls the replica relays to the root's federation port
(:mod:`fedagg.tier.forwarding`), so its replies may be as large as gRPC allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from fedagg.protocol import tier_pb2, tier_pb2_grpc
from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES
from fedagg.tier.events import TierListener
from fedagg.tier.model_files import ModelCopies
from fedagg.tier.partials import RoundPartial
from fedagg.tier.round_notices import RoundNotice
from fedagg.tier.wire import CHUNK_BYTES, partial_chunks

T = TypeVar("T")
M_co = TypeVar("M_co", covariant=True)


class StreamCall(Protocol[M_co]):
    """A server-streaming call: its messages, and cancel."""

    def __aiter__(self) -> AsyncIterator[M_co]: ...

    def cancel(self) -> bool: ...


RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class RootUnreachable(ConnectionError):
    """The root did not answer within the link's patience."""


class TierRefusal(Exception):
    """The root refused a call; ``code`` and the message are the root's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass(frozen=True)
class LinkTimings:
    """Deadlines and back-off of the link."""

    call_seconds: float = 10.0
    """Deadline of one claim or status call."""
    delivery_seconds: float = 600.0
    """Deadline of one partial delivery (a model-sized stream)."""
    patience_seconds: float = 60.0
    relay_seconds: float = 40.0
    """Deadline of a relay of own results through the root (longer than the root's wait for the holder)."""
    """How long UNAVAILABLE is retried before :class:`RootUnreachable`."""
    initial_backoff: float = 0.2
    maximum_backoff: float = 5.0


class RootLink:
    """The replica's client of the root's tier port (module docstring)."""

    def __init__(
        self,
        address: str,
        credentials: grpc.ChannelCredentials,
        timings: LinkTimings | None = None,
        server_name: str | None = None,
        listener: TierListener | None = None,
    ) -> None:
        self._timings = timings = timings or LinkTimings()
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", CHUNK_BYTES + (16 << 20)),
            ("grpc.max_receive_message_length", MAX_SEND_MESSAGE_BYTES),
            # a restarted root is dialled again within the link's back-off (gRPC's own grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", int(timings.initial_backoff * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(timings.initial_backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(timings.maximum_backoff * 1000)),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.address = address
        self.channel = grpc.aio.secure_channel(address, credentials, options=options)
        """The mTLS channel to the root (shared with :class:`~fedagg.tier.forwarding.RootForwarder`)."""
        self._stub = tier_pb2_grpc.TierStub(self.channel)
        self._listener = listener or TierListener()
        self.watching = False
        """Whether :meth:`watch_rounds` has the root's round stream up (event-loop state)."""
        self.watch_ended = asyncio.Event()
        """Set each time the round stream ends or breaks (cleared by whoever waits for it)."""

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)

    async def claim(
        self, collaborator: str, round_number: int, task: str, rejected: str = ""
    ) -> tier_pb2.ClaimReply:
        """Claim a spooled contribution, or report a rejected upload (``rejected``: "<reason>: <why>"); ``granted``
        False means another replica holds it (drop this copy)."""
        request = tier_pb2.ClaimRequest(
            collaborator=collaborator, round=round_number, task=task, rejected=rejected
        )
        started = time.monotonic()
        reply = await self._retried(lambda: self._stub.Claim(request, timeout=self._timings.call_seconds))
        self._listener.claimed(reply.granted, time.monotonic() - started)
        return reply

    async def deliver(self, partial: RoundPartial) -> bool:
        """Deliver the round's partial; False when the root had this very partial already."""

        async def once() -> tier_pb2.DeliverReply:
            call = self._stub.DeliverPartial(partial_chunks(partial), timeout=self._timings.delivery_seconds)
            return await call

        reply = await self._retried(once)
        self._listener.partial_sent(partial.round_number, partial.sum_bytes)
        return reply.recorded

    async def keep_delivered(
        self, partial: RoundPartial, done: asyncio.Event, poll_seconds: float = 5.0
    ) -> None:
        """Deliver ``partial`` and see that the root keeps it until ``done`` is set: a root that restarted has
        lost the partials it collected (they live in its memory), so it is delivered again whenever the root does
        not show it."""
        while not done.is_set():
            states = {state.replica: state for state in (await self.replicas(partial.round_number)).replicas}
            kept = states.get(partial.replica)
            if kept is None or not kept.delivered or kept.generation != partial.generation:
                await self.deliver(partial)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), poll_seconds)

    async def fetch_model(self, round_number: int, copies: ModelCopies, executor: Executor) -> Path:
        """The round's model in ``copies``: the kept copy if it still matches its checksum, else fetched from the
        root (and checked: :class:`~fedagg.tier.model_files.ModelMismatch` when it does not match)."""
        loop = asyncio.get_running_loop()
        kept = await loop.run_in_executor(executor, copies.kept, round_number)
        if kept is not None:
            return kept
        request = tier_pb2.FetchModelRequest(round=round_number)

        async def once() -> Path:
            stream = self._stub.FetchModel(request, timeout=self._timings.delivery_seconds)
            return await copies.receive(round_number, aiter(stream), executor)

        return await self._retried(once)

    async def replicas(self, round_number: int) -> tier_pb2.DescribeReplicasReply:
        """The root's view of the replicas in a round."""
        request = tier_pb2.DescribeReplicasRequest(round=round_number)
        return await self._retried(
            lambda: self._stub.DescribeReplicas(request, timeout=self._timings.call_seconds)
        )

    async def watch_rounds(self) -> AsyncIterator[RoundNotice]:
        """The root's round notices for as long as the caller iterates: the latest at once, then each change.

        A stream that breaks with UNAVAILABLE or DEADLINE_EXCEEDED (the root restarting) or ends is opened again
        after a back-off; any other status raises :class:`TierRefusal`.
        """
        opened = functools.partial(self._stub.WatchRounds, tier_pb2.WatchRoundsRequest())
        async for notice in self._kept_open(opened, self._watch_state):
            self.watching = True
            yield RoundNotice(
                notice.round,
                notice.phase,
                tuple(notice.stragglers),
                tuple(sorted(notice.clipping_norms.items())),
            )

    def _watch_state(self) -> None:
        self.watching = False
        self.watch_ended.set()

    async def own_results_asks(self) -> AsyncIterator[tier_pb2.OwnResultsAsk]:
        """The root's asks for own results this replica holds, for as long as the caller iterates (kept open as
        :meth:`watch_rounds` is)."""
        opened = functools.partial(self._stub.AwaitOwnResultsAsks, tier_pb2.AwaitOwnResultsAsksRequest())
        async for ask in self._kept_open(opened, lambda: None):
            yield ask

    async def _kept_open(
        self, opened: Callable[[], StreamCall[M_co]], ended: Callable[[], None]
    ) -> AsyncIterator[M_co]:
        """The messages of a server stream, opened again after a back-off whenever it breaks with UNAVAILABLE or
        DEADLINE_EXCEEDED or ends (``ended`` is called then); any other status raises :class:`TierRefusal`."""
        timings = self._timings
        delay = timings.initial_backoff
        while True:
            stream = opened()
            try:
                async for message in stream:
                    delay = timings.initial_backoff
                    yield message
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED:
                    raise TierRefusal(error.code(), error.details() or "") from None
            finally:
                ended()
                stream.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, timings.maximum_backoff)

    async def fetch_own_results(self, request: tier_pb2.OwnResultsRequest) -> bytearray:
        """A collaborator's own results held by another replica, through the root: the serialized NamedTensor that
        replica serves. One attempt within ``relay_seconds``: raises :class:`TierRefusal` with the root's status,
        or :class:`RootUnreachable`."""
        answer, filled = bytearray(), 0
        try:
            stream = self._stub.FetchOwnResults(request, timeout=self._timings.relay_seconds)
            async for chunk in stream:
                if chunk.size:
                    answer, filled = bytearray(chunk.size), 0
                if filled + len(chunk.data) > len(answer):
                    raise TierRefusal(grpc.StatusCode.DATA_LOSS, "the root's answer exceeds its size")
                answer[filled : filled + len(chunk.data)] = chunk.data
                filled += len(chunk.data)
        except grpc.aio.AioRpcError as error:
            if error.code() in RETRIED:
                raise RootUnreachable(f"{error.code().name}: {error.details()}") from None
            raise TierRefusal(error.code(), error.details() or "") from None
        if not answer or filled != len(answer):
            raise TierRefusal(grpc.StatusCode.DATA_LOSS, "the root's answer broke off")
        return answer

    async def deliver_own_results(self, chunks: AsyncIterator[tier_pb2.OwnResultsChunk]) -> None:
        """Answer one of the root's asks (the first chunk names it). One attempt within ``relay_seconds``."""
        await self._stub.DeliverOwnResults(chunks, timeout=self._timings.relay_seconds)

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        timings = self._timings
        give_up = time.monotonic() + timings.patience_seconds
        delay = timings.initial_backoff
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in RETRIED:
                    raise TierRefusal(code, error.details() or "") from None
                if time.monotonic() + delay > give_up:
                    raise RootUnreachable(
                        f"the root did not answer for {timings.patience_seconds:g}s ({code.name}: "
                        f"{error.details()})"
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, timings.maximum_backoff)
