"""Certificates from a kubelet-mounted secret are rotated without a restart; a broken rotation is refused."""

from __future__ import annotations

import datetime
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg.collaborator import ClientTls, TaskOutput
from fedagg.collaborator.runner import Weights
from fedagg.pki.authority import CertificateAuthority
from fedagg.protocol.model_file import read_model
from tests.conftest import COLLABORATORS
from tests.support import training
from tests.support.models import write_zero_model
from tests.support.pki import SERVER_HOSTS, Pki, write_issued
from tests.support.process import FedaggProcess, write_config
from tests.support.runners import StepRunner, expected_models
from tests.support.secrets import MountedSecret


class GatedRunner(StepRunner):
    """Waits at the start of round 1's training until released."""

    reached = threading.Event()
    release = threading.Event()

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        if round_number == 1:
            self.reached.set()
            assert self.release.wait(60)
        return super().train(weights, round_number)


def handshake(address: str, ca: bytes, client: ClientTls) -> grpc.StatusCode | int:
    """A new mTLS connection that trusts only ``ca``: the health status, or the failure code."""
    assert client.certificate is not None
    assert client.private_key is not None
    credentials = grpc.ssl_channel_credentials(
        ca, client.private_key.read_bytes(), client.certificate.read_bytes()
    )
    with grpc.secure_channel(address, credentials) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            )
        except grpc.RpcError as error:
            return error.code()


def scrape(port: int) -> Mapping[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"
    }


def test_rotation_reaches_new_connections_while_training_goes_on(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_ca = pki.ca.read_bytes()
    new_authority = CertificateAuthority("rotated CA")
    new_server = new_authority.issue_server("aggregator", SERVER_HOSTS, validity=datetime.timedelta(days=30))
    trust_both = old_ca + new_authority.certificate_pem
    (tmp_path / "both.crt").write_bytes(trust_both)
    secret = MountedSecret(tmp_path / "secret")
    secret.publish({name: (pki.server_dir / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")})
    collaborators_pki = Pki(pki.root, tmp_path / "collaborator-trust")
    write_issued(collaborators_pki.server_dir, "unused", b"", b"")
    (collaborators_pki.server_dir / "ca.crt").write_bytes(trust_both)
    config = write_config(tmp_path, None, COLLABORATORS, 2, write_zero_model(tmp_path))
    config.write_text(config.read_text().replace("mode: insecure", f"certificate_dir: {secret.directory}"))
    monkeypatch.setattr(training, "StepRunner", GatedRunner)
    probe = pki.client("observer")

    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        before = (
            handshake(fedagg.address, old_ca, probe),
            handshake(fedagg.address, new_authority.certificate_pem, probe),
        )
        expiry_before = scrape(fedagg.metrics_port)["fedagg_tls_certificate_expiry_timestamp_seconds"]
        result: list[object] = []
        trainer = threading.Thread(
            target=lambda: result.append(training.train(fedagg.address, collaborators_pki))
        )
        trainer.start()
        assert GatedRunner.reached.wait(60), fedagg.log()

        secret.publish(
            {
                "tls.crt": new_server.certificate_pem,
                "tls.key": new_server.private_key_pem,
                "ca.crt": trust_both,
            }
        )
        after = (
            handshake(fedagg.address, old_ca, probe),
            handshake(fedagg.address, new_authority.certificate_pem, probe),
        )
        broken = CertificateAuthority("broken").issue_server("aggregator", SERVER_HOSTS)
        secret.publish(
            {"tls.crt": broken.certificate_pem, "tls.key": new_server.private_key_pem, "ca.crt": trust_both}
        )
        after_broken = handshake(fedagg.address, new_authority.certificate_pem, probe)
        metrics = scrape(fedagg.metrics_port)
        GatedRunner.release.set()
        trainer.join(120)
        code = fedagg.wait()

    serving = health_pb2.HealthCheckResponse.SERVING
    assert before == (serving, grpc.StatusCode.UNAVAILABLE)
    assert after == (grpc.StatusCode.UNAVAILABLE, serving), "new connections verify only against the new CA"
    assert after_broken == serving, (
        "a key that does not match its certificate is refused; the old pair serves"
    )
    assert metrics['fedagg_certificate_reloads_total{outcome="loaded"}'] == 2
    assert metrics['fedagg_certificate_reloads_total{outcome="rejected"}'] == 1
    expiry_after = metrics["fedagg_tls_certificate_expiry_timestamp_seconds"]
    assert expiry_after < expiry_before
    assert expiry_after == pytest.approx(time.time() + 30 * 86400, abs=3600)
    assert result, "training went on across the rotation"
    np.testing.assert_allclose(
        read_model(tmp_path / "state" / "last.pbuf").tensors["w"],
        expected_models(list(training.SPECS.values()), 2)[-1],
        rtol=1e-6,
    )
    assert code == 0
    assert "does not match" in fedagg.log()
