"""``AggregatorGRPCServer``: OpenFL's aggregator service on grpc.aio, all six RPCs implemented.

The constructor, attributes and method names are those of
``openfl.transport.grpc.aggregator_server.AggregatorGRPCServer`` (OpenFL 1.7); fedagg's extras are keyword
arguments (:class:`~fedagg.server.options.ServerOptions`). Each RPC authenticates its caller
(:mod:`~fedagg.server.caller_checks`), delegates (long poll, uploads, downloads, metric streams, the federation)
and translates the answer into a reply or a status (:mod:`~fedagg.server.errors`). CPU and disk work runs in
bounded executors, so no caller stalls the event loop that answers everyone else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from fedagg.federation.errors import InvalidRequest
from fedagg.federation.federation import Federation
from fedagg.logs import in_current_context
from fedagg.protocol import aggregator_pb2
from fedagg.server.auth import Authenticator, FederationIdentity, peer_common_name
from fedagg.server.caller_checks import CallerChecks
from fedagg.server.downloads import Downloads
from fedagg.server.errors import Unimplemented, stream_errors, unary_errors
from fedagg.server.gate import CallGate
from fedagg.server.handlers import aggregator_handlers, aggregator_server
from fedagg.server.hold import LongPoll
from fedagg.server.metric_stream import MetricStreams
from fedagg.server.options import ServerOptions
from fedagg.server.quit_delivery import QuitDelivery
from fedagg.server.replies import description_reply, metric_reply, reply_header, tasks_reply
from fedagg.server.reply_budget import ReplyBudget
from fedagg.server.round_clock import RoundClock
from fedagg.server.tls import CertificateSource, TlsMode
from fedagg.server.upload_calls import UploadCalls

log = logging.getLogger(__name__)

ServerContext = grpc.aio.ServicerContext[Any, Any]


class AggregatorGRPCServer:
    """Serves a :class:`~fedagg.federation.federation.Federation` to OpenFL collaborators.

    Args:
        aggregator: the federation to serve (OpenFL passes its ``Aggregator``).
        agg_port: federation port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        use_tls: False serves plaintext (logged as a warning; for trusted networks and tests only).
        require_client_auth: mutual TLS; collaborators are identified by their certificate CN.
        root_certificate, certificate, private_key: PEM file paths (CA for clients, server chain, server key).

    Keyword args: the fields of :class:`~fedagg.server.options.ServerOptions` (each documented there). OpenFL's
    ``Plan.get_server()`` passes its ``network.settings``: those keys are accepted and ignored.
    """

    def __init__(
        self,
        aggregator: Federation,
        agg_port: int,
        use_tls: bool = True,
        require_client_auth: bool = True,
        root_certificate: str | Path | None = None,
        certificate: str | Path | None = None,
        private_key: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        self.aggregator = aggregator
        self.use_tls = use_tls
        self.require_client_auth = require_client_auth
        self.root_certificate = root_certificate
        self.certificate = certificate
        self.private_key = private_key
        self.options = options = ServerOptions.from_keywords(kwargs)
        self.bind_address = options.bind_address
        self.port = agg_port
        self.uri = f"{self.bind_address}:{agg_port}"
        self.server: grpc.aio.Server | None = None
        self.server_credentials: grpc.ServerCredentials | None = None
        self.certificate_source: CertificateSource | None = options.certificate_source
        plan = aggregator.plan
        self.mode = TlsMode.of(use_tls, require_client_auth)
        self.authenticator = Authenticator(
            FederationIdentity(
                plan.federation_uuid,
                plan.aggregator_uuid,
                frozenset(plan.collaborators),
                plan.single_col_cert_common_name,
                options.observers,
                options.replicas,
            ),
            self.mode,
        )
        observer = options.observer
        self._io_executor = ThreadPoolExecutor(options.executor_workers, thread_name_prefix="fedagg-io")
        self._commit_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedagg-commit")
        self._gate = CallGate()
        self._callers = CallerChecks(self.authenticator, aggregator, observer, options.auth_failure_max_delay)
        self._long_poll = LongPoll(aggregator, self._gate, options.tasks_hold_seconds, observer)
        self._quits = QuitDelivery(options.quit_redelivery_seconds)
        self._downloads = Downloads.for_options(options, self._io_executor)
        self._metric_streams = MetricStreams(options.caller_limits, self._gate, observer)
        self._uploads = UploadCalls(
            aggregator, self._callers, options, self._gate, self._io_executor, self._commit_executor
        )
        self._background: list[asyncio.Task[None]] = []

    @property
    def reply_budget(self) -> ReplyBudget:
        """The reply budget every download is built under."""
        return self._downloads.budget

    # OpenFL's helper methods ------------------------------------------------------------------------------
    def validate_collaborator(self, request: Any, context: ServerContext) -> None:
        """Check that the caller's certificate vouches for ``request.header.sender`` (TLS only)."""
        if self.use_tls:
            self.authenticator.validate_collaborator(request.header, peer_common_name(context))

    def get_header(self, collaborator_name: str) -> aggregator_pb2.MessageHeader:
        """The header of every reply to ``collaborator_name``."""
        return reply_header(self.aggregator.plan, collaborator_name)

    def check_request(self, request: Any) -> None:
        """Check that the request header names an authorized sender, this aggregator and its federation."""
        self.authenticator.check_request(request.header)

    # Lifecycle ------------------------------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """Whether federation calls are served (False before start and while draining)."""
        return self._gate.accepting

    def stop_accepting(self, refusal: str = "") -> None:
        """Answer new calls with UNAVAILABLE from now on (the first step of a drain); held calls are answered.
        ``refusal`` replaces the message refused calls get (a replica that lost its lease: "not the leader")."""
        self._gate.accepting = False
        self._gate.refusal = refusal or self._gate.refusal
        self._long_poll.waiters.progress()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if ``timeout`` passed first."""
        return await self._gate.wait_idle(timeout)

    def cut(self) -> None:
        """End uploads still arriving and metric streams with UNAVAILABLE (nothing half-applied)."""
        self._gate.cut()

    def get_server(self) -> grpc.aio.Server:
        """Create the grpc.aio server with the Aggregator service, bound to :attr:`uri` (call inside a loop)."""
        server = aggregator_server(self.options, aggregator_handlers(self, self.options.observer))
        address = f"{self.bind_address}:{self.port}"
        if self.mode == TlsMode.INSECURE:
            log.warning(
                "federation port %s serves PLAINTEXT: no TLS, collaborators identified by header only",
                address,
            )
            self.port = server.add_insecure_port(address)
        else:
            self.server_credentials = self._credentials()
            self.port = server.add_secure_port(address, self.server_credentials)
        self.uri = f"{self.bind_address}:{self.port}"
        self.server = server
        return server

    def _credentials(self) -> grpc.ServerCredentials:
        if self.certificate_source is None:
            self.certificate_source = CertificateSource.from_paths(
                self.certificate, self.private_key, self.root_certificate, self.require_client_auth
            )
        return self.certificate_source.credentials()

    async def start(self) -> None:
        """Bind and start serving."""
        server = self.server or self.get_server()
        await server.start()
        self._gate.accepting = True
        self.aggregator.on_progress(self._long_poll.waiters.progress_from_thread(asyncio.get_running_loop()))
        self._quits.start(self.aggregator.quit_jobs_recorded, self.aggregator.all_quit_jobs_sent)
        clock = RoundClock(self.aggregator, self._commit_executor, self.options.observer.background_failed)
        self._background.append(asyncio.create_task(clock.run()))
        log.info("federation listening: federation=%s (%s)", self.uri, self.mode.value)

    async def wait_for_quit_jobs(self) -> None:
        """Return once every collaborator has received its quit job."""
        await self._quits.wait()

    async def stop(self, grace: float | None) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds to finish. Waits for commits under way."""
        self.stop_accepting()
        await self._quits.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self.server is not None:
            await self.server.stop(grace)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._io_executor.shutdown, cancel_futures=True))
        await loop.run_in_executor(None, self._commit_executor.shutdown)

    def serve(self) -> None:
        """Serve until every collaborator has been told to quit, then stop (OpenFL's blocking ``serve``)."""

        async def run() -> None:
            await self.start()
            try:
                await self.wait_for_quit_jobs()
            finally:
                await self.stop(grace=5)

        asyncio.run(run())

    # The six RPCs ---------------------------------------------------------------------------------------------
    @unary_errors
    async def GetTasks(self, request: aggregator_pb2.GetTasksRequest, context: ServerContext) -> Message:
        """Hand out the collaborator's tasks for the current round, or a sleep, or quit."""
        async with self._gate.call():
            collaborator = await self._callers.collaborator(request.header, context)
            reply = await self._long_poll.tasks(collaborator)
            if reply.quit and not reply.quit_recorded:
                record = in_current_context(self.aggregator.record_quit, collaborator)
                await asyncio.get_running_loop().run_in_executor(self._commit_executor, record)
            if reply.quit:
                self._quits.answered(collaborator, self.aggregator.all_quit_jobs_sent)
            return tasks_reply(self.get_header(collaborator), reply)

    @unary_errors
    async def GetAggregatedTensor(
        self, request: aggregator_pb2.GetAggregatedTensorRequest, context: ServerContext
    ) -> None:
        """A global model tensor (``model`` form), its change since the last round (``delta``), or own results."""
        async with self._gate.call():
            collaborator = await self._callers.collaborator(request.header, context)
            serve = functools.partial(self.aggregator.served_tensor, requester=collaborator)
            header = self.get_header(collaborator)
            await self._downloads.answer_tensor_request(context, collaborator, header, request, serve)

    @unary_errors
    async def SendLocalTaskResults(
        self, request_iterator: AsyncIterator[bytes], context: ServerContext
    ) -> Message:
        """Receive a collaborator's task results as a stream of chunks; acknowledge once they are durable."""
        async with self._gate.call():
            collaborator = await self._uploads.receive(request_iterator, context)
            return aggregator_pb2.SendLocalTaskResultsResponse(header=self.get_header(collaborator))

    @stream_errors
    async def GetMetricStream(
        self, request: aggregator_pb2.GetMetricStreamRequest, context: ServerContext
    ) -> AsyncIterator[Message]:
        """Every metric so far, then live ones as they arrive; ends when the experiment has finished."""
        self._gate.check_accepting()
        caller = await self._callers.observer(request.experiment_name, context)
        async for record in self._metric_streams.records(caller, self.aggregator.metrics):
            yield metric_reply(record)

    @unary_errors
    async def GetTrainedModel(
        self, request: aggregator_pb2.GetTrainedModelRequest, context: ServerContext
    ) -> None:
        """The best or last model as an OpenFL ModelProto with its real round number."""
        async with self._gate.call():
            caller = await self._callers.observer(request.experiment_name, context)
            kinds = aggregator_pb2.GetTrainedModelRequest
            if request.model_type not in (kinds.BEST_MODEL, kinds.LAST_MODEL):
                raise InvalidRequest(
                    f"GetTrainedModelRequest.model_type {request.model_type} is not BEST_MODEL (0) or LAST_MODEL (1)"
                )
            path = self.aggregator.trained_model(best=request.model_type == kinds.BEST_MODEL)
            await self._downloads.send_file(context, caller, path)

    @unary_errors
    async def GetExperimentDescription(
        self, request: aggregator_pb2.GetExperimentDescriptionRequest, context: ServerContext
    ) -> Message:
        """Status, progress, per-collaborator round and tasks, and model availability."""
        async with self._gate.call():
            await self._callers.observer(request.name, context)
            return description_reply(self.aggregator.describe())

    @unary_errors
    async def Ping(self, request: aggregator_pb2.PingRequest, context: ServerContext) -> Message:
        """OpenFL 1.9's ``fx collaborator ping``: authenticated like GetTasks, answered with the header, no state change."""
        async with self._gate.call():
            collaborator = await self._callers.collaborator(request.header, context)
            return aggregator_pb2.PingResponse(header=self.get_header(collaborator))

    @unary_errors
    async def InteropRelay(self, request: aggregator_pb2.InteropMessage, context: ServerContext) -> Message:
        """OpenFL 1.8/1.9's Flower interop relay: not supported."""
        raise Unimplemented(
            "fedagg does not support Flower interop (OpenFL's connector / interop_mode); "
            "run the federation with OpenFL's task runners"
        )
