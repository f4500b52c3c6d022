"""Why a connection to an aggregator fails, in words an operator can act on.

gRPC reports every connection failure as UNAVAILABLE with a terse, sometimes misleading detail (with
``localhost`` resolving to ``::1`` and ``127.0.0.1``, the detail may name the refused IPv6 attempt while the IPv4
attempt failed its TLS handshake). :func:`diagnose` probes the address itself with plain sockets and
Python's :mod:`ssl`: name resolution, a TCP connection to every address, a TLS handshake with the client's own
CA, certificate and key and the name gRPC checks, then an HTTP/2 preface to see whether the aggregator accepts
the client's certificate (under TLS 1.3 the server judges it after the handshake). The result names the
address and the cause and says whether retrying can help:

* transient (retry): the name does not resolve (yet), nothing listens, no answer, or the aggregator answers
  but is unavailable (starting, draining, its disk failing);
* permanent (fail fast): a TLS verification failure on either side, a name the server's certificate does not
  carry (with the names it does carry), an expired certificate, TLS against a plaintext port or the reverse,
  a missing client certificate, unusable local certificate files.

Needs only the standard library; with ``cryptography`` installed (fedagg's server extra) messages also name
the subject and issuer of the certificates involved.
"""

from __future__ import annotations

import datetime
import errno
import socket
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_SETTINGS_FRAME = 4
# OpenSSL verify codes (X509_V_ERR_*)
_NOT_YET_VALID, _EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})  # no issuer found / self-signed / unable to verify the leaf


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


def diagnose(
    address: str, tls: TlsFiles | None, timeout: float = 3.0, grpc_details: str = ""
) -> ConnectionProblem:
    """Probe ``address`` as a gRPC client with ``tls`` would connect, and say what is wrong.

    When the probe finds nothing wrong with the connection itself, the aggregator answered and the problem is
    on its side (starting, draining, its disk): :attr:`Cause.UNAVAILABLE` with gRPC's own ``grpc_details``.
    """
    unavailable = ConnectionProblem(
        address,
        Cause.UNAVAILABLE,
        f"the aggregator at {address} is unavailable: {grpc_details or 'no detail'}",
    )
    parts = split_address(address)
    if parts is None:
        return unavailable
    host, port = parts
    try:
        endpoints = _resolve(host, port)
    except socket.gaierror as error:
        return ConnectionProblem(
            address,
            Cause.DNS,
            f"cannot resolve {host!r} (DNS: {error.strerror}) for the aggregator at {address}",
        )
    problem: ConnectionProblem | None = None
    connected = False
    failures: list[tuple[str, OSError]] = []
    for family, sockaddr in endpoints:
        try:
            sock = _connect(family, sockaddr, timeout)
        except OSError as error:
            failures.append((_endpoint(family, sockaddr), error))
            continue
        connected = True
        if tls is None:
            with closing(sock):
                problem = _check_plaintext(address, sock)
        else:
            sock.close()  # the TLS checks open their own connections
            problem = _check_tls(address, family, sockaddr, tls, timeout)
        if problem is None or not problem.transient:
            break
    if not connected:
        return _unreachable(address, failures)
    return problem or unavailable


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


# Steps -------------------------------------------------------------------------------------------------------


def _connect(family: socket.AddressFamily, sockaddr: Any, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, Any]]:
    seen: set[Any] = set()
    endpoints: list[tuple[socket.AddressFamily, Any]] = []
    for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if sockaddr not in seen:
            seen.add(sockaddr)
            endpoints.append((family, sockaddr))
    return endpoints


def _endpoint(family: socket.AddressFamily, sockaddr: Any) -> str:
    return f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{sockaddr[1]}"


def _unreachable(address: str, failures: list[tuple[str, OSError]]) -> ConnectionProblem:
    tried = ", ".join(endpoint for endpoint, _error in failures)
    errors = [error for _endpoint, error in failures]
    if errors and all(isinstance(error, ConnectionRefusedError) for error in errors):
        return ConnectionProblem(
            address, Cause.REFUSED, f"connection refused by {address}: nothing listens there (tried {tried})"
        )
    if errors and all(isinstance(error, TimeoutError) for error in errors):
        return ConnectionProblem(
            address,
            Cause.NO_ANSWER,
            f"no answer from {address} (tried {tried}): a firewall drops the connection, or it is the wrong host",
        )
    reasons = "; ".join(f"{endpoint}: {_strerror(error)}" for endpoint, error in failures)
    return ConnectionProblem(address, Cause.NETWORK, f"cannot connect to {address}: {reasons}")


def _strerror(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "no answer"
    return error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error)


