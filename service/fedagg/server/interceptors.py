"""go-grpc-prometheus-compatible server metrics for grpc.aio, as a server interceptor.

Every RPC of every service is counted: ``grpc_server_started_total``, ``grpc_server_handled_total`` (with the
final ``grpc_code``), ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total`` and the
``grpc_server_handling_seconds`` histogram, labelled ``grpc_type``, ``grpc_service`` and ``grpc_method``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Histogram

LABELS = ("grpc_type", "grpc_service", "grpc_method")
# go-grpc-prometheus labels codes as Go's codes.Code.String() spells them (OK, InvalidArgument, Unauthenticated).
GO_CODE_NAMES = {
    code: "Canceled"
    if code is grpc.StatusCode.CANCELLED
    else "".join(part.capitalize() if part != "OK" else part for part in code.name.split("_"))
    for code in grpc.StatusCode
}
# go-grpc-prometheus' buckets, extended to the minutes a large upload or a held GetTasks can take.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class GrpcServerMetrics:
    """The five go-grpc-prometheus server metrics in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", LABELS, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success.",
            (*LABELS, "grpc_code"),
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received",
            "RPC stream messages received on the server.",
            LABELS,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent", "gRPC stream messages sent by the server.", LABELS, registry=registry
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of gRPC that had been application-level handled by the server.",
            LABELS,
            buckets=BUCKETS,
            registry=registry,
        )


class _CountingContext:
    """A servicer context that counts messages written with ``context.write``."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], on_write: Callable[[], None]) -> None:
        self._context = context
        self._on_write = on_write

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._on_write()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _ObservedMethod:
    """The metric series of one method (resolved once) and the bookkeeping around one call."""

    def __init__(
        self,
        metrics: GrpcServerMetrics,
        labels: tuple[str, str, str],
        streaming_request: bool,
        writes_through_context: bool,
    ) -> None:
        self._metrics = metrics
        self._labels = labels
        self._streaming_request = streaming_request
        self._writes_through_context = writes_through_context
        self.started = metrics.started.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def begin(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Any, Any, float]:
        """Count the start; return the (counted) request, the context to pass on and the start time."""
        self.started.inc()
        if self._streaming_request:
            request = _counted(request, self.received.inc)
        else:
            self.received.inc()
        if self._writes_through_context:
            context = _CountingContext(context, self.sent.inc)  # type: ignore[assignment]
        return request, context, time.perf_counter()

    def end(
        self, context: grpc.aio.ServicerContext[Any, Any], started: float, error: BaseException | None
    ) -> None:
        """Count the completion with its final status code."""
        code = _code_of(error) or context.code() or grpc.StatusCode.OK
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._metrics.handled.labels(*self._labels, GO_CODE_NAMES[code])
        handled.inc()
        self.handling.observe(time.perf_counter() - started)


def _code_of(error: BaseException | None) -> grpc.StatusCode | None:
    if error is None or isinstance(error, grpc.aio.AbortError):
        return None  # the context holds the code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _observe_unary(observed: _ObservedMethod, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request, counting, started = observed.begin(request, context)
        error: BaseException | None = None
        try:
            reply = await behavior(request, counting)
            if reply is not None:
                observed.sent.inc()
            return reply
        except BaseException as failure:
            error = failure
            raise
        finally:
            observed.end(context, started, error)

    return unary


def _observe_stream(observed: _ObservedMethod, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        request, counting, started = observed.begin(request, context)
        error: BaseException | None = None
        try:
            async for item in behavior(request, counting):
                observed.sent.inc()
                yield item
        except BaseException as failure:
            error = failure
            raise
        finally:
            observed.end(context, started, error)

    return streaming


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every method handler to record the go-grpc-prometheus metrics."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler_call_details.method, handler)
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = full_method.lstrip("/").rpartition("/")
        kinds: list[tuple[str, Any, Callable[..., Any], bool]] = [
            ("unary", handler.unary_unary, grpc.unary_unary_rpc_method_handler, False),
            ("server_stream", handler.unary_stream, grpc.unary_stream_rpc_method_handler, False),
            ("client_stream", handler.stream_unary, grpc.stream_unary_rpc_method_handler, True),
            ("bidi_stream", handler.stream_stream, grpc.stream_stream_rpc_method_handler, True),
        ]
        for grpc_type, behavior, make_handler, streaming_request in kinds:
            if behavior is None:
                continue
            generator = inspect.isasyncgenfunction(behavior)
            writes_through_context = (
                grpc_type.endswith("stream") and grpc_type != "client_stream" and not generator
            )
            labels = (_wire_type(service, method, grpc_type), service, method)
            observed = _ObservedMethod(self._metrics, labels, streaming_request, writes_through_context)
            observe = _observe_stream if generator else _observe_unary
            wrapped: grpc.RpcMethodHandler[Any, Any] = make_handler(
                observe(observed, behavior), handler.request_deserializer, handler.response_serializer
            )
            return wrapped
        return handler


def _wire_type(service: str, method: str, handler_type: str) -> str:
    """The method's type as its .proto declares it (what clients see), else the handler's.

    They differ where a unary reply is written by the handler (registered as unary-stream, see
    :mod:`fedagg.server.handlers`): the label stays ``unary``, as on the wire.
    """
    try:
        declared = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return handler_type
    return _WIRE_TYPES[(declared.client_streaming, declared.server_streaming)]


_WIRE_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


async def _counted(messages: AsyncIterator[Any], on_message: Callable[[], None]) -> AsyncIterator[Any]:
    async for message in messages:
        on_message()
        yield message
