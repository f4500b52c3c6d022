"""The ops listeners (health and reflection on the ops port, the Prometheus exporter) and how a port that cannot be
bound becomes one configuration error naming the setting."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from threading import Thread
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    start_http_server,
)

from fedagg.config.loading import ENV_PREFIX
from fedagg.config.schema import Config
from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.ops.leadership import Leadership
from fedagg.ops.leadership_report import leadership_document, register_leadership
from fedagg.protocol.ops_leadership import SERVICE as LEADERSHIP_SERVICE
from fedagg.server.health import HealthReporter
from fedagg.server.interceptors import GrpcServerMetrics, MetricsInterceptor
from fedagg.server.options import Register
from fedagg.settings import ConfigError

log = logging.getLogger(__name__)


class OpsHost(Protocol):
    """A process the ops listeners serve (the aggregator's, an ingest replica's): what they read and record."""

    @property
    def config(self) -> Config: ...
    @property
    def registry(self) -> CollectorRegistry: ...
    @property
    def grpc_metrics(self) -> GrpcServerMetrics: ...
    @property
    def health(self) -> HealthReporter: ...
    @property
    def leadership(self) -> Leadership | None: ...
    @property
    def state_lock(self) -> StateDirectoryLock | None: ...
    @property
    def ops_services(self) -> Sequence[Register]: ...

    ops_port: int
    metrics_port: int
    ops_server: grpc.aio.Server | None
    metrics_http: tuple[WSGIServer, Thread] | None


@contextlib.contextmanager
def binding(key: str, port: int, host: str) -> Iterator[None]:
    """Turn a failure to listen into one configuration error naming the setting and its environment override.

    The port is tried first with a plain socket, so that gRPC's own error line is never printed.
    """
    try:
        if port:
            try_listen(host, port)
        yield
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "bind" not in str(error).lower():
            raise
        variable = ENV_PREFIX + key.upper().replace(".", "__")
        raise ConfigError(
            key,
            port,
            f"a port this process can listen on (it is in use or not allowed); set {key} or {variable}",
        ) from None


def try_listen(host: str, port: int) -> None:
    """Bind and release ``host:port`` as the servers will (raises OSError when it is taken)."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((address, port))
        probe.listen(1)


async def start_ops(aggregator: OpsHost) -> None:
    ops = aggregator.config.ops
    with binding("ops.metrics_port", ops.metrics_port, ops.metrics_bind_address):
        http_server, thread = start_http_server(
            ops.metrics_port, addr=ops.metrics_bind_address.strip("[]"), registry=aggregator.registry
        )
    aggregator.metrics_http = (http_server, thread)
    aggregator.metrics_port = http_server.server_port
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(aggregator.grpc_metrics)], options=[("grpc.so_reuseport", 0)]
    )
    services = [LEADERSHIP_SERVICE]
    for register in aggregator.ops_services:
        services.extend(register(server))
    aggregator.health.register(server, services)
    register_leadership(server, lambda: leadership_document(aggregator.leadership, aggregator.state_lock))
    with binding("ops.port", ops.port, ops.bind_address):
        aggregator.ops_port = server.add_insecure_port(f"{ops.bind_address}:{ops.port}")
    await server.start()
    aggregator.ops_server = server
    await aggregator.health.set_alive()
    log.info(
        "ops listening: ops=%s:%d metrics=%s:%d (health, reflection and leadership on ops, Prometheus on /metrics)",
        ops.bind_address,
        aggregator.ops_port,
        ops.metrics_bind_address,
        aggregator.metrics_port,
    )


async def stop_ops(aggregator: OpsHost) -> None:
    await aggregator.health.shut_down()
    if aggregator.ops_server is not None:
        await aggregator.ops_server.stop(0.5)
    if aggregator.metrics_http is not None:
        http_server, thread = aggregator.metrics_http
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)
