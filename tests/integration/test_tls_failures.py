"""TLS failures seen from both ends: a client prints one fedagg line (nothing from grpc-core), the server counts
the handshakes (gRPC reports no handshake outcome to Python: the fetcher of dynamic credentials is the only
per-handshake hook)."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedagg.pki.authority import CertificateAuthority
from tests.support.models import write_zero_model
from tests.support.pki import SERVER_HOSTS, Pki, make_pki, write_issued
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import FEDERATION_UUID

NATIVE_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path]:
    """A federation's PKI with a valid and an expired certificate for ``one``, and another federation's CA."""
    root = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority("fedagg TLS failures CA")
    server = authority.issue_server("aggregator", SERVER_HOSTS)
    write_issued(root / "server", "tls", server.certificate_pem, server.private_key_pem)
    (root / "server" / "ca.crt").write_bytes(authority.certificate_pem)
    valid = authority.issue_client("one")
    write_issued(root, "one", valid.certificate_pem, valid.private_key_pem)
    expired = authority.issue_client("one", datetime.timedelta(minutes=1))  # from 5 minutes ago
    write_issued(root, "expired", expired.certificate_pem, expired.private_key_pem)
    other = make_pki(tmp_path_factory.mktemp("other"), ())
    return Pki(root, root / "server"), other.ca


@pytest.fixture(scope="module")
def aggregator(files: tuple[Pki, Path], tmp_path_factory: pytest.TempPathFactory) -> FedaggProcess:
    pki, _ = files
    directory = tmp_path_factory.mktemp("aggregator")
    with FedaggProcess(write_config(directory, pki, ("one",), 1, write_zero_model(directory))) as process:
        yield process.wait_for_federation()


def handshakes(process: FedaggProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fedagg_tls_handshakes_total"
    )


def status(process: FedaggProcess, *options: str) -> subprocess.CompletedProcess[str]:
    """``fedagg status`` against the aggregator, as a user runs it (no GRPC_VERBOSITY set)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRPC_")}
    command = [sys.executable, "-m", "fedagg.cli", "status", "--address", process.address, "--timeout", "30"]
    return subprocess.run(
        [*command, "--federation-uuid", FEDERATION_UUID, *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def identity(pki: Pki, name: str, ca: Path | None = None) -> list[str]:
    return ["--ca", str(ca or pki.ca), "--cert", f"{pki.root}/{name}.crt", "--key", f"{pki.root}/{name}.key"]


CASES = {
    "wrong CA": (
        lambda pki, other: identity(pki, "one", other),
        "does not trust the aggregator's certificate",
    ),
    "expired client certificate": (lambda pki, _: identity(pki, "expired"), "TLS"),
    "wrong SNI": (
        lambda pki, _: [*identity(pki, "one"), "--server-name", "elsewhere.example"],
        "elsewhere.example",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tls_failure_is_one_client_line_and_a_counted_handshake(
    aggregator: FedaggProcess, files: tuple[Pki, Path], case: str
) -> None:
    options, message = CASES[case]
    before = handshakes(aggregator)

    refused = status(aggregator, *options(*files))

    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("fedagg: cannot connect: TLS")
    assert message in refused.stderr
    assert not NATIVE_LINE.search(refused.stderr)
    assert handshakes(aggregator) > before
    assert "Handshake failed" in aggregator.wait_for_line("Handshake failed"), "serve keeps grpc-core's trace"


def test_swapped_cert_and_key_exit_2_with_one_line(
    aggregator: FedaggProcess, files: tuple[Pki, Path]
) -> None:
    pki, _ = files

    refused = status(
        aggregator, "--ca", str(pki.ca), "--cert", f"{pki.root}/one.key", "--key", f"{pki.root}/one.crt"
    )

    assert refused.returncode == 2
    assert (
        refused.stderr
        == f"fedagg: --cert {pki.root}/one.key: not a PEM certificate (are --cert and --key swapped?)\n"
    )
