"""Translating failures into gRPC statuses: every error a client sees has a deliberate code, never UNKNOWN."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fedagg.federation.errors import (
    FailedPrecondition,
    FederationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from fedagg.federation.progress_health import describe_os_error
from fedagg.protocol.wire import MalformedMessage
from fedagg.server.auth import IdentityError, ObserverDenied

log = logging.getLogger(__name__)

MAX_DETAILS_CHARACTERS = 1000
"""Error details travel in gRPC metadata (8 KiB by default on clients): keep them well under that."""

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (IdentityError, grpc.StatusCode.UNAUTHENTICATED),
    (ObserverDenied, grpc.StatusCode.PERMISSION_DENIED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
)


class Unavailable(Exception):
    """The server cannot take the call now (starting, draining); clients should retry later."""


class ResourceExhausted(Exception):
    """The caller holds as much of a resource as it may (a named limit); it may ask again once it lets go."""


class Unimplemented(Exception):
    """A part of the protocol fedagg does not serve (UNIMPLEMENTED)."""


def status_for(error: Exception) -> grpc.StatusCode | None:
    """The status code for a known error class, or None."""
    if isinstance(error, (Unavailable, StorageUnavailable)):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, Unimplemented):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(error, ResourceExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    if isinstance(error, FederationError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return None


async def abort_for(error: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """Abort the call with the status ``error`` deserves; unexpected errors become INTERNAL with an id."""
    if isinstance(error, OSError):
        log.error("%s failed on the disk: %s", method, describe_os_error(error))
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the aggregator cannot use its state directory: {describe_os_error(error)}; retry later",
        )
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
        await context.abort(code, bounded_details(str(error)))


def bounded_details(message: str) -> str:
    """``message`` cut to :data:`MAX_DETAILS_CHARACTERS` (with a marker) so it always fits in the trailers."""
    if len(message) <= MAX_DETAILS_CHARACTERS:
        return message
    return message[: MAX_DETAILS_CHARACTERS - 15] + " ... (truncated)"


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
