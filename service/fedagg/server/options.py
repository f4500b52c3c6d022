"""What the federation port lets one caller, and all callers together, hold: every limit by name, with its default.

:class:`ServerOptions` is the one block of fedagg's server settings (uvicorn's ``Config`` is the model): each field
is a resource a caller can hold, the most it may hold, and for how long. ``AggregatorGRPCServer`` takes them as
keyword arguments, as OpenFL's ``Plan.get_server()`` passes ``network.settings``: OpenFL's own network keys are
accepted and ignored (logged at debug level); any other unknown key is a ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES
from fedagg.protocol.stream import DecodeLimits
from fedagg.server.observer import ServerObserver
from fedagg.server.tls import CertificateSource
from fedagg.settings import INT32_MAX, SECONDS, TIMEOUT, Range, setting

log = logging.getLogger(__name__)


OPENFL_NETWORK_KEYS = frozenset(
    {
        "agg_addr",
        "agg_port",
        "cert_folder",
        "client_reconnect_interval",
        "disable_client_auth",
        "hash_salt",
        "tls",
        "use_tls",
        "require_client_auth",
        "root_certificate",
        "certificate",
        "private_key",
        "transport_protocol",
        "single_col_cert_common_name",
    }
)
"""Keys of OpenFL's ``network.settings`` that fedagg's server does not use (it takes its own settings)."""


COUNT = Range(1, INT32_MAX, "an integer")
HANDSHAKE = Range(0, 3600, SECONDS, exclusive_minimum=True)
FDS = Range(0, 1 << 20, "a number of file descriptors")


@dataclass(frozen=True)
class ReceiveLimits:
    """What one upload may make the server hold or decode (everything else streams to disk)."""

    header_bytes: int = 64 * 1024
    """Bytes before the first tensor: all that is decoded before the sender is authenticated."""
    field_bytes: int = 16 * 1024
    tags_per_tensor: int = 32
    descriptor_bytes: int = 4 << 20
    """All names, tags and shapes of one upload, each field charged at least ``FIELD_COST`` bytes."""
    tensors_per_upload: int = 16384
    """Tensors (weights and metrics) in one upload: bounds the decoding work one upload can cause."""

    def decode_limits(self) -> DecodeLimits:
        """The decoder's view of these limits."""
        return DecodeLimits(
            self.field_bytes, self.tags_per_tensor, 8, self.descriptor_bytes, self.tensors_per_upload
        )


@dataclass(frozen=True)
class CallerLimits:
    """What one caller (a collaborator or an observer, by identity) may hold at once, and for how long."""

    replies_in_flight: int = setting(
        1,
        help="tensor and model replies one caller may have built and not yet read (OpenFL downloads one at a "
        "time); its further downloads wait, the others' do not",
        check=COUNT,
    )
    reply_send_seconds: float = setting(
        60.0,
        help="a reply not read within this many seconds (plus its size at reply_min_bytes_per_second) ends the "
        "call and returns its bytes to the reply budget; the caller's downloads are refused (UNAVAILABLE) until "
        "its connection has been recycled (max_connection_age + grace)",
        check=TIMEOUT,
    )
    reply_min_bytes_per_second: int = setting(
        1 << 20, help="the slowest reading speed a reply's send deadline allows for", check=COUNT
    )
    concurrent_uploads_per_task: int = setting(
        2,
        help="uploads of one task one collaborator may have open at once (a retry may overlap a dying stream); "
        "more are refused with UNAVAILABLE",
        check=COUNT,
    )
    upload_idle_seconds: float = setting(
        60.0,
        help="an upload that sends nothing for this many seconds ends with UNAVAILABLE (nothing is kept; the "
        "client sends again)",
        check=TIMEOUT,
    )
    metric_streams: int = setting(2, help="open GetMetricStream calls per caller", check=COUNT)
    metric_stream_queue: int = setting(
        1024,
        help="live metric records queued for one slow stream; the oldest are dropped beyond it",
        check=COUNT,
    )

    def send_deadline(self, size: int) -> float:
        """Seconds a reply of ``size`` bytes may take to be read."""
        return self.reply_send_seconds + size / self.reply_min_bytes_per_second


