"""Translating failures into gRPC statuses: every error a client sees has a deliberate code, never UNKNOWN."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fedagg.federation.errors import FailedPrecondition, FederationError, InvalidRequest, NotFound
from fedagg.protocol.wire import MalformedMessage
from fedagg.server.auth import IdentityError, ObserverDenied

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (IdentityError, grpc.StatusCode.UNAUTHENTICATED),
    (ObserverDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
)


class Unavailable(Exception):
    """The server cannot take the call now (starting, draining); clients should retry later."""


def status_for(error: Exception) -> grpc.StatusCode | None:
    """The status code for a known error class, or None."""
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    if isinstance(error, FederationError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return None


async def abort_for(error: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """Abort the call with the status ``error`` deserves; unexpected errors become INTERNAL with an id."""
    code = status_for(error)
    if code is None:
        incident = uuid.uuid4().hex[:12]
        log.error("%s failed (incident %s)", method, incident, exc_info=error)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in {method} (incident {incident}); see the aggregator log",
        )
    else:
        log.debug("%s refused with %s: %s", method, code.name, error)
        await context.abort(code, str(error))


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
StreamHandler = TypeVar("StreamHandler", bound=Callable[..., AsyncIterator[Any]])


def unary_errors(handler: Handler) -> Handler:
    """Decorate a unary (or stream-unary) handler so its failures map to deliberate statuses."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_for(error, context, handler.__name__)

    return wrapper  # type: ignore[return-value]


def stream_errors(handler: StreamHandler) -> StreamHandler:
    """Decorate a server-streaming handler so its failures map to deliberate statuses."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in handler(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_for(error, context, handler.__name__)

    return wrapper  # type: ignore[return-value]
