"""An ingest replica's federation port: OpenFL's Aggregator service for the collaborators, over their mTLS.

The port terminates the collaborators' mutual TLS with the federation's CA and server certificate, exactly like a
standalone fedagg, and authenticates every caller the same way (:class:`~fedagg.server.caller_checks.CallerChecks`:
certificate CN against ``header.sender``, plan collaborators and observers). Then:

* GetTasks, Ping, InteropRelay, GetExperimentDescription, GetTrainedModel and GetMetricStream are relayed to the
  root as bytes (:mod:`fedagg.tier.forwarding`); tasks of a round the root opened a moment before this replica
  did are held until the replica serves that round (at most ``ROUND_WAIT_SECONDS``, then UNAVAILABLE, retried),
  and so is a download of such a round: a collaborator never gets a model the replica does not have yet;
* GetAggregatedTensor is answered here from the round's model (a :class:`~fedagg.federation.serving.TensorServer`
  fed by :mod:`fedagg.tier.round_watch`), through the standalone server's downloads, so its replies are the same
  bytes; a collaborator's own results of the round (asked for by a restarted OpenFL 1.8/1.9 collaborator) are
  served from this replica's spool when it holds them (:mod:`fedagg.tier.own_results_holder`), else relayed
  through the root from the replica that does (:mod:`fedagg.tier.own_results_relay`): the same bytes either way,
  only to that collaborator;
* SendLocalTaskResults is received here (:mod:`fedagg.server.upload_calls` into
  :class:`~fedagg.tier.ingest_uploads.IngestUploads`).

Event-loop object: the gate, downloads and upload slots are used on the loop only; the executors are the owner's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from fedagg.federation.contacts import ContactBook
from fedagg.federation.errors import (
    FailedPrecondition,
    FederationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from fedagg.federation.plan import FederationPlan
from fedagg.federation.serving import TensorRequest, TensorServer, tensor_owner
from fedagg.protocol import aggregator_pb2, tier_pb2
from fedagg.server import replies
from fedagg.server.auth import Authenticator, FederationIdentity
from fedagg.server.caller_checks import CallerChecks
from fedagg.server.downloads import Downloads, requested_tensor
from fedagg.server.errors import Unavailable, stream_errors, unary_errors
from fedagg.server.gate import CallGate
from fedagg.server.handlers import aggregator_handlers, aggregator_server
from fedagg.server.options import ServerOptions
from fedagg.server.replies import reply_header
from fedagg.server.tls import CertificateSource, TlsMode
from fedagg.server.upload_calls import UploadCalls
from fedagg.tier.forwarding import RootForwarder
from fedagg.tier.ingest_uploads import IngestUploads
from fedagg.tier.own_results_holder import HeldResults
from fedagg.tier.root_link import RootUnreachable, TierRefusal

log = logging.getLogger(__name__)

ServerContext = grpc.aio.ServicerContext[Any, Any]
Reached = Callable[[int, float], Awaitable[bool]]
"""(round, timeout) -> whether this replica serves the round (or a later one, or the end) within the timeout."""
ROUND_WAIT_SECONDS = 10.0
"""How long a call about a round the root opened waits for this replica to open it too (then UNAVAILABLE)."""
RELAYED = frozenset(
    {"GetTasks", "Ping", "InteropRelay", "GetExperimentDescription", "GetTrainedModel", "GetMetricStream"}
)
"""The RPCs the replica relays to its root (their requests arrive as bytes)."""
Relay = Callable[[tier_pb2.OwnResultsRequest], Awaitable[bytearray]]
"""A collaborator's own results through the root: the serialized NamedTensor (raises as RootLink does)."""
RELAYED_REFUSALS: dict[grpc.StatusCode, type[FederationError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}
"""The root's (or the holder's) refusals of a relay that reach the collaborator as they are; others: UNAVAILABLE."""


def parsed(message: type[Message], data: bytes) -> Any:
    """``data`` parsed as ``message`` (INVALID_ARGUMENT when it is not one)."""
    try:
        return message.FromString(data)
    except DecodeError as error:
        raise InvalidRequest(f"the request is not a valid {message.__name__}: {error}") from None


class IngestServer:
    """The collaborator-facing server of an ingest replica (module docstring)."""

    def __init__(
        self,
        plan: FederationPlan,
        uploads: IngestUploads,
        tensors: TensorServer,
        forwarder: RootForwarder,
        reached: Reached,
        certificate_source: CertificateSource,
        port: int,
        options: ServerOptions,
        io_executor: Executor,
        commit_executor: Executor,
        held: HeldResults,
        relay: Relay,
    ) -> None:
        self.plan = plan
        self.port = port
        self._tensors = tensors
        self._forwarder = forwarder
        self._reached = reached
        self._certificates = certificate_source
        self._options = options
        self._io = io_executor
        self._ingest = uploads
        self._held = held
        self._relay = relay
        self._contacts = ContactBook()
        identity = FederationIdentity(
            plan.federation_uuid,
            plan.aggregator_uuid,
            frozenset(plan.collaborators),
            plan.single_col_cert_common_name,
            options.observers,
        )
        self._callers = CallerChecks(
            Authenticator(identity, TlsMode.MUTUAL), self, options.observer, options.auth_failure_max_delay
        )
        self._gate = CallGate()
        self._downloads = Downloads.for_options(options, io_executor)
        self._uploads = UploadCalls(uploads, self._callers, options, self._gate, io_executor, commit_executor)
        self.server: grpc.aio.Server | None = None

    # CallerRegister --------------------------------------------------------------------------------------------
    def contact_started(self, collaborator: str) -> None:
        """An authenticated call of ``collaborator`` began."""
        self._contacts.started(collaborator)

    def contact_ended(self, collaborator: str) -> None:
        """That call ended."""
        self._contacts.ended(collaborator)

    # Lifecycle ---------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind (``port`` 0 picks a free one: see :attr:`port`) and serve."""
        server = aggregator_server(self._options, aggregator_handlers(self, self._options.observer, RELAYED))
        address = f"{self._options.bind_address}:{self.port}"
        self.port = server.add_secure_port(address, self._certificates.credentials())
        self.server = server
        await server.start()
        self._gate.accepting = True
        log.info(
            "federation listening: federation=%s:%d (an ingest replica: tasks, models and metrics from the root)",
            self._options.bind_address,
            self.port,
        )

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, then stop; calls in flight get ``grace`` seconds."""
        self._gate.accepting = False
        if self.server is not None:
            await self.server.stop(grace)

    # Relayed to the root -------------------------------------------------------------------------------------------
    async def _relay_collaborator_call(
        self, method: str, message: type[Message], request: bytes, context: ServerContext
    ) -> bytes:
        async with self._gate.call():
            collaborator = await self._callers.collaborator(parsed(message, request).header, context)
            return await self._forwarder.unary(method, request, context, collaborator)

    @unary_errors
    async def GetTasks(self, request: bytes, context: ServerContext) -> bytes:
        """The root's tasks for the collaborator (its long poll is held at the root), once this replica serves
        their round."""
        async with self._gate.call():
            header = parsed(aggregator_pb2.GetTasksRequest, request).header
            collaborator = await self._callers.collaborator(header, context)
            reply = await self._forwarder.unary("GetTasks", request, context, collaborator)
            tasks = parsed(aggregator_pb2.GetTasksResponse, reply)
            if tasks.tasks:
                await self._round_served(tasks.round_number)
            return reply

    @unary_errors
    async def Ping(self, request: bytes, context: ServerContext) -> bytes:
        """OpenFL 1.9's ping, answered by the root."""
        return await self._relay_collaborator_call("Ping", aggregator_pb2.PingRequest, request, context)

    @unary_errors
    async def InteropRelay(self, request: bytes, context: ServerContext) -> bytes:
        """Flower interop, answered by the root (which does not support it)."""
        return await self._relay_collaborator_call(
            "InteropRelay", aggregator_pb2.InteropMessage, request, context
        )

    @unary_errors
    async def GetExperimentDescription(self, request: bytes, context: ServerContext) -> bytes:
        """The root's experiment status."""
        async with self._gate.call():
            name = parsed(aggregator_pb2.GetExperimentDescriptionRequest, request).name
            caller = await self._callers.observer(name, context)
            return await self._forwarder.unary("GetExperimentDescription", request, context, caller)

    @stream_errors
    async def GetTrainedModel(self, request: bytes, context: ServerContext) -> AsyncIterator[bytes]:
        """The root's best or last model."""
        async with self._gate.call():
            name = parsed(aggregator_pb2.GetTrainedModelRequest, request).experiment_name
            caller = await self._callers.observer(name, context)
            async for reply in self._forwarder.stream("GetTrainedModel", request, context, caller):
                yield reply

    @stream_errors
    async def GetMetricStream(self, request: bytes, context: ServerContext) -> AsyncIterator[bytes]:
        """The root's metric stream, relayed as it arrives."""
        self._gate.check_accepting()
        name = parsed(aggregator_pb2.GetMetricStreamRequest, request).experiment_name
        caller = await self._callers.observer(name, context)
        async for reply in self._forwarder.stream("GetMetricStream", request, context, caller):
            yield reply

    # Answered here ------------------------------------------------------------------------------------------------
    @unary_errors
    async def GetAggregatedTensor(
        self, request: aggregator_pb2.GetAggregatedTensorRequest, context: ServerContext
    ) -> None:
        """A tensor of the round's model (``model`` form) or its change since the last round (``delta``)."""
        async with self._gate.call():
            collaborator = await self._callers.collaborator(request.header, context)
            await self._round_served(request.round_number)
            header = reply_header(self.plan, collaborator)
            tensor = requested_tensor(request)
            owner = tensor_owner(tensor, self.plan.collaborators)
            if owner is None:
                serve = self._tensors.served
                await self._downloads.answer_tensor_request(context, collaborator, header, request, serve)
            else:
                await self._own_results(context, collaborator, header, tensor, owner)

    async def _round_served(self, round_number: int) -> None:
        """Wait (a little) until this replica serves ``round_number``; UNAVAILABLE (retried) if it does not."""
        if not await self._reached(round_number, ROUND_WAIT_SECONDS):
            raise Unavailable(
                f"this ingest replica does not serve round {round_number} yet (it follows the root's round); "
                "ask again"
            )

    async def _own_results(
        self,
        context: ServerContext,
        collaborator: str,
        header: aggregator_pb2.MessageHeader,
        request: TensorRequest,
        owner: str,
    ) -> None:
        """``owner``'s own results (only ``owner`` may ask): from this replica's spool when it holds them, else
        through the root from the replica that does (for the current round only)."""
        loop = asyncio.get_running_loop()
        number = request.round_number
        try:
            served = await loop.run_in_executor(self._io, self._held.served, request, owner, collaborator)
        except NotFound:
            current = self._ingest.round
            if current is None or current.number != number:
                raise
            answer = await self._relayed(request, owner)
            size = replies.tensor_reply_size(header, number, len(answer))
            await self._downloads.send(
                context,
                collaborator,
                size,
                lambda: replies.tensor_reply(header, number, [memoryview(answer)]),
            )
            return
        await self._downloads.send_tensor(context, collaborator, header, number, served)

    async def _relayed(self, request: TensorRequest, owner: str) -> bytearray:
        """``owner``'s tensor from the replica holding it, through the root."""
        asked = tier_pb2.OwnResultsRequest(
            collaborator=owner,
            round=request.round_number,
            tensor_name=request.name,
            tags=request.tags,
            report=request.report,
            require_lossless=request.require_lossless,
        )
        try:
            return await self._relay(asked)
        except RootUnreachable as error:
            raise Unavailable(
                f"the root did not relay {owner}'s results from the ingest replica holding them ({error}); "
                "ask again"
            ) from None
        except TierRefusal as refusal:
            message = str(refusal).split(": ", 1)[-1]
            refused = RELAYED_REFUSALS.get(refusal.code)
            if refused is None:
                raise Unavailable(
                    f"{owner}'s results could not be relayed through the root: {refusal}"
                ) from None
            raise refused(message) from None

    @unary_errors
    async def SendLocalTaskResults(
        self, request_iterator: AsyncIterator[bytes], context: ServerContext
    ) -> Message:
        """Receive task results: checked and spooled here, claimed at the root, acknowledged once granted."""
        async with self._gate.call():
            collaborator = await self._uploads.receive(request_iterator, context)
            return aggregator_pb2.SendLocalTaskResultsResponse(header=reply_header(self.plan, collaborator))
