"""The root's relay of own results: a collaborator's own uploaded tensor, from the replica that holds it to another.

A restarted OpenFL 1.8/1.9 collaborator asks for its own results of the round (:mod:`fedagg.federation.own_results`)
on a new connection, which may land on a replica that does not hold its upload. That replica asks the root
(``FetchOwnResults``); the root knows from its claims which replicas hold the collaborator's contributions of the
round and asks each in turn over the stream the holder keeps open to it (``AwaitOwnResultsAsks``); the holder
answers with ``DeliverOwnResults``: the serialized NamedTensor it would serve itself (or its refusal), which the
root streams back to the asker unchanged.

Bounds (:class:`RelayLimits`): asks in flight per holder and in total, the bytes of answers the root holds at once
(an answer is held whole, one tensor per relay, and must fit in one gRPC message), and a deadline for the holder's
answer. Beyond a bound, or past the deadline, or when the holder is not connected, the asker is answered UNAVAILABLE
with a message naming the holder and the limit (OpenFL 1.9 asks again); a holder the root declared lost, or no
holder at all, is NOT_FOUND.

Event-loop object: all its state is used on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from dataclasses import dataclass, field

import grpc

from fedagg.protocol import tier_pb2
from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES
from fedagg.tier.claims import ClaimBook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayLimits:
    """What the relay of own results may hold at the root."""

    asks_per_replica: int = 4
    """Asks in flight to one holder."""
    asks_total: int = 32
    """Asks in flight to all holders."""
    bytes_held: int = 1 << 30
    """Bytes of answers the root holds at once (each answer is one tensor, held until the asker has it)."""
    answer_seconds: float = 30.0
    """How long a holder has to deliver its whole answer."""


class AnswerRefused(Exception):
    """The holder's answer, or the relay's failure, with the status the asker gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Pending:
    """An ask sent to a holder, awaiting its answer."""

    holder: str
    deadline: float
    """Loop time by which the answer must be whole."""
    answer: asyncio.Future[bytearray] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    delivering: bool = False
    held: int = 0
    """Bytes of the answer counted as held once it is handed over."""


