"""Downloads: the one place where replies meet the reply budget, each caller's share, and the send deadline.

A reply (a tensor, or a trained model) is built only once the budget admits its size and its caller holds fewer
than ``caller_limits.replies_in_flight`` replies; it is built off the event loop from mapped files, and written
with a deadline of ``reply_send_seconds`` plus its size at ``reply_min_bytes_per_second``. A caller that does not
read its reply in time (an HTTP/2 window it never opens) has its call abandoned: its bytes go back to the budget,
and its downloads are answered UNAVAILABLE for ``max_connection_age`` plus grace, by which time gRPC has closed the
connection and freed its copy of the stuck reply (grpc.aio offers a server no way to reset one stream). So one such
caller holds at most one reply outside the budget, and never holds up the others.

The handlers that use :meth:`Downloads.send` are registered as unary-stream on the server: the wire is the same as a
unary reply (one message, then the status), but the write is a coroutine the deadline can end.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import grpc

from fedagg.federation.serving import ServedTensor, TensorRequest
from fedagg.logs import set_log_context
from fedagg.protocol import aggregator_pb2
from fedagg.server import replies
from fedagg.server.errors import Unavailable
from fedagg.server.observer import Limit, ServerObserver
from fedagg.server.options import CallerLimits, ServerOptions
from fedagg.server.reply_budget import ReplyBudget

log = logging.getLogger(__name__)

ServerContext = grpc.aio.ServicerContext[Any, Any]


def requested_tensor(request: aggregator_pb2.GetAggregatedTensorRequest) -> TensorRequest:
    """What a GetAggregatedTensor request asks for."""
    return TensorRequest(
        request.tensor_name,
        request.round_number,
        request.report,
        tuple(request.tags),
        request.require_lossless,
    )


class Downloads:
    """Budget, shares, stalled callers and deadlines of every reply. Event-loop only (no lock)."""

    def __init__(
        self,
        budget: ReplyBudget,
        limits: CallerLimits,
        executor: Executor,
        observer: ServerObserver,
        stalled_seconds: float,
    ) -> None:
        self.budget = budget
        self._limits = limits
        self._executor = executor
        self._observer = observer
        self._stalled_seconds = stalled_seconds
        self._stalled_until: dict[str, float] = {}
        """Callers whose last reply was not read in time, and until when they are refused (loop time)."""

    @classmethod
    def for_options(cls, options: ServerOptions, executor: Executor) -> Downloads:
        """Downloads under ``options``' reply budget and caller limits; stalled callers wait out their connection."""
        limits, observer = options.caller_limits, options.observer
        recycled = (
            options.max_connection_age + options.max_connection_age_grace if options.max_connection_age else 0
        )
        budget = ReplyBudget(
            options.reply_bytes_in_flight,
            observer.replies_in_flight,
            per_caller=limits.replies_in_flight,
            on_share_reached=lambda: observer.limit_breached(Limit.REPLIES_PER_CALLER),
        )
        return cls(
            budget, limits, executor, observer, stalled_seconds=max(recycled, limits.reply_send_seconds)
        )

    async def send(self, context: ServerContext, caller: str, size: int, build: Callable[[], bytes]) -> None:
        """Build a reply of ``size`` bytes with ``build`` (off the loop) under the budget, and write it in time."""
        loop = asyncio.get_running_loop()
        self._check_not_stalled(caller, loop.time())
        await self.budget.acquire(size, caller)
        try:
            self._check_not_stalled(caller, loop.time())  # its previous reply may have stalled meanwhile
            reply = await loop.run_in_executor(self._executor, build)
            deadline = self._limits.send_deadline(len(reply))
            try:
                await asyncio.wait_for(context.write(reply), deadline)
            except TimeoutError:
                self._stalled_until[caller] = loop.time() + self._stalled_seconds
                self._observer.limit_breached(Limit.REPLY_SEND)
                log.warning(
                    "%s did not read a reply of %d bytes within %.0f s: call abandoned, its downloads refused "
                    "for %.0f s (server.caller_limits.reply_send_seconds)",
                    caller,
                    len(reply),
                    deadline,
                    self._stalled_seconds,
                )
                # No status can follow a write gRPC has not finished; the call is abandoned (the connection's
                # age ends it) and the handler ends as a cancelled call does.
                raise asyncio.CancelledError from None
            except Exception as error:  # the call is gone (its client left, the server stops): none to answer
                log.debug("the reply to %s could not be written: %r", caller, error)
                raise asyncio.CancelledError from None
        finally:
            self.budget.release(size, caller)

    async def answer_tensor_request(
        self,
        context: ServerContext,
        caller: str,
        header: aggregator_pb2.MessageHeader,
        request: aggregator_pb2.GetAggregatedTensorRequest,
        serve: Callable[[TensorRequest], ServedTensor],
    ) -> None:
        """Answer a GetAggregatedTensor request with the tensor ``serve`` measures for it (off the event loop)."""
        set_log_context(round_number=request.round_number)
        loop = asyncio.get_running_loop()
        served = await loop.run_in_executor(self._executor, serve, requested_tensor(request))
        await self.send_tensor(context, caller, header, request.round_number, served)

    async def send_tensor(
        self,
        context: ServerContext,
        caller: str,
        header: aggregator_pb2.MessageHeader,
        round_number: int,
        served: ServedTensor,
    ) -> None:
        """Send a served tensor under the budget; its mapped pages are let go whether or not it was sent."""
        built = False

        def build() -> bytes:
            nonlocal built
            built = True
            try:
                return replies.tensor_reply(header, round_number, served.parts())
            finally:
                served.release()

        try:
            await self.send(
                context, caller, replies.tensor_reply_size(header, round_number, served.size), build
            )
        finally:
            if not built:
                served.release()

    async def send_file(self, context: ServerContext, caller: str, path: Path) -> None:
        """Send a trained model from its file, mapped, under the budget."""
        file_size = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: path.stat().st_size
        )
        size = replies.trained_model_reply_size(file_size)

        def build() -> bytes:
            with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return replies.trained_model_reply(memoryview(mapped))

        await self.send(context, caller, size, build)

    def _check_not_stalled(self, caller: str, now: float) -> None:
        until = self._stalled_until.get(caller)
        if until is None:
            return
        if now >= until:
            del self._stalled_until[caller]
            return
        self._observer.limit_breached(Limit.REPLY_SEND)
        raise Unavailable(
            f"an earlier reply to {caller!r} was not read in time (server.reply_send_seconds); downloads resume "
            f"in {until - now:.0f} s"
        )
