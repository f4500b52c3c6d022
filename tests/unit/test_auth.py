"""OpenFL's identity rules (spec §2.4, §2.5, §3.9) in each TLS mode, including single-certificate mode."""

from __future__ import annotations

import pytest

from fedagg.protocol import aggregator_pb2
from fedagg.server.auth import Authenticator, FederationIdentity, IdentityError, ObserverDenied
from fedagg.server.tls import TlsMode

IDENTITY = FederationIdentity(
    "fed", "aggregator_fed", frozenset({"one", "two"}), observers=frozenset({"ops"})
)
SHARED = FederationIdentity(
    "fed", "aggregator_fed", frozenset({"one", "two"}), single_col_cert_common_name="shared"
)


def header(sender: str = "one", **overrides: str) -> aggregator_pb2.MessageHeader:
    fields = {"sender": sender, "receiver": "aggregator_fed", "federation_uuid": "fed", **overrides}
    return aggregator_pb2.MessageHeader(**fields)


def assert_identity(
    authenticator: Authenticator,
    request_header: aggregator_pb2.MessageHeader,
    common_name: str | None,
    reason: str | None,
) -> None:
    """The header's sender is authenticated, or refused for ``reason``."""
    if reason is None:
        assert authenticator.authenticate(request_header, common_name) == request_header.sender
    else:
        with pytest.raises(IdentityError) as refused:
            authenticator.authenticate(request_header, common_name)
        assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("mode", "common_name", "request_header", "reason"),
    [
        (TlsMode.MUTUAL, "one", header(), None),
        (TlsMode.MUTUAL, "two", header(), "common_name_mismatch"),
        (TlsMode.MUTUAL, None, header(), "no_client_certificate"),
        (TlsMode.MUTUAL, "mallory", header("mallory"), "unknown_collaborator"),
        (TlsMode.MUTUAL, "one", header(receiver="aggregator_other"), "wrong_receiver"),
        (TlsMode.MUTUAL, "one", header(federation_uuid="other"), "wrong_federation"),
        (TlsMode.MUTUAL, "one", header(single_col_cert_common_name="x"), "wrong_single_cert_name"),
        (TlsMode.MUTUAL, "", header(""), "missing_sender"),
        (TlsMode.SERVER_ONLY, None, header("two"), None),
        (TlsMode.INSECURE, None, header("two"), None),
        (TlsMode.INSECURE, None, header("mallory"), "unknown_collaborator"),
        (TlsMode.INSECURE, None, header(""), "missing_sender"),
    ],
)
def test_collaborator_identity(
    mode: TlsMode, common_name: str | None, request_header: aggregator_pb2.MessageHeader, reason: str | None
) -> None:
    assert_identity(Authenticator(IDENTITY, mode), request_header, common_name, reason)


def test_single_certificate_mode_checks_the_shared_cn_and_the_header() -> None:
    authenticator = Authenticator(SHARED, TlsMode.MUTUAL)

    assert authenticator.authenticate(header("two", single_col_cert_common_name="shared"), "shared") == "two"
    with pytest.raises(IdentityError, match="does not match the shared certificate CN 'shared'"):
        authenticator.authenticate(header("two", single_col_cert_common_name="shared"), "two")
    with pytest.raises(IdentityError, match="single_col_cert_common_name is ''"):
        authenticator.authenticate(header("two"), "shared")


def test_observers() -> None:
    mutual = Authenticator(IDENTITY, TlsMode.MUTUAL)

    assert mutual.authorize_observer("ops", None) == "ops"
    assert mutual.authorize_observer("one", None) == "one"
    with pytest.raises(ObserverDenied):
        mutual.authorize_observer("mallory", None)
    with pytest.raises(IdentityError):
        mutual.authorize_observer(None, "ops")
    assert Authenticator(IDENTITY, TlsMode.SERVER_ONLY).authorize_observer(None, "ops") == "ops"
    assert Authenticator(IDENTITY, TlsMode.INSECURE).authorize_observer(None, None) == "anonymous"


TIER = FederationIdentity(
    "fed",
    "aggregator_fed",
    frozenset({"one", "two"}),
    observers=frozenset({"ops"}),
    replicas=frozenset({"ingest-0"}),
)


@pytest.mark.parametrize(
    ("mode", "common_name", "request_header", "reason"),
    [
        (TlsMode.MUTUAL, "ingest-0", header("one"), None),
        (TlsMode.MUTUAL, "ingest-0", header("two"), None),
        (TlsMode.MUTUAL, "ingest-0", header("mallory"), "unknown_collaborator"),
        (TlsMode.MUTUAL, "ingest-0", header(""), "missing_sender"),
        (TlsMode.MUTUAL, "ingest-0", header(receiver="aggregator_other"), "wrong_receiver"),
        (TlsMode.MUTUAL, "ingest-1", header("one"), "common_name_mismatch"),
        (TlsMode.MUTUAL, "one", header("two"), "common_name_mismatch"),
        (TlsMode.SERVER_ONLY, None, header("ingest-0"), "unknown_collaborator"),
    ],
)
def test_a_replica_vouches_for_the_collaborator_its_header_names(
    mode: TlsMode, common_name: str | None, request_header: aggregator_pb2.MessageHeader, reason: str | None
) -> None:
    assert_identity(Authenticator(TIER, mode), request_header, common_name, reason)


def test_a_replica_vouches_for_the_observer_its_client_id_names() -> None:
    mutual = Authenticator(TIER, TlsMode.MUTUAL)

    assert mutual.authorize_observer("ingest-0", "ops") == "ops"
    assert mutual.authorize_observer("ingest-0", "two") == "two"
    with pytest.raises(ObserverDenied, match="'mallory' is neither"):
        mutual.authorize_observer("ingest-0", "mallory")
    with pytest.raises(IdentityError):
        mutual.authorize_observer("ingest-0", None)
    with pytest.raises(ObserverDenied, match="'ingest-1' is neither"):
        mutual.authorize_observer("ingest-1", "ops")
    with pytest.raises(ObserverDenied):  # only a verified certificate vouches
        Authenticator(TIER, TlsMode.SERVER_ONLY).authorize_observer(None, "ingest-0")