def _check_plaintext(address: str, sock: socket.socket) -> ConnectionProblem | None:
    """A plaintext client: a gRPC server answers the HTTP/2 preface with SETTINGS."""
    try:
        sock.sendall(HTTP2_PREFACE)
        answer = sock.recv(64)
    except TimeoutError:
        return None
    except OSError:
        answer = b""
    if _is_settings(answer):
        return None
    if not answer or answer[:1] == b"\x15":  # closed, or a TLS alert record
        return ConnectionProblem(
            address,
            Cause.TLS_REQUIRED,
            f"the aggregator at {address} expects TLS (it closed the plaintext connection): "
            "give --ca (and --cert/--key for mutual TLS) instead of --insecure",
        )
    return ConnectionProblem(
        address,
        Cause.NOT_GRPC,
        f"{address} is not a gRPC server (it did not answer HTTP/2: an HTTP server such as the Prometheus "
        "metrics port?); dial the aggregator's federation port",
    )


def _context(tls: TlsFiles, verify: bool, with_identity: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["h2"])
    if verify:
        context.hostname_checks_common_name = True  # as gRPC: the CN counts when there is no DNS SAN
        context.load_verify_locations(cafile=str(tls.root_certificate))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if with_identity and tls.certificate is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key) if tls.private_key else None)
    return context


@contextmanager
def _tls_socket(
    family: socket.AddressFamily, sockaddr: Any, context: ssl.SSLContext, name: str, timeout: float
) -> Iterator[ssl.SSLSocket]:
    raw = _connect(family, sockaddr, timeout)
    try:
        wrapped = context.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise
    with closing(wrapped):
        yield wrapped


def _check_tls(
    address: str, family: socket.AddressFamily, sockaddr: Any, tls: TlsFiles, timeout: float
) -> ConnectionProblem | None:
    name = checked_name(address, tls)
    try:
        context = _context(tls, verify=True)
    except (OSError, ssl.SSLError) as error:
        return ConnectionProblem(address, Cause.LOCAL_FILES, _local_files_message(tls, error))
    try:
        with _tls_socket(family, sockaddr, context, name, timeout) as wrapped:
            return _after_handshake(address, wrapped, tls)
    except ssl.SSLCertVerificationError as error:
        return _verification_failed(address, family, sockaddr, tls, name, error, timeout)
    except ssl.SSLError as error:
        return _handshake_failed(address, tls, error)
    except TimeoutError:
        return ConnectionProblem(
            address, Cause.NO_ANSWER, f"no TLS answer from {address} within {timeout:g}s"
        )
    except (ConnectionResetError, BrokenPipeError):
        return _closed_without_alert(address)
    except OSError as error:
        return ConnectionProblem(address, Cause.NETWORK, f"cannot connect to {address}: {_strerror(error)}")


def _after_handshake(address: str, wrapped: ssl.SSLSocket, tls: TlsFiles) -> ConnectionProblem | None:
    """The handshake passed this side's checks; the server may still refuse the client's certificate."""
    try:
        wrapped.sendall(HTTP2_PREFACE)
        answer = wrapped.recv(64)
    except TimeoutError:
        return None
    except ssl.SSLError as error:
        alert = (error.reason or str(error)).lower().replace("_", " ")
        return _client_not_accepted(address, tls, f"it sent the TLS alert {alert!r}")
    except OSError:
        answer = b""
    if _is_settings(answer):
        return None
    if not answer:
        return _client_not_accepted(address, tls, "it closed the connection right after the TLS handshake")
    return ConnectionProblem(
        address,
        Cause.NOT_GRPC,
        f"{address} accepted TLS but is not a gRPC server (it did not answer HTTP/2); "
        "dial the aggregator's federation port",
    )


def _closed_without_alert(address: str) -> ConnectionProblem:
    """A bare close during the handshake: a refused certificate carries a TLS alert, this does not (transient)."""
    return ConnectionProblem(
        address,
        Cause.CLOSED,
        f"no aggregator ready behind {address}: the connection was closed during the TLS handshake without a TLS "
        "alert (a balancer with no ready aggregator behind it, a failover or restart under way, or an aggregator at "
        "its connection cap, server.connection_limits.max_connections); retrying",
    )


def _client_not_accepted(address: str, tls: TlsFiles, what: str) -> ConnectionProblem:
    if tls.certificate is None:
        return ConnectionProblem(
            address,
            Cause.CLIENT_CERTIFICATE_REQUIRED,
            f"TLS: the aggregator at {address} requires a client certificate (mutual TLS; {what}): "
            "give --cert and --key",
        )
    facts = _file_facts(tls.certificate)
    about = f" ({facts.describe()})" if facts else ""
    return ConnectionProblem(
        address,
        Cause.CLIENT_NOT_ACCEPTED,
        f"TLS: the aggregator at {address} did not accept this client's certificate {tls.certificate}{about}: "
        f"{what}. Verification failed on the server's side: the certificate must be signed by the CA the "
        "aggregator trusts (server.tls.root_certificate) and be valid now",
    )


