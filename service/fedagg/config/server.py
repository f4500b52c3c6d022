"""The ``server`` section: the federation port, its TLS, and what callers and connections may hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedagg.server.options import CallerLimits, ConnectionLimits
from fedagg.server.tls import CertificateFiles, TlsMode
from fedagg.settings import (
    BYTES,
    DURATION,
    INT32_MAX,
    INT32_MAX_MILLISECONDS,
    MESSAGE_BYTES,
    ONE_TIB,
    SECONDS,
    Range,
    port_number,
    setting,
)


@dataclass(frozen=True)
class TlsSettings:
    """Federation-port TLS. Certificates come from a directory (a mounted kubernetes.io/tls secret)."""

    mode: TlsMode = setting(TlsMode.MUTUAL, help="mtls, tls (server-only) or insecure (plaintext, warned)")
    certificate_dir: Path | None = setting(None, help="directory holding the three files below")
    certificate: str = setting(
        "tls.crt", help="server certificate chain (file name in the directory or a path)"
    )
    private_key: str = setting("tls.key", help="server private key (file name or path)")
    root_certificate: str = setting(
        "ca.crt", help="CA that signs collaborator certificates (file name or path)"
    )

    def files(self) -> CertificateFiles:
        """The three resolved paths."""
        base = self.certificate_dir or Path()
        root = (
            None
            if self.mode == TlsMode.SERVER_ONLY and not self.root_certificate
            else base / self.root_certificate
        )
        return CertificateFiles(base / self.certificate, base / self.private_key, root)


@dataclass(frozen=True)
class ServerSettings:
    """The federation port."""

    bind_address: str = setting("[::]", help="listen address ([::] = every interface, IPv4 and IPv6)")
    port: int = setting(50051, help="federation port (0 = any free port)", check=port_number)
    tls: TlsSettings = setting(factory=TlsSettings, help="")
    observers: tuple[str, ...] = setting((), help="certificate CNs that may read metrics, models and status")
    auth_failure_max_delay: float = setting(
        2.0, help="max random delay before refusing a caller", check=Range(0, 60, SECONDS)
    )
    executor_workers: int = setting(
        4, help="threads for disk and encoding work", check=Range(1, 256, "an integer")
    )
    tasks_hold_seconds: float = setting(
        60.0,
        help="hold a GetTasks that would answer 'sleep' until the collaborator has work, at most this long "
        "(long poll: no idle wait between rounds); 0 answers 'sleep' at once, as OpenFL does",
        check=DURATION,
    )
    quit_redelivery_seconds: float = setting(
        120.0,
        help="after a restart, answer quit again for this long to collaborators whose quit job was recorded "
        "before it (a crash may have lost the reply) before stopping; 0 stops at once",
        check=DURATION,
    )
    max_connection_age_seconds: float = setting(
        900.0,
        help="close each collaborator connection after this long (it reconnects), so rotated or revoked "
        "certificates reach OpenFL 1.8/1.9 clients, which keep one connection; 0 = never",
        check=Range(1, INT32_MAX_MILLISECONDS, SECONDS, zero="never"),
    )
    max_connection_age_grace_seconds: float = setting(
        600.0,
        help="calls in flight on a closing connection get this long to finish",
        check=Range(0, INT32_MAX_MILLISECONDS, SECONDS),
    )
    max_receive_message_bytes: int = setting(
        4 << 20,
        help="largest incoming gRPC message (OpenFL sends uploads in 2 MiB chunks); "
        "bounds what is read before a caller is known",
        check=MESSAGE_BYTES,
    )
    stream_window_bytes: int = setting(
        4 << 20,
        help="HTTP/2 flow-control window of each call, fixed: bounds what gRPC buffers per upload (memory with "
        "many collaborators uploading at once); a stream moves at most this much per round trip (4 MiB: 40 MB/s "
        "at 100 ms). 0 = gRPC sizes it from the measured bandwidth-delay product (unbounded per upload)",
        check=Range(65535, INT32_MAX, BYTES, zero="automatic"),
    )
    caller_limits: CallerLimits = setting(
        factory=CallerLimits, help="what one caller may hold at once, and for how long"
    )
    connection_limits: ConnectionLimits = setting(
        factory=ConnectionLimits, help="connections to the federation port"
    )
    reply_bytes_in_flight: int = setting(
        32 << 20,
        help="tensor replies built and not yet delivered hold at most this many bytes together (gRPC keeps a "
        "second copy of each): memory while many collaborators download a large model at once; further "
        "downloads wait their turn (a larger tensor goes alone). 0 = unbounded",
        check=Range(0, ONE_TIB, BYTES),
    )
