"""What a failed connection to an aggregator is: its cause, the message an operator acts on, and the facts
about certificates that messages quote."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Cause(StrEnum):
    """What went wrong, as a stable word for scripts (``fedagg ... -o json`` and log records)."""

    DNS = "dns"
    REFUSED = "refused"
    NO_ANSWER = "no-answer"
    NETWORK = "network"
    UNAVAILABLE = "unavailable"
    CLOSED = "closed"
    SERVER_NOT_TRUSTED = "tls-server-not-trusted"
    CLIENT_NOT_ACCEPTED = "tls-client-not-accepted"
    CLIENT_CERTIFICATE_REQUIRED = "tls-client-certificate-required"
    NAME_MISMATCH = "tls-name-mismatch"
    CERTIFICATE_EXPIRED = "tls-certificate-expired"
    NOT_TLS = "tls-server-speaks-plaintext"
    TLS_REQUIRED = "tls-required"
    NOT_GRPC = "not-grpc"
    LOCAL_FILES = "tls-local-files"
    TLS = "tls"


TRANSIENT = frozenset(
    {Cause.DNS, Cause.REFUSED, Cause.NO_ANSWER, Cause.NETWORK, Cause.UNAVAILABLE, Cause.CLOSED}
)


class TlsFiles(Protocol):
    """The client's TLS material as the probe needs it (``ClientTls`` has it)."""

    @property
    def root_certificate(self) -> Path: ...
    @property
    def certificate(self) -> Path | None: ...
    @property
    def private_key(self) -> Path | None: ...
    @property
    def server_name(self) -> str | None: ...


@dataclass(frozen=True)
class ConnectionProblem:
    """One diagnosed failure: ``message`` names the address and the cause."""

    address: str
    cause: Cause
    message: str

    @property
    def transient(self) -> bool:
        """Whether waiting and retrying can help."""
        return self.cause in TRANSIENT

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CertificateFacts:
    """What an operator wants to know about a certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]  # subject alternative names as "DNS:host" / "IP:addr"
    not_after: datetime.datetime | None

    def describe(self) -> str:
        """One line: subject, issuer, names, expiry."""
        names = ", ".join(self.names) or "none"
        expiry = f", valid until {self.not_after:%Y-%m-%d %H:%M} UTC" if self.not_after else ""
        return f"subject {self.subject}, issued by {self.issuer}, names {names}{expiry}"


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a gRPC target (``host:port``, ``[v6]:port``, ``dns:///host:port``); None if other."""
    target = address
    if target.startswith("dns:"):
        target = target[4:].lstrip("/")
        if "/" in target:  # dns://authority/host:port
            target = target.split("/", 1)[1]
    elif ":" in target and target.split(":", 1)[0] in ("unix", "unix-abstract", "ipv4", "ipv6", "vsock"):
        return None
    host, port_text = target, "443"
    if target.startswith("["):
        closing_bracket = target.find("]")
        if closing_bracket < 0:
            return None
        host, rest = target[1:closing_bracket], target[closing_bracket + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            return None
    elif target.count(":") == 1:
        host, port_text = target.split(":")
    elif ":" in target:  # a bare IPv6 address
        host = target
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def checked_name(address: str, tls: TlsFiles) -> str:
    """The name gRPC checks in the aggregator's certificate: ``--server-name`` or the address's host."""
    if tls.server_name:
        return tls.server_name
    parts = split_address(address)
    return parts[0] if parts else address


def certificate_facts(data: bytes) -> CertificateFacts | None:
    """Subject, issuer, names and expiry of a PEM or DER certificate; None without ``cryptography``."""
    try:
        from cryptography import x509  # noqa: PLC0415 (optional: the server extra)
    except ImportError:
        return None
    try:
        certificate = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        return None
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names: tuple[str, ...] = ()
    else:
        names = (
            *(f"DNS:{name}" for name in extension.get_values_for_type(x509.DNSName)),
            *(f"IP:{address}" for address in extension.get_values_for_type(x509.IPAddress)),
        )
    return CertificateFacts(
        certificate.subject.rfc4514_string(),
        certificate.issuer.rfc4514_string(),
        names,
        certificate.not_valid_after_utc,
    )
