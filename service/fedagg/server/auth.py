"""Who is calling: OpenFL's collaborator identity rules (spec §2.4, §2.5, §3.9) plus observers.

A collaborator proves its name with its certificate's CN (mTLS) and repeats it as ``header.sender``; every
request header must also name this aggregator and federation. Identity failures raise
:class:`IdentityError`, which the servicer answers with UNAUTHENTICATED: the only status on which an OpenFL
1.7.1 collaborator stops instead of retrying in a hot loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from fedagg.protocol import aggregator_pb2
from fedagg.server.tls import TlsMode

CLIENT_ID_METADATA = "client_id"
REFUSAL_REASONS = (
    "no_client_certificate",
    "common_name_mismatch",
    "unknown_collaborator",
    "missing_sender",
    "wrong_receiver",
    "wrong_federation",
    "wrong_single_cert_name",
    "no_identity",
)


class IdentityError(Exception):
    """A caller whose identity does not check out; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ObserverDenied(Exception):
    """An identified caller that may not use an RPC."""


@dataclass(frozen=True)
class FederationIdentity:
    """What request headers must say, and who may call."""

    federation_uuid: str
    aggregator_uuid: str
    collaborators: frozenset[str]
    single_col_cert_common_name: str = ""
    observers: frozenset[str] = frozenset()
    replicas: frozenset[str] = frozenset()
    """Certificate CNs of ingest replicas (the root of a scale-out tier): a replica authenticated its caller, so
    under mutual TLS a request from one is the request of the collaborator its header names (collaborator RPCs),
    or of the caller its ``client_id`` metadata names (observer RPCs)."""


def peer_common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The CN of the client certificate the TLS handshake verified, if any."""
    names = list(context.auth_context().get("x509_common_name", ()))
    return names[0].decode() if names else None


def metadata_client_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The ``client_id`` metadata OpenFL's director clients send."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_METADATA:
            return value if isinstance(value, str) else value.decode()
    return None


class Authenticator:
    """Applies the identity rules for one federation and TLS mode. Stateless and thread-safe."""

    def __init__(self, identity: FederationIdentity, mode: TlsMode) -> None:
        self.identity = identity
        self.mode = mode

    def authenticate(self, header: aggregator_pb2.MessageHeader, common_name: str | None) -> str:
        """Validate a collaborator request; return the collaborator's name."""
        if self.mode != TlsMode.INSECURE:
            self.validate_collaborator(header, common_name)
        self.check_request(header)
        return header.sender

    def check_peer(self, common_name: str | None) -> None:
        """Before reading an upload: under mutual TLS the certificate must be a collaborator's (not an observer's)."""
        if self.mode != TlsMode.MUTUAL:
            return
        if common_name is None:
            raise IdentityError("no_client_certificate", "no client certificate was presented")
        allowed = {self.identity.single_col_cert_common_name} - {""} or self.identity.collaborators
        if common_name not in allowed:
            raise IdentityError(
                "unknown_collaborator", f"certificate CN {common_name[:64]!r} may not upload task results"
            )

    def validate_collaborator(self, header: aggregator_pb2.MessageHeader, common_name: str | None) -> None:
        """OpenFL's ``valid_collaborator_cn_and_id``: the certificate must vouch for ``header.sender``."""
        sender = _sender(header)
        if self.mode == TlsMode.MUTUAL:
            if common_name is None:
                raise IdentityError("no_client_certificate", "no client certificate was presented")
            cn = common_name
        else:
            cn = sender
        single = self.identity.single_col_cert_common_name
        expected_cn = single or sender
        if cn != expected_cn and not self.vouching(cn):
            what = f"the shared certificate CN {single!r}" if single else f"header.sender {sender!r}"
            raise IdentityError("common_name_mismatch", f"certificate CN {cn!r} does not match {what}")
        if sender not in self.identity.collaborators:
            raise IdentityError("unknown_collaborator", f"collaborator {sender!r} is not authorized here")

    def check_request(self, header: aggregator_pb2.MessageHeader) -> None:
        """OpenFL's ``check_request``: the header must name an authorized sender, this aggregator and federation."""
        identity = self.identity
        if _sender(header) not in identity.collaborators:
            raise IdentityError(
                "unknown_collaborator", f"collaborator {header.sender!r} is not authorized here"
            )
        if header.receiver != identity.aggregator_uuid:
            raise IdentityError(
                "wrong_receiver",
                f"header.receiver is {header.receiver!r}; this aggregator is {identity.aggregator_uuid!r}",
            )
        if header.federation_uuid != identity.federation_uuid:
            raise IdentityError(
                "wrong_federation",
                f"header.federation_uuid is {header.federation_uuid!r}; this aggregator serves "
                f"{identity.federation_uuid!r}",
            )
        if header.single_col_cert_common_name != identity.single_col_cert_common_name:
            raise IdentityError(
                "wrong_single_cert_name",
                f"header.single_col_cert_common_name is {header.single_col_cert_common_name!r}, expected "
                f"{identity.single_col_cert_common_name!r}",
            )

    def authorize_observer(self, common_name: str | None, client_id: str | None) -> str:
        """Who may read metrics, models and status: collaborators and configured observers."""
        if self.mode == TlsMode.INSECURE:
            return common_name or client_id or "anonymous"
        caller = common_name if self.mode == TlsMode.MUTUAL else client_id
        if self.vouching(caller):
            caller = client_id
        if not caller:
            raise IdentityError(
                "no_identity", "no client certificate (or client_id metadata) identifies the caller"
            )
        if caller not in self.allowed_observers():
            raise ObserverDenied(f"{caller!r} is neither a collaborator nor a configured observer")
        return caller

    def vouching(self, common_name: str | None) -> bool:
        """Whether ``common_name`` is an ingest replica vouching for its caller (under mutual TLS only)."""
        return self.mode == TlsMode.MUTUAL and common_name in self.identity.replicas

    def allowed_observers(self) -> Iterable[str]:
        """Names that may call the observer RPCs."""
        return self.identity.collaborators | self.identity.observers


def _sender(header: aggregator_pb2.MessageHeader) -> str:
    if not header.sender:
        raise IdentityError("missing_sender", "header.sender is empty; it must be the collaborator's name")
    return header.sender
