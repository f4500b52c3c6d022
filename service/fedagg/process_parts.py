"""Parts every role's process builds the same way from its configuration: the metrics registry, the federation
port's settings and its certificates (:mod:`fedagg.assembly` for standalone and root, :mod:`fedagg.ingest_process`
for an ingest replica)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from fedagg.config.schema import Config
from fedagg.config.topology import Role
from fedagg.ops.metrics import FederationMetrics
from fedagg.server.interceptors import GrpcServerMetrics, MetricsInterceptor
from fedagg.server.options import ReceiveLimits, Register
from fedagg.server.tls import CertificateError, CertificateSource, TlsMode
from fedagg.settings import ConfigError


def new_registry() -> CollectorRegistry:
    """A Prometheus registry with the process, platform and GC collectors (no ``*_created`` series)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: twice the series for nothing
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return registry


def server_keywords(
    config: Config,
    metrics: FederationMetrics,
    grpc_metrics: GrpcServerMetrics,
    extra_services: list[Register],
) -> dict[str, Any]:
    """The federation port's :class:`~fedagg.server.options.ServerOptions` from the ``server`` and ``limits``
    sections (the bind address, port and certificates are the caller's: they differ by role)."""
    server = config.server
    limits = config.limits
    return {
        "observers": server.observers,
        "auth_failure_max_delay": server.auth_failure_max_delay,
        "executor_workers": server.executor_workers,
        "max_receive_message_bytes": server.max_receive_message_bytes,
        "stream_window_bytes": server.stream_window_bytes,
        "reply_bytes_in_flight": server.reply_bytes_in_flight,
        "max_connection_age": server.max_connection_age_seconds,
        "tasks_hold_seconds": server.tasks_hold_seconds,
        "quit_redelivery_seconds": server.quit_redelivery_seconds,
        "max_connection_age_grace": server.max_connection_age_grace_seconds,
        "receive_limits": ReceiveLimits(
            limits.header_bytes,
            limits.field_bytes,
            limits.tags_per_tensor,
            limits.descriptor_bytes,
            limits.tensors_per_upload,
        ),
        "caller_limits": server.caller_limits,
        "connection_limits": server.connection_limits,
        "interceptors": [MetricsInterceptor(grpc_metrics)],
        "extra_services": extra_services,
        "observer": metrics,
    }


def certificate_source(config: Config, metrics: FederationMetrics) -> CertificateSource | None:
    """The federation port's certificates (None: plaintext); a root's tier port always runs mTLS with the tier
    certificates."""
    tls, root = config.server.tls, config.topology.role == Role.ROOT
    if tls.mode == TlsMode.INSECURE and not root:
        return None
    files = config.topology.tier_files(tls.certificate_dir) if root else tls.files()
    try:
        return CertificateSource(
            files,
            root or tls.mode == TlsMode.MUTUAL,
            metrics.certificate_loaded,
            metrics.certificate_rejected,
            metrics.tls_handshake_started,
        )
    except CertificateError as error:
        raise unusable_certificates(config, error, tier=root) from None


def unusable_certificates(config: Config, error: CertificateError, tier: bool = False) -> ConfigError:
    """The configuration error of certificates that cannot be used (the tier's, or the federation port's)."""
    if tier:
        directory = config.topology.tier_certificate_dir or config.server.tls.certificate_dir
        return ConfigError(
            "topology.tier_certificate_dir", str(directory or "."), f"usable certificates ({error})"
        )
    return ConfigError(
        "server.tls", str(config.server.tls.certificate_dir or "."), f"usable certificates ({error})"
    )
