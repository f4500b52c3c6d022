"""``AggregatorGRPCServer``: OpenFL's aggregator service on grpc.aio, all six RPCs implemented.

The constructor, attributes and method names are those of
``openfl.transport.grpc.aggregator_server.AggregatorGRPCServer`` (OpenFL 1.7); fedagg's extras are keyword
arguments. Handlers are thin: authenticate, translate protos to federation calls, translate results and errors
to replies and statuses. CPU and disk work runs in bounded executors so one large upload never stalls the
event loop that answers everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message

from fedagg.federation.errors import InvalidRequest, NotFound
from fedagg.federation.federation import Federation, TaskReply
from fedagg.federation.metric_log import MetricRecord
from fedagg.federation.serving import TensorRequest
from fedagg.logs import in_current_context, set_log_context
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.extensions import CONTRIBUTION_METADATA
from fedagg.protocol.stream import DecodeLimits
from fedagg.protocol.wire import datastream_payload
from fedagg.server.auth import (
    Authenticator,
    FederationIdentity,
    IdentityError,
    metadata_client_id,
    peer_common_name,
)
from fedagg.server.errors import Unimplemented, stream_errors, unary_errors
from fedagg.server.gate import CallGate
from fedagg.server.hold import TaskWaiters
from fedagg.server.quit_delivery import QuitDelivery
from fedagg.server.refusals import RefusalLog
from fedagg.server.replies import (
    description_reply,
    metric_reply,
    tasks_reply,
    tensor_reply,
    trained_model_reply,
)
from fedagg.server.reply_budget import ReplyBudget
from fedagg.server.round_clock import RoundClock
from fedagg.server.tls import CertificateFiles, CertificateSource, TlsMode
from fedagg.server.upload import UploadReceiver

log = logging.getLogger(__name__)

SERVICE_NAME = "openfl.aggregator.Aggregator"
MAX_SEND_MESSAGE_BYTES = 2**31 - 1
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_STREAM_WINDOW_BYTES = 4 * 1024 * 1024
DEFAULT_REPLY_BYTES_IN_FLIGHT = 32 * 1024 * 1024
DEFAULT_MAX_CONNECTION_AGE = 900.0
DEFAULT_TASKS_HOLD_SECONDS = 60.0
DEFAULT_QUIT_REDELIVERY_SECONDS = 120.0
HELD_SLEEP_SECONDS = 1
DEFAULT_MAX_CONNECTION_AGE_GRACE = 600.0

ServerContext = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class ReceiveLimits:
    """What an upload may make the server hold in memory (everything else streams to disk)."""

    header_bytes: int = 64 * 1024
    """Bytes before the first tensor: all that is held before the sender is authenticated."""
    field_bytes: int = 16 * 1024
    tags_per_tensor: int = 32
    descriptor_bytes: int = 4 << 20
    """All names, tags and shapes of one upload."""

    def decode_limits(self) -> DecodeLimits:
        """The decoder's view of these limits."""
        return DecodeLimits(self.field_bytes, self.tags_per_tensor, 8, self.descriptor_bytes)


