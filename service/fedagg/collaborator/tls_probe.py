"""The TLS half of :func:`fedagg.collaborator.diagnostics.diagnose`: a handshake with the client's own material
and the name gRPC checks, then an HTTP/2 preface, and what each failure means for an operator."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from fedagg.collaborator.problems import (
    Cause,
    CertificateFacts,
    ConnectionProblem,
    TlsFiles,
    certificate_facts,
    checked_name,
)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_SETTINGS_FRAME = 4
# OpenSSL verify codes (X509_V_ERR_*)
_NOT_YET_VALID, _EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})  # no issuer found / self-signed / unable to verify the leaf


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
    raw = connect(family, sockaddr, timeout)
    try:
        wrapped = context.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise
    with closing(wrapped):
        yield wrapped


def check_tls(
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
        return ConnectionProblem(address, Cause.NETWORK, f"cannot connect to {address}: {strerror(error)}")


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
    if is_settings(answer):
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


def is_settings(answer: bytes) -> bool:
    """Whether ``answer`` begins with an HTTP/2 SETTINGS frame (what a gRPC server sends first)."""
    return len(answer) >= 4 and answer[3] == _SETTINGS_FRAME


def strerror(error: OSError) -> str:
    """The operating system's words for ``error``."""
    if isinstance(error, TimeoutError):
        return "no answer"
    return error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error)


def connect(family: socket.AddressFamily, sockaddr: Any, timeout: float) -> socket.socket:
    """A TCP connection to ``sockaddr`` within ``timeout`` seconds (closed again if it fails)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock
