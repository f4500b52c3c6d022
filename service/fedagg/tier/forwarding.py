"""Relaying collaborator calls from an ingest replica to its root's federation port, as bytes.

GetTasks (long poll included), Ping, InteropRelay and the observer calls (GetExperimentDescription,
GetTrainedModel, GetMetricStream) are decided by the root. The replica authenticates the caller first, then sends
the request's bytes unchanged over the link's one mTLS channel (the replica's own tier certificate) with the
caller's remaining deadline and the caller's name as ``client_id`` metadata, and hands back the root's reply bytes,
or its status code and message, unchanged. The root trusts the replica to vouch for the header's sender
(``server.replicas``, :class:`~fedagg.server.auth.FederationIdentity`).

A root the channel cannot reach is answered UNAVAILABLE with a message naming the root's address (OpenFL
collaborators retry UNAVAILABLE).

Stateless beyond the channel, which it does not own (:class:`~fedagg.tier.root_link.RootLink` does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from fedagg.server.auth import CLIENT_ID_METADATA
from fedagg.server.errors import bounded_details
from fedagg.server.handlers import SERVICE_NAME
from fedagg.tier.root_link import RootLink

Context = grpc.aio.ServicerContext[Any, Any]


class RootForwarder:
    """Relays calls to the root over ``link``'s channel (module docstring)."""

    def __init__(self, link: RootLink) -> None:
        self._channel = link.channel
        self.address = link.address

    async def unary(self, method: str, request: bytes, context: Context, caller: str) -> bytes:
        """The root's reply to a unary call (its status relayed as this call's)."""
        call = self._channel.unary_unary(f"/{SERVICE_NAME}/{method}", None, None)(
            request, timeout=context.time_remaining(), metadata=((CLIENT_ID_METADATA, caller),)
        )
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as error:
            await self._relay_status(error, context)
        return reply

    async def stream(
        self, method: str, request: bytes, context: Context, caller: str
    ) -> AsyncIterator[bytes]:
        """The root's replies to a server-streaming call, as they arrive."""
        call = self._channel.unary_stream(f"/{SERVICE_NAME}/{method}", None, None)(
            request, timeout=context.time_remaining(), metadata=((CLIENT_ID_METADATA, caller),)
        )
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as error:
            await self._relay_status(error, context)
        finally:
            call.cancel()

    async def _relay_status(self, error: grpc.aio.AioRpcError, context: Context) -> NoReturn:
        code, details = error.code(), error.details() or ""
        if (
            code == grpc.StatusCode.UNAVAILABLE
            and self._channel.get_state() != grpc.ChannelConnectivity.READY
        ):
            details = f"the root {self.address} is unreachable from this ingest replica ({details}); retry"
        await context.abort(code, bounded_details(details))
        raise AssertionError("context.abort raises")
