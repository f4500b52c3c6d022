"""gRPC health (``grpc.health.v1``) and reflection, served on both listeners.

Service names and their meaning:

* ``""`` and ``liveness``: the process and its event loop answer (a stuck loop stops answering, which is what
  the kubelet's liveness probe detects).
* ``openfl.aggregator.Aggregator`` (readiness): certificates loaded, state restored, not draining, and the
  experiment not finished (unless the aggregator stays up read-only after the end).

One :class:`HealthReporter` (one servicer, one event loop) serves every listener, so all report the same state and
every Watch sees every transition.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedagg.server.handlers import SERVICE_NAME

LIVENESS = "liveness"
READINESS = SERVICE_NAME
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Owns the health servicer; must be used from the event loop that serves it."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.ready = False

    def register(self, server: grpc.aio.Server, services: Iterable[str] = ()) -> list[str]:
        """Add health and reflection to ``server``; reflection lists ``services`` plus those two."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        names = [*services, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        return names

    async def set_alive(self) -> None:
        """Report the process as live and not (yet) ready."""
        await self.servicer.set("", _SERVING)
        await self.servicer.set(LIVENESS, _SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        """Switch readiness."""
        self.ready = ready
        await self.servicer.set(READINESS, _SERVING if ready else _NOT_SERVING)

    async def shut_down(self) -> None:
        """Report NOT_SERVING for everything, for good."""
        self.ready = False
        await self.servicer.enter_graceful_shutdown()