def when_done(context: ServerContext, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the event loop when the call ends (answered, cancelled or failed)."""
    context.add_done_callback(cast("grpc.aio.DoneCallback[Any, Any]", lambda _context: callback()))


def _serialize(reply: Message | bytes) -> bytes:
    """Replies are messages, or bytes already serialized (tensors encoded once and shared)."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


class ServerObserver:
    """What the server reports to operations (metrics). The default ignores everything."""

    def auth_failed(self, reason: str) -> None:
        """A caller was refused; ``reason`` is a short label."""

    def bytes_received(self, count: int) -> None:
        """A request message of ``count`` bytes arrived."""

    def bytes_sent(self, count: int) -> None:
        """A reply message of ``count`` bytes was serialized."""

    def background_failed(self, task: str) -> None:
        """A background task (``round_clock``) raised; it keeps running."""

    def tasks_held(self, change: int) -> None:
        """The number of held GetTasks calls changed by ``change``."""

    def tasks_hold_ended(self, seconds: float) -> None:
        """A held GetTasks call was answered after ``seconds``."""

    def replies_in_flight(self, size: int, waiting: int) -> None:
        """Tensor replies now hold ``size`` bytes, and ``waiting`` more wait for the reply budget."""


class AggregatorGRPCServer:
    """Serves a :class:`~fedagg.federation.federation.Federation` to OpenFL collaborators.

    Args:
        aggregator: the federation to serve (OpenFL passes its ``Aggregator``).
        agg_port: federation port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        use_tls: False serves plaintext (logged as a warning; for trusted networks and tests only).
        require_client_auth: mutual TLS; collaborators are identified by their certificate CN.
        root_certificate, certificate, private_key: PEM file paths (CA for clients, server chain, server key).

    Keyword args:
        bind_address: host to listen on (default ``[::]``, every interface, IPv4 and IPv6).
        observers: certificate CNs (besides collaborators) that may read metrics, models and status.
        auth_failure_max_delay: upper bound of the random delay before an UNAUTHENTICATED answer.
        executor_workers: threads for disk and encoding work.
        certificate_source: a ready :class:`CertificateSource` (overrides the three file arguments).
        interceptors: grpc.aio server interceptors (metrics).
        extra_services: callables ``(server) -> service names`` that register more services (health).
        observer: a :class:`ServerObserver` told about refused callers and bytes on the wire.
        max_receive_message_bytes: largest incoming message (uploads arrive in chunks of 2 MiB).
        receive_limits: a :class:`ReceiveLimits`, what an upload may make the server hold in memory.
        stream_window_bytes: HTTP/2 flow-control window of each stream, fixed: what gRPC buffers of one upload
            (throughput per stream is at most this per round trip); 0 lets gRPC size it from the measured
            bandwidth-delay product, which can grow to many MiB per upload on fast links.
        reply_bytes_in_flight: bytes of tensor replies built and not yet delivered, at most (a
            :class:`~fedagg.server.reply_budget.ReplyBudget`; gRPC holds a second copy of each); 0 = unbounded.
        max_connection_age: seconds after which a connection is closed (GOAWAY) and its client reconnects,
            so certificate rotation and revocation reach long-lived clients; 0 keeps connections forever.
        max_connection_age_grace: seconds calls in flight on a closing connection get to finish.
        tasks_hold_seconds: how long a GetTasks that would answer "sleep" is held until there is work
            (long poll, :mod:`fedagg.server.hold`); 0 answers "sleep" at once, as OpenFL does.
        quit_redelivery_seconds: how long quit jobs recorded before a restart are answered again before the
            server may stop (:mod:`fedagg.server.quit_delivery`).
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
        self.bind_address: str = kwargs.pop("bind_address", "[::]")
        self.port = agg_port
        self.uri = f"{self.bind_address}:{agg_port}"
        self.server: grpc.aio.Server | None = None
        self.server_credentials: grpc.ServerCredentials | None = None
        self.certificate_source: CertificateSource | None = kwargs.pop("certificate_source", None)
        self._auth_failure_max_delay: float = kwargs.pop("auth_failure_max_delay", 2.0)
        self._interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = kwargs.pop("interceptors", ())
        self._extra_services: Iterable[Callable[[grpc.aio.Server], Iterable[str]]] = kwargs.pop(
            "extra_services", ()
        )
        self._observer: ServerObserver = kwargs.pop("observer", None) or ServerObserver()
        self._max_receive = int(kwargs.pop("max_receive_message_bytes", DEFAULT_MAX_RECEIVE_MESSAGE_BYTES))
        self._stream_window = int(kwargs.pop("stream_window_bytes", DEFAULT_STREAM_WINDOW_BYTES))
        self.reply_budget = ReplyBudget(
            int(kwargs.pop("reply_bytes_in_flight", DEFAULT_REPLY_BYTES_IN_FLIGHT)),
            self._observer.replies_in_flight,
        )
        self._receive_limits: ReceiveLimits = kwargs.pop("receive_limits", None) or ReceiveLimits()
        self._hold_seconds: float = kwargs.pop("tasks_hold_seconds", DEFAULT_TASKS_HOLD_SECONDS)
        self._quits = QuitDelivery(kwargs.pop("quit_redelivery_seconds", DEFAULT_QUIT_REDELIVERY_SECONDS))
        self._max_connection_age: float = kwargs.pop("max_connection_age", DEFAULT_MAX_CONNECTION_AGE)
        self._max_connection_age_grace: float = kwargs.pop(
            "max_connection_age_grace", DEFAULT_MAX_CONNECTION_AGE_GRACE
        )
        workers = int(kwargs.pop("executor_workers", 4))
        observers = frozenset(kwargs.pop("observers", ()))
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        plan = aggregator.plan
        self.mode = (
            TlsMode.INSECURE
            if not use_tls
            else TlsMode.MUTUAL
            if require_client_auth
            else TlsMode.SERVER_ONLY
        )
        self.authenticator = Authenticator(
            FederationIdentity(
                plan.federation_uuid,
                plan.aggregator_uuid,
                frozenset(plan.collaborators),
                plan.single_col_cert_common_name,
                observers,
            ),
            self.mode,
        )
        self._io_executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedagg-io")
        self._commit_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedagg-commit")
        self._gate = CallGate()
        self._waiters = TaskWaiters()
        self._refusals = RefusalLog()
        self._background: list[asyncio.Task[None]] = []

    # OpenFL's helper methods ------------------------------------------------------------------------------

    def validate_collaborator(self, request: Any, context: ServerContext) -> None:
        """Check that the caller's certificate vouches for ``request.header.sender`` (TLS only)."""
        if self.use_tls:
            self.authenticator.validate_collaborator(request.header, peer_common_name(context))

    def get_header(self, collaborator_name: str) -> aggregator_pb2.MessageHeader:
        """The header of every reply to ``collaborator_name``."""
        plan = self.aggregator.plan
        return aggregator_pb2.MessageHeader(
            sender=plan.aggregator_uuid,
            receiver=collaborator_name,
            federation_uuid=plan.federation_uuid,
            single_col_cert_common_name=plan.single_col_cert_common_name,
        )

    def check_request(self, request: Any) -> None:
        """Check that the request header names an authorized sender, this aggregator and its federation."""
        self.authenticator.check_request(request.header)

    # Lifecycle ------------------------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether federation calls are served (False before start and while draining)."""
        return self._gate.accepting

    def stop_accepting(self) -> None:
        """Answer new calls with UNAVAILABLE from now on (the first step of a drain); held calls are answered."""
        self._gate.accepting = False
        self._waiters.progress()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if ``timeout`` passed first."""
        return await self._gate.wait_idle(timeout)

    def cut(self) -> None:
        """End uploads still arriving and metric streams with UNAVAILABLE (nothing half-applied)."""
        self._gate.cut()

    def get_server(self) -> grpc.aio.Server:
        """Create the grpc.aio server with the Aggregator service, bound to :attr:`uri` (call inside a loop)."""
        options = [
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", self._max_receive),
            ("grpc.max_metadata_size", 32 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        if (
            self._stream_window > 0
        ):  # a fixed window bounds what gRPC buffers per upload (BDP growth does not)
            options += [
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", self._stream_window),
            ]
        if (
            self._max_connection_age > 0
        ):  # OpenFL 1.8/1.9 keep one connection: rotations reach it on reconnect
            options += [
                ("grpc.max_connection_age_ms", int(self._max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self._max_connection_age_grace * 1000)),
            ]
        server = grpc.aio.server(interceptors=list(self._interceptors), options=options)
        server.add_generic_rpc_handlers((self._handlers(),))
        for register in self._extra_services:
            register(server)
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
            if self.certificate is None or self.private_key is None:
                raise ValueError("TLS needs certificate and private_key (or use_tls=False)")
            if self.require_client_auth and self.root_certificate is None:
                raise ValueError(
                    "mutual TLS needs root_certificate, the CA that signs collaborator certificates"
                )
            files = CertificateFiles(
                Path(self.certificate),
                Path(self.private_key),
                Path(self.root_certificate) if self.root_certificate else None,
            )
            self.certificate_source = CertificateSource(files, self.require_client_auth)
        return self.certificate_source.credentials()

    async def start(self) -> None:
        """Bind and start serving."""
        server = self.server or self.get_server()
        await server.start()
        self._gate.accepting = True
        self.aggregator.on_progress(self._waiters.progress_from_thread(asyncio.get_running_loop()))
        self._quits.start(self.aggregator.quit_jobs_recorded, self.aggregator.all_quit_jobs_sent)
        clock = RoundClock(self.aggregator, self._commit_executor, self._observer.background_failed)
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

    # Calls ----------------------------------------------------------------------------------------------------

    async def _authenticate(self, header: aggregator_pb2.MessageHeader, context: ServerContext) -> str:
        try:
            collaborator = self.authenticator.authenticate(header, peer_common_name(context))
        except IdentityError as error:
            await self._refuse(error, context, header.sender)
            raise
        set_log_context(collaborator=collaborator)
        self.aggregator.contact_started(collaborator)
        when_done(context, functools.partial(self.aggregator.contact_ended, collaborator))
        return collaborator

    async def _check_uploader(self, context: ServerContext) -> None:
        try:
            self.authenticator.check_peer(peer_common_name(context))
        except IdentityError as error:
            await self._refuse(error, context)
            raise

    async def _refuse(self, error: IdentityError, context: ServerContext, sender: str = "") -> None:
        """Count, log (rate-limited per caller) and delay a refusal; the caller then gets UNAUTHENTICATED."""
        self._observer.auth_failed(error.reason)
        caller = peer_common_name(context) or sender or context.peer()
        self._refusals.refused(caller, error.reason, str(error))
        if self._auth_failure_max_delay > 0:
            await asyncio.sleep(random.uniform(0, self._auth_failure_max_delay))

    async def _authorize_observer(self, experiment_name: str, context: ServerContext) -> str:
        try:
            caller = self.authenticator.authorize_observer(
                peer_common_name(context), metadata_client_id(context)
            )
        except IdentityError as error:
            await self._refuse(error, context)
            raise
        plan = self.aggregator.plan
        if experiment_name not in ("", plan.name):
            raise NotFound(
                f"experiment {experiment_name!r} is not served here; this aggregator serves {plan.name!r}"
            )
        return caller

    # The six RPCs ---------------------------------------------------------------------------------------------

    @unary_errors
    async def GetTasks(self, request: aggregator_pb2.GetTasksRequest, context: ServerContext) -> Message:
        """Hand out the collaborator's tasks for the current round, or a sleep, or quit."""
        async with self._gate.call():
            collaborator = await self._authenticate(request.header, context)
            token = self._waiters.token()
            reply = self.aggregator.get_tasks(collaborator)
            if reply.sleep_seconds and self._hold_seconds > 0:
                reply = await self._hold(collaborator, reply, token)
            if reply.quit and not reply.quit_recorded:
                record = in_current_context(self.aggregator.record_quit, collaborator)
                await asyncio.get_running_loop().run_in_executor(self._commit_executor, record)
            if reply.quit:
                self._quits.answered(collaborator, self.aggregator.all_quit_jobs_sent)
            return tasks_reply(self.get_header(collaborator), reply)

    async def _hold(self, collaborator: str, reply: TaskReply, token: asyncio.Event) -> TaskReply:
        """Hold an idle collaborator's GetTasks until it has work, the hold time passes, or a drain begins."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._hold_seconds
        self._observer.tasks_held(1)
        try:
            while reply.sleep_seconds and self._gate.accepting:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return replace(reply, sleep_seconds=HELD_SLEEP_SECONDS)  # ask again soon: held again
                await self._waiters.wait(token, remaining)
                token = self._waiters.token()
                reply = self.aggregator.get_tasks(collaborator)
            return reply
        finally:
            self._observer.tasks_held(-1)
            self._observer.tasks_hold_ended(loop.time() - started)

    @unary_errors
    async def GetAggregatedTensor(
        self, request: aggregator_pb2.GetAggregatedTensorRequest, context: ServerContext
    ) -> bytes:
        """Serve a global model tensor (``model`` form) or its change since the last round (``delta`` form)."""
        async with self._gate.call():
            collaborator = await self._authenticate(request.header, context)
            set_log_context(round_number=request.round_number)
            tensor_request = TensorRequest(
                request.tensor_name,
                request.round_number,
                request.report,
                tuple(request.tags),
                request.require_lossless,
            )
            header = self.get_header(collaborator)
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(
                self._io_executor, self.aggregator.served_tensor, tensor_request, collaborator
            )
            size = served.size
            try:
                await self.reply_budget.acquire(size)
            except BaseException:
                served.release()
                raise

            def build() -> bytes:
                try:
                    return tensor_reply(header, request.round_number, served.parts())
                finally:
                    served.release()

            try:
                reply = await loop.run_in_executor(self._io_executor, build)
            except BaseException:
                self.reply_budget.release(size)
                raise
            when_done(context, functools.partial(self.reply_budget.release, size))  # once gRPC has sent it
            return reply

    @unary_errors
    async def SendLocalTaskResults(
        self, request_iterator: AsyncIterator[bytes], context: ServerContext
    ) -> Message:
        """Receive a collaborator's task results as a stream of chunks; acknowledge once they are durable."""
        async with self._gate.call():
            await self._check_uploader(context)

            async def authenticate(header: aggregator_pb2.MessageHeader) -> str:
                return await self._authenticate(header, context)

            limits = self._receive_limits
            receiver = UploadReceiver(
                self.aggregator,
                authenticate,
                self._io_executor,
                self._commit_executor,
                header_bytes=limits.header_bytes,
                decode_limits=limits.decode_limits(),
            )
            outcome = await receiver.receive(self._payloads_until_cut(request_iterator))
            if outcome.rejected is not None:
                context.set_trailing_metadata(((CONTRIBUTION_METADATA, f"rejected:{outcome.rejected}"),))
            elif not outcome.admission.accepted:
                context.set_trailing_metadata(
                    ((CONTRIBUTION_METADATA, f"ignored:{outcome.admission.ignored}"),)
                )
            return aggregator_pb2.SendLocalTaskResultsResponse(header=self.get_header(receiver.collaborator))

    async def _payloads_until_cut(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[memoryview]:
        iterator = aiter(chunks)
        while True:
            try:
                message = await self._gate.until_cut(anext(iterator))
            except StopAsyncIteration:
                return
            yield datastream_payload(message)

    @stream_errors
    async def GetMetricStream(
        self, request: aggregator_pb2.GetMetricStreamRequest, context: ServerContext
    ) -> AsyncIterator[Message]:
        """Every metric so far, then live ones as they arrive; ends when the experiment has finished."""
        self._gate.check_accepting()
        await self._authorize_observer(request.experiment_name, context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[MetricRecord | None] = asyncio.Queue()

        def deliver(record: MetricRecord | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the stream is gone
                loop.call_soon_threadsafe(queue.put_nowait, record)

        history, closed, unsubscribe = self.aggregator.metrics.subscribe(deliver)
        try:
            for record in history:
                yield metric_reply(record)
            if closed:
                return
            while (live := await self._gate.until_cut(queue.get())) is not None:
                yield metric_reply(live)
        finally:
            unsubscribe()

    @unary_errors
    async def GetTrainedModel(
        self, request: aggregator_pb2.GetTrainedModelRequest, context: ServerContext
    ) -> bytes:
        """The best or last model as an OpenFL ModelProto with its real round number."""
        async with self._gate.call():
            await self._authorize_observer(request.experiment_name, context)
            kinds = aggregator_pb2.GetTrainedModelRequest
            if request.model_type not in (kinds.BEST_MODEL, kinds.LAST_MODEL):
                raise InvalidRequest(
                    f"GetTrainedModelRequest.model_type {request.model_type} is not BEST_MODEL (0) or LAST_MODEL (1)"
                )
            best = request.model_type == kinds.BEST_MODEL

            def build() -> bytes:
                return trained_model_reply(self.aggregator.trained_model(best=best).read_bytes())

            return await asyncio.get_running_loop().run_in_executor(self._io_executor, build)

    @unary_errors
    async def GetExperimentDescription(
        self, request: aggregator_pb2.GetExperimentDescriptionRequest, context: ServerContext
    ) -> Message:
        """Status, progress, per-collaborator round and tasks, and model availability."""
        async with self._gate.call():
            await self._authorize_observer(request.name, context)
            return description_reply(self.aggregator.describe())

    @unary_errors
    async def Ping(self, request: aggregator_pb2.PingRequest, context: ServerContext) -> Message:
        """OpenFL 1.9's ``fx collaborator ping``: authenticated like GetTasks, answered with the header, no state change."""
        async with self._gate.call():
            collaborator = await self._authenticate(request.header, context)
            return aggregator_pb2.PingResponse(header=self.get_header(collaborator))

    @unary_errors
    async def InteropRelay(self, request: aggregator_pb2.InteropMessage, context: ServerContext) -> Message:
        """OpenFL 1.8/1.9's Flower interop relay: not supported."""
        raise Unimplemented(
            "fedagg does not support Flower interop (OpenFL's connector / interop_mode); "
            "run the federation with OpenFL's task runners"
        )

    def _handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        messages = aggregator_pb2
        methods: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[[bytes], Any]]] = {
            "GetTasks": (
                grpc.unary_unary_rpc_method_handler,
                self.GetTasks,
                messages.GetTasksRequest.FromString,
            ),
            "GetAggregatedTensor": (
                grpc.unary_unary_rpc_method_handler,
                self.GetAggregatedTensor,
                messages.GetAggregatedTensorRequest.FromString,
            ),
            "SendLocalTaskResults": (
                grpc.stream_unary_rpc_method_handler,
                self.SendLocalTaskResults,
                bytes,  # DataStream framing is read without copying its payload (datastream_payload)
            ),
            "GetMetricStream": (
                grpc.unary_stream_rpc_method_handler,
                self.GetMetricStream,
                messages.GetMetricStreamRequest.FromString,
            ),
            "GetTrainedModel": (
                grpc.unary_unary_rpc_method_handler,
                self.GetTrainedModel,
                messages.GetTrainedModelRequest.FromString,
            ),
            "GetExperimentDescription": (
                grpc.unary_unary_rpc_method_handler,
                self.GetExperimentDescription,
                messages.GetExperimentDescriptionRequest.FromString,
            ),
            "Ping": (grpc.unary_unary_rpc_method_handler, self.Ping, messages.PingRequest.FromString),
            "InteropRelay": (
                grpc.unary_unary_rpc_method_handler,
                self.InteropRelay,
                messages.InteropMessage.FromString,
            ),
        }
        handlers = {
            name: make(behavior, self._counting_parser(parse), self._counting_serializer)
            for name, (make, behavior, parse) in methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _counting_parser(self, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def parse_counted(data: bytes) -> Any:
            self._observer.bytes_received(len(data))
            return parse(data)

        return parse_counted

    def _counting_serializer(self, reply: Message | bytes) -> bytes:
        data = _serialize(reply)
        self._observer.bytes_sent(len(data))
        return data
