"""Connecting commands report why they cannot connect, within seconds, and exit with the documented status.

Each case runs the real ``fedagg`` command as a subprocess against a real ``fedagg serve`` (or a closed port)
and reads its stderr as it is written: the message naming the address and the cause must appear within
``REPORT_WITHIN`` seconds (a generous bound: the behaviour under test is that the message appears at all, instead
of minutes of silence), and the exit status must be the one ``--help`` documents.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedagg.cli.exits import EXIT_CONNECTION, EXIT_TIMEOUT
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import FEDERATION_UUID

ROOT = Path(__file__).resolve().parents[2]
REPORT_WITHIN = 10.0  # seconds until the first message naming the address and the cause
COMMANDS = ("collaborator", "status")
pytestmark = pytest.mark.slow


@dataclass
class Run:
    """A finished command: its exit status, its stderr, and when (after the start) each stderr line arrived."""

    code: int
    stderr: str
    lines: list[tuple[float, str]]
    seconds: float

    def first(self, *fragments: str) -> float:
        """Seconds until the first stderr line holding every fragment (fails if there is none)."""
        for at, line in self.lines:
            if all(fragment in line for fragment in fragments):
                return at
        raise AssertionError(f"no stderr line holds {fragments}:\n{self.stderr}")


def run(command: str, address: str, tls: list[str], *extra: str, timeout: float = 60) -> Run:
    """``fedagg <command>`` against ``address``; stderr is read line by line as it comes."""
    identity = ["--name", "one", "--federation-uuid", FEDERATION_UUID] if command == "collaborator" else []
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FEDAGG_")}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedagg.cli", command, "--address", address, *identity, *tls, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environment,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append((time.monotonic() - started, line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    return Run(code, "".join(line for _at, line in lines), lines, time.monotonic() - started)


def client_options(pki: Pki, name: str, ca: Path | None = None) -> list[str]:
    tls = pki.client(name)
    return [
        "--ca",
        str(ca or tls.root_certificate),
        "--cert",
        str(tls.certificate),
        "--key",
        str(tls.private_key),
    ]


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FedaggProcess]:
    """A mutual-TLS aggregator of ``pki`` that waits for its collaborators for the whole module."""
    directory = tmp_path_factory.mktemp("connections")
    config = write_config(
        directory, pki, ("one", "two"), 1, write_zero_model(directory), server={"observers": ["observer"]}
    )
    with FedaggProcess(config) as process:
        process.wait_for_federation()
        yield process


@pytest.fixture(scope="module")
def other_server(other_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FedaggProcess]:
    """An aggregator whose certificate another CA signed."""
    directory = tmp_path_factory.mktemp("other-connections")
    config = write_config(directory, other_pki, ("one", "two"), 1, write_zero_model(directory))
    with FedaggProcess(config) as process:
        process.wait_for_federation()
        yield process


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_port_is_reported_and_retried_until_the_timeout(command: str, pki: Pki) -> None:
    address = f"127.0.0.1:{closed_port()}"

    result = run(command, address, client_options(pki, "one"), "--timeout", "4")

    assert result.first(address, "connection refused", "retrying") < REPORT_WITHIN, result.stderr
    assert len([line for _at, line in result.lines if "retrying" in line]) >= 2, result.stderr
    assert result.code == EXIT_TIMEOUT, result.stderr
    assert "gave up after" in result.stderr
    assert "--timeout" in result.stderr
    assert result.seconds < 4 + REPORT_WITHIN


@pytest.mark.parametrize("command", COMMANDS)
def test_a_server_signed_by_another_ca_is_not_trusted(
    command: str, pki: Pki, other_server: FedaggProcess
) -> None:
    result = run(command, other_server.address, client_options(pki, "one"))

    assert result.code == EXIT_CONNECTION, result.stderr
    assert result.first(other_server.address, "does not trust the aggregator's certificate") < REPORT_WITHIN
    assert "this client's side" in result.stderr
    assert str(pki.ca) in result.stderr  # the --ca that did not sign it


@pytest.mark.parametrize("command", COMMANDS)
def test_a_client_certificate_from_another_ca_is_refused_by_the_server(
    command: str, pki: Pki, other_pki: Pki, server: FedaggProcess
) -> None:
    # trusts the server (pki's CA) but presents a certificate the server's CA did not sign
    result = run(command, server.address, client_options(other_pki, "one", ca=pki.ca))

    assert result.code == EXIT_CONNECTION, result.stderr
    assert result.first(server.address, "did not accept this client's certificate") < REPORT_WITHIN
    assert "server's side" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_wrong_server_name_lists_the_names_the_certificate_carries(
    command: str, pki: Pki, server: FedaggProcess
) -> None:
    result = run(command, server.address, client_options(pki, "one"), "--server-name", "wrong.example.org")

    assert result.code == EXIT_CONNECTION, result.stderr
    assert result.first(server.address, "not valid for 'wrong.example.org'") < REPORT_WITHIN
    for name in ("DNS:localhost", "IP:127.0.0.1", "IP:::1"):  # the SANs of tests/support/pki.py
        assert name in result.stderr


def test_plaintext_against_a_tls_port_and_tls_against_a_plaintext_port(
    pki: Pki, server: FedaggProcess
) -> None:
    plaintext = run("status", server.address, ["--insecure"])
    tls_to_ops = run("status", f"localhost:{server.ops_port}", client_options(pki, "observer"))

    assert plaintext.code == EXIT_CONNECTION, plaintext.stderr
    assert plaintext.first(server.address, "expects TLS") < REPORT_WITHIN
    assert tls_to_ops.code == EXIT_CONNECTION, tls_to_ops.stderr
    assert tls_to_ops.first(f"localhost:{server.ops_port}", "does not speak TLS") < REPORT_WITHIN


def test_a_name_that_does_not_resolve_is_reported(pki: Pki) -> None:
    address = "fedagg-test.invalid:50051"  # .invalid never resolves (RFC 2606)

    result = run("status", address, client_options(pki, "observer"), "--timeout", "2")

    assert result.code == EXIT_TIMEOUT, result.stderr
    assert result.first("fedagg-test.invalid", "cannot resolve") < REPORT_WITHIN


def test_a_missing_certificate_file_is_a_usage_error(pki: Pki, tmp_path: Path) -> None:
    result = run("status", "localhost:1", ["--ca", str(tmp_path / "absent.crt")])

    assert result.code == 2
    assert f"--ca {tmp_path / 'absent.crt'}: No such file or directory" in result.stderr


def test_the_environment_supplies_the_connection_options(pki: Pki, server: FedaggProcess) -> None:
    tls = pki.client("observer")
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("FEDAGG_")},
        "FEDAGG_ADDRESS": server.address,
        "FEDAGG_CA": str(tls.root_certificate),
        "FEDAGG_CERT": str(tls.certificate),
        "FEDAGG_KEY": str(tls.private_key),
        "FEDAGG_NAME": "observer",
    }

    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "status"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"experiment {FEDERATION_UUID}: pending" in result.stdout
    assert "never" in result.stdout  # nobody has called yet: the last contact column


def test_help_documents_the_environment_and_the_exit_statuses() -> None:
    for command in (["collaborator"], ["status"], ["metrics"], ["model", "pull"]):
        text = subprocess.run(
            [sys.executable, "-m", "fedagg.cli", *command, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
        for variable in (
            "FEDAGG_ADDRESS",
            "FEDAGG_CA",
            "FEDAGG_CERT",
            "FEDAGG_KEY",
            "FEDAGG_FEDERATION_UUID",
        ):
            assert variable in text, (command, variable)
        assert "--timeout SECONDS" in text
        assert f"{EXIT_CONNECTION}    cannot connect" in text
        assert f"{EXIT_TIMEOUT}    gave up" in text
