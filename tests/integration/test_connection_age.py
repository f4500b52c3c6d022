"""Long-lived connections end: a revoked collaborator is refused even on the one channel OpenFL 1.9 keeps.

OpenFL 1.8/1.9 collaborators open one connection for the whole experiment; certificates are checked only in the
TLS handshake, so without a maximum connection age a rotation or revocation would never reach them (issue 9).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from fedagg.pki.authority import CertificateAuthority
from fedagg.protocol import aggregator_pb2
from fedagg.server.tls import CertificateFiles, CertificateSource
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import zero_model
from tests.support.secrets import MountedSecret
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    make_federation,
    make_plan,
    raw_stub,
    serving,
)

HEADER = aggregator_pb2.MessageHeader(sender="one", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID)


def first_failure(stub: object, within: float) -> grpc.StatusCode | None:
    """Call GetTasks on the same channel until a call fails (the first failure's code) or ``within`` passes."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER), timeout=5)  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return None


def test_a_revoked_collaborator_is_refused_once_its_connection_ages_out(tmp_path: Path, pki: Pki) -> None:
    secret = MountedSecret(tmp_path / "secret")
    secret.publish({name: (pki.server_dir / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")})
    files = CertificateFiles(*(secret.directory / name for name in ("tls.crt", "tls.key", "ca.crt")))
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())

    with serving(
        federation,
        pki,
        certificate_source=CertificateSource(files, require_client_auth=True),
        max_connection_age=1.0,
        max_connection_age_grace=0.5,
    ) as thread:
        channel, stub = raw_stub(thread.address, pki.client("one"))
        assert stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER)).tasks  # connected
        other = CertificateAuthority("another CA").certificate_pem
        secret.publish(
            {"ca.crt": other, **{n: (pki.server_dir / n).read_bytes() for n in ("tls.crt", "tls.key")}}
        )
        failure = first_failure(stub, within=20)
        channel.close()

    assert failure == grpc.StatusCode.UNAVAILABLE, "the new handshake refuses the revoked client certificate"