class OwnResultsRelay:
    """The root's side of relayed own results (module docstring)."""

    def __init__(self, book: ClaimBook, limits: RelayLimits | None = None) -> None:
        self._book = book
        self._limits = limits or RelayLimits()
        self._asks: dict[str, asyncio.Queue[tier_pb2.OwnResultsAsk | None]] = {}
        """Each holder's open ask stream (the latest it opened)."""
        self._pending: dict[int, _Pending] = {}
        self._numbers = itertools.count(1)
        self._held_bytes = 0

    @contextlib.asynccontextmanager
    async def answer(
        self, asker: str, request: tier_pb2.OwnResultsRequest, lost: Collection[str]
    ) -> AsyncIterator[bytearray]:
        """The serialized NamedTensor answering ``asker``'s request (``lost``: the replicas the root declared lost),
        counted as held until the context ends. Raises :class:`AnswerRefused`."""
        collaborator, number = request.collaborator, request.round
        holders = [
            replica
            for replica, held in self._book.holders(number).items()
            if replica != asker and any(owner == collaborator for owner, _ in held)
        ]
        if not holders:
            raise AnswerRefused(
                grpc.StatusCode.NOT_FOUND,
                f"no other ingest replica holds {collaborator}'s results of round {number} "
                f"(the root has no claim of them by any replica but {asker})",
            )
        refusals: list[AnswerRefused] = []
        for holder in holders:
            try:
                answer = await self._asked(holder, request, holder in lost)
                break
            except AnswerRefused as refusal:
                refusals.append(refusal)
        else:
            retry = [refusal for refusal in refusals if refusal.code == grpc.StatusCode.UNAVAILABLE]
            raise (retry or refusals)[0]
        log.info(
            "round %d: %s's own results %r relayed from %s to %s (%d bytes)",
            number,
            collaborator,
            request.tensor_name[:64],
            holder,
            asker,
            len(answer),
        )
        try:
            yield answer
        finally:
            self._held_bytes -= len(answer)

    async def _asked(self, holder: str, request: tier_pb2.OwnResultsRequest, lost: bool) -> bytearray:
        """``holder``'s answer to ``request``, counted as held (raises :class:`AnswerRefused`)."""
        what = f"{request.collaborator}'s results of round {request.round}"
        if lost:
            raise AnswerRefused(
                grpc.StatusCode.NOT_FOUND, f"ingest replica {holder}, which holds {what}, is lost"
            )
        stream = self._asks.get(holder)
        if stream is None:
            raise AnswerRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"ingest replica {holder}, which holds {what}, is not connected to the root; ask again",
            )
        limits = self._limits
        to_holder = sum(1 for pending in self._pending.values() if pending.holder == holder)
        if to_holder >= limits.asks_per_replica or len(self._pending) >= limits.asks_total:
            raise AnswerRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"the root relays {to_holder} requests to {holder} and {len(self._pending)} in all (limits "
                f"{limits.asks_per_replica} and {limits.asks_total}); ask again",
            )
        loop = asyncio.get_running_loop()
        number = next(self._numbers)
        pending = _Pending(holder, loop.time() + limits.answer_seconds)
        self._pending[number] = pending
        stream.put_nowait(tier_pb2.OwnResultsAsk(ask=number, request=request))
        answered = False
        try:
            answer = await asyncio.wait_for(pending.answer, limits.answer_seconds)
            answered = True
            return answer
        except TimeoutError:
            raise AnswerRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"ingest replica {holder}, which holds {what}, did not answer within {limits.answer_seconds:g}s; "
                "ask again",
            ) from None
        finally:
            del self._pending[number]
            if not answered:  # an answer that came as the asker left is let go here
                self._held_bytes -= pending.held

    async def asks(self, holder: str) -> AsyncGenerator[tier_pb2.OwnResultsAsk, None]:
        """The asks for ``holder``, for as long as it keeps this stream (a newer stream of it replaces this one)."""
        stream: asyncio.Queue[tier_pb2.OwnResultsAsk | None] = asyncio.Queue()
        replaced = self._asks.get(holder)
        if replaced is not None:
            replaced.put_nowait(None)
        self._asks[holder] = stream
        try:
            while (ask := await stream.get()) is not None:
                yield ask
        finally:
            if self._asks.get(holder) is stream:
                del self._asks[holder]
                self._fail_unanswered(holder)

    def _fail_unanswered(self, holder: str) -> None:
        """``holder``'s ask stream ended: the asks it has not begun to answer fail now, not at their deadline."""
        for pending in self._pending.values():
            if pending.holder == holder and not pending.delivering and not pending.answer.done():
                pending.answer.set_exception(
                    AnswerRefused(
                        grpc.StatusCode.UNAVAILABLE,
                        f"ingest replica {holder}'s connection to the root ended before it answered; ask again",
                    )
                )

    async def take_answer(self, holder: str, chunks: AsyncIterator[tier_pb2.OwnResultsChunk]) -> None:
        """Read ``holder``'s answer to an ask and hand it to the asker. Raises :class:`AnswerRefused` (for the
        holder) when the ask is not awaited from it or the answer is malformed or too large."""
        first = await anext(chunks, None)
        if first is None:
            raise AnswerRefused(grpc.StatusCode.INVALID_ARGUMENT, "DeliverOwnResults sent no chunk")
        pending = self._pending.get(first.ask)
        if pending is None or pending.holder != holder or pending.delivering or pending.answer.done():
            raise AnswerRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"ask {first.ask} is not awaited from {holder} (it timed out, or its asker left)",
            )
        if first.refused_code:
            code = _status(first.refused_code)
            pending.answer.set_exception(AnswerRefused(code, f"{holder}: {first.refused[:900]}"))
            return
        size, limits = first.size, self._limits
        if size > MAX_SEND_MESSAGE_BYTES or self._held_bytes + size > limits.bytes_held:
            refusal = AnswerRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"the root holds {self._held_bytes} bytes of relayed results and {holder}'s answer has {size} "
                f"(limit {limits.bytes_held}); ask again",
            )
            pending.answer.set_exception(refusal)
            raise refusal
        pending.delivering = True
        self._held_bytes += size
        try:
            async with asyncio.timeout_at(pending.deadline):
                answer = await _gathered(first, chunks, size)
        except TimeoutError:
            self._held_bytes -= size
            raise AnswerRefused(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the answer to ask {first.ask} came too late"
            ) from None
        except BaseException as failure:
            self._held_bytes -= size
            if not pending.answer.done():
                pending.answer.set_exception(
                    AnswerRefused(
                        grpc.StatusCode.UNAVAILABLE, f"{holder}'s answer broke off: {failure!r}; ask again"
                    )
                )
            raise
        if pending.answer.done():  # the asker stopped waiting
            self._held_bytes -= size
        else:
            pending.held = size
            pending.answer.set_result(answer)


async def _gathered(
    first: tier_pb2.OwnResultsChunk, chunks: AsyncIterator[tier_pb2.OwnResultsChunk], size: int
) -> bytearray:
    """The answer's ``size`` bytes, from ``first`` and the chunks after it."""
    answer = bytearray(size)
    filled = 0
    chunk: tier_pb2.OwnResultsChunk | None = first
    while chunk is not None:
        if filled + len(chunk.data) > size:
            raise AnswerRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"the answer exceeds its size ({size} bytes)"
            )
        answer[filled : filled + len(chunk.data)] = chunk.data
        filled += len(chunk.data)
        chunk = await anext(chunks, None)
    if filled != size:
        raise AnswerRefused(grpc.StatusCode.INVALID_ARGUMENT, f"the answer has {filled} of its {size} bytes")
    return answer


def _status(value: int) -> grpc.StatusCode:
    """The status code a holder's refusal names (UNAVAILABLE for one that names none fedagg knows)."""
    for code in grpc.StatusCode:
        if code.value[0] == value and code != grpc.StatusCode.OK:
            return code
    return grpc.StatusCode.UNAVAILABLE