def _verification_failed(
    address: str,
    family: socket.AddressFamily,
    sockaddr: Any,
    tls: TlsFiles,
    name: str,
    error: ssl.SSLCertVerificationError,
    timeout: float,
) -> ConnectionProblem:
    """The client refused the server's certificate: say why, with what the server presented."""
    code, reason = error.verify_code, error.verify_message
    presented = _peer_certificate(family, sockaddr, tls, name, timeout)
    facts = certificate_facts(presented) if presented else None
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        names = facts.names if facts else _verified_names(family, sockaddr, tls, name, timeout)
        listed = ", ".join(names) if names else "no names"
        source = "--server-name" if tls.server_name else f"the host of {address}"
        return ConnectionProblem(
            address,
            Cause.NAME_MISMATCH,
            f"TLS: the aggregator's certificate at {address} is not valid for {name!r} ({source}); "
            f"it names {listed}. Dial one of those names, pass --server-name with one of them, or reissue the "
            "aggregator's certificate with this name (fedagg certs --hosts)",
        )
    described = f" The aggregator presented: {facts.describe()}." if facts else ""
    if code in (_EXPIRED, _NOT_YET_VALID):
        state = "has expired" if code == _EXPIRED else "is not valid yet"
        return ConnectionProblem(
            address,
            Cause.CERTIFICATE_EXPIRED,
            f"TLS: the aggregator's certificate at {address} {state} ({reason}).{described}",
        )
    if code in _UNTRUSTED:
        return ConnectionProblem(
            address,
            Cause.SERVER_NOT_TRUSTED,
            f"TLS: this client does not trust the aggregator's certificate at {address} ({reason}): "
            f"the CA in --ca {tls.root_certificate} did not sign it. Verification failed on this client's side: "
            f"use the CA of the aggregator's federation.{described}",
        )
    return ConnectionProblem(
        address,
        Cause.TLS,
        f"TLS: verifying the aggregator's certificate at {address} failed ({reason}).{described}",
    )


def _handshake_failed(address: str, tls: TlsFiles, error: ssl.SSLError) -> ConnectionProblem:
    reason = (error.reason or "").upper()
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return ConnectionProblem(
            address,
            Cause.NOT_TLS,
            f"TLS: {address} does not speak TLS: a plaintext port (the aggregator's ops or metrics port, or an "
            "aggregator with server.tls.mode insecure: then use --insecure) or not an aggregator",
        )
    if reason.startswith("TLSV1_ALERT") or reason.startswith("SSLV3_ALERT") or "ALERT" in reason:
        return _client_not_accepted(address, tls, f"it ended the handshake with {error.reason!r}")
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return _closed_without_alert(address)
    return ConnectionProblem(address, Cause.TLS, f"TLS handshake with {address} failed: {error}")


def _local_files_message(tls: TlsFiles, error: Exception) -> str:
    files = [f"--ca {tls.root_certificate}"]
    if tls.certificate is not None:
        files.append(f"--cert {tls.certificate}")
    if tls.private_key is not None:
        files.append(f"--key {tls.private_key}")
    detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"TLS: cannot use this client's certificate files ({', '.join(files)}): {detail}"


def _peer_certificate(
    family: socket.AddressFamily, sockaddr: Any, tls: TlsFiles, name: str, timeout: float
) -> bytes | None:
    """The server's certificate (DER), fetched without verifying it."""
    try:
        with _tls_socket(
            family, sockaddr, _context(tls, verify=False, with_identity=False), name, timeout
        ) as s:
            return s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def _verified_names(
    family: socket.AddressFamily, sockaddr: Any, tls: TlsFiles, name: str, timeout: float
) -> tuple[str, ...]:
    """The server's SANs, from a handshake that verifies the chain but not the name (no cryptography needed)."""
    try:
        context = _context(tls, verify=True, with_identity=False)
        context.check_hostname = False
        with _tls_socket(family, sockaddr, context, name, timeout) as s:
            certificate = s.getpeercert() or {}
    except (OSError, ssl.SSLError):
        return ()
    labels = {"DNS": "DNS", "IP Address": "IP"}
    names: Any = certificate.get("subjectAltName", ())
    return tuple(f"{labels.get(kind, kind)}:{value.rstrip()}" for kind, value in names)


def _file_facts(path: Path) -> CertificateFacts | None:
    try:
        return certificate_facts(path.read_bytes())
    except OSError:
        return None


def _is_settings(answer: bytes) -> bool:
    return len(answer) >= 4 and answer[3] == _SETTINGS_FRAME