@dataclass(frozen=True)
class ConnectionLimits:
    """Connections to the federation port: how many, and how long a TLS handshake may take."""

    max_connections: int = setting(
        1024,
        help="open connections to the federation port (handshaking or not) at most; more are closed at accept. "
        "Lowered at start (with a warning) until reserved_fds stay free under the open-file limit",
        check=COUNT,
    )
    handshake_seconds: float = setting(
        10.0, help="a connection that has not completed its TLS handshake by then is closed", check=HANDSHAKE
    )
    max_concurrent_streams: int = setting(
        16,
        help="calls in flight on one connection (OpenFL makes one at a time; a long poll plus an upload is two)",
        check=COUNT,
    )
    reserved_fds: int = setting(
        256,
        help="file descriptors kept free at the connection cap for the state directory, models and the ops port",
        check=FDS,
    )


Register = Callable[[grpc.aio.Server], Iterable[str]]


@dataclass(frozen=True)
class ServerOptions:
    """fedagg's server settings beyond OpenFL's constructor arguments (see ``AggregatorGRPCServer``)."""

    bind_address: str = "[::]"
    """Host to listen on (``[::]``: every interface, IPv4 and IPv6)."""
    observers: frozenset[str] = frozenset()
    """Certificate CNs (besides collaborators) that may read metrics, models and status."""
    replicas: frozenset[str] = frozenset()
    """Certificate CNs of the ingest replicas of a scale-out tier (the root's): each vouches for the caller its
    requests name (:class:`~fedagg.server.auth.FederationIdentity`)."""
    auth_failure_max_delay: float = 2.0
    """Upper bound of the random delay before an UNAUTHENTICATED answer."""
    executor_workers: int = 4
    """Threads for disk, decoding and encoding work."""
    certificate_source: CertificateSource | None = None
    """A ready certificate source (overrides the certificate file arguments)."""
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()
    """grpc.aio server interceptors (metrics)."""
    extra_services: Sequence[Register] = ()
    """Callables ``(server) -> service names`` that register more services (health)."""
    observer: ServerObserver = field(default_factory=ServerObserver)
    """Told about refused callers, bytes on the wire and limit breaches."""
    max_receive_message_bytes: int = 4 << 20
    """Largest incoming message (uploads arrive in chunks of 2 MiB): what is read before a caller is known."""
    stream_window_bytes: int = 4 << 20
    """HTTP/2 flow-control window of each stream, fixed: what gRPC buffers of one upload (0: gRPC sizes it from
    the measured bandwidth-delay product, which can grow to many MiB per upload on fast links)."""
    reply_bytes_in_flight: int = 32 << 20
    """Bytes of replies built and not yet delivered, at most (gRPC holds a second copy of each); 0 = unbounded."""
    max_connection_age: float = 900.0
    """Seconds after which a connection is closed (GOAWAY) and its client reconnects, so certificate rotation and
    revocation reach long-lived clients; 0 keeps connections forever."""
    max_connection_age_grace: float = 600.0
    """Seconds calls in flight on a closing connection get to finish (then the connection is closed)."""
    tasks_hold_seconds: float = 60.0
    """How long a GetTasks that would answer "sleep" is held until there is work (0: answer at once)."""
    quit_redelivery_seconds: float = 120.0
    """How long quit jobs recorded before a restart are answered again before the server may stop."""
    receive_limits: ReceiveLimits = field(default_factory=ReceiveLimits)
    caller_limits: CallerLimits = field(default_factory=CallerLimits)
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> ServerOptions:
        """Options from constructor keywords; OpenFL's network keys are ignored, other unknown keys refused."""
        known = {option.name for option in dataclasses.fields(cls)}
        ignored = sorted(set(keywords) & OPENFL_NETWORK_KEYS - known)
        if ignored:
            log.debug("ignoring OpenFL network settings fedagg does not use: %s", ignored)
        unknown = sorted(set(keywords) - known - OPENFL_NETWORK_KEYS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {unknown}")
        chosen = {key: value for key, value in keywords.items() if key in known}
        for names in ("observers", "replicas"):
            if names in chosen:
                chosen[names] = frozenset(chosen[names])
        if chosen.get("observer") is None:
            chosen.pop("observer", None)
        return cls(**chosen)

    def channel_options(self, max_connections: int) -> list[tuple[str, int]]:
        """The grpc.aio server's channel arguments for these options."""
        connections = self.connection_limits
        options = [
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_metadata_size", 32 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.server_handshake_timeout_ms", int(connections.handshake_seconds * 1000)),
            ("grpc.max_concurrent_streams", connections.max_concurrent_streams),
        ]
        if (
            self.stream_window_bytes > 0
        ):  # a fixed window bounds what gRPC buffers per upload (BDP growth does not)
            options += [
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", self.stream_window_bytes),
            ]
        if self.max_connection_age > 0:  # OpenFL 1.8/1.9 keep one connection: rotations reach it on reconnect
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace * 1000)),
            ]
        return options
