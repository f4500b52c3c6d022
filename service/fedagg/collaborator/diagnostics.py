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

import socket
from contextlib import closing
from typing import Any

from fedagg.collaborator.problems import Cause, ConnectionProblem, TlsFiles, certificate_facts, split_address
from fedagg.collaborator.tls_probe import HTTP2_PREFACE, check_tls, connect, is_settings, strerror

__all__ = ["Cause", "ConnectionProblem", "TlsFiles", "certificate_facts", "diagnose", "split_address"]


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
            sock = connect(family, sockaddr, timeout)
        except OSError as error:
            failures.append((_endpoint(family, sockaddr), error))
            continue
        connected = True
        if tls is None:
            with closing(sock):
                problem = _check_plaintext(address, sock)
        else:
            sock.close()  # the TLS checks open their own connections
            problem = check_tls(address, family, sockaddr, tls, timeout)
        if problem is None or not problem.transient:
            break
    if not connected:
        return _unreachable(address, failures)
    return problem or unavailable


# Steps -------------------------------------------------------------------------------------------------------


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
    reasons = "; ".join(f"{endpoint}: {strerror(error)}" for endpoint, error in failures)
    return ConnectionProblem(address, Cause.NETWORK, f"cannot connect to {address}: {reasons}")


def _check_plaintext(address: str, sock: socket.socket) -> ConnectionProblem | None:
    """A plaintext client: a gRPC server answers the HTTP/2 preface with SETTINGS."""
    try:
        sock.sendall(HTTP2_PREFACE)
        answer = sock.recv(64)
    except TimeoutError:
        return None
    except OSError:
        answer = b""
    if is_settings(answer):
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
