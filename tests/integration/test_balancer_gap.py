"""A balancer with no ready aggregator behind it accepts connections and closes them without a TLS alert (HAProxy
and Gateways do, during a failover or a restart): fedagg's commands wait and succeed once an aggregator is there,
while a real certificate rejection still ends them at once (issue 21, "clients ride through")."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from fedagg.cli.exits import EXIT_CONNECTION
from fedagg.collaborator.reference import DatasetSpec, initial_weights
from fedagg.federation.store import publish_model
from tests.integration.test_cli_connections import Run, client_options, run
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config

CLOSED_BEFORE_THE_AGGREGATOR = 3


class ClosingListener:
    """Accepts connections on a loopback port and closes each at once (no TLS, no alert), until told to stop."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.closed = 0
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            connection.close()
            with self.changed:
                self.closed += 1
                self.changed.notify_all()

    def wait_for_closes(self, count: int, timeout: float = 60) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.closed >= count, timeout)

    def stop(self) -> None:
        self._socket.close()
        self._thread.join(timeout=10)


@pytest.mark.parametrize(
    ("command", "identity", "extra"),
    [("status", "observer", ("--timeout", "120")), ("collaborator", "one", ())],
)
def test_a_command_waits_through_a_balancer_gap_and_succeeds(
    tmp_path: Path, pki: Pki, command: str, identity: str, extra: tuple[str, ...]
) -> None:
    """``fedagg status`` reads the aggregator once it is there; ``fedagg collaborator`` trains the whole run."""
    gap = ClosingListener()
    outcome: list[Run] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            run(command, f"localhost:{gap.port}", client_options(pki, identity), *extra, timeout=150)
        )
    )
    thread.start()
    assert gap.wait_for_closes(CLOSED_BEFORE_THE_AGGREGATOR)  # the command keeps trying through the gap
    gap.stop()
    model = tmp_path / "init.pbuf"  # the reference runner's model, which ``fedagg collaborator`` trains
    publish_model(model, initial_weights(DatasetSpec()), 0)
    config = write_config(
        tmp_path, pki, ("one",), 1, model, server={"port": gap.port, "observers": ["observer"]}
    )
    with FedaggProcess(config) as aggregator:
        aggregator.wait_for_federation()
        thread.join(timeout=150)
    [result] = outcome
    assert result.code == 0, result.stderr
    assert "no aggregator ready behind" in result.stderr


def test_a_real_certificate_rejection_still_ends_at_once(tmp_path: Path, pki: Pki, other_pki: Pki) -> None:
    config = write_config(tmp_path, pki, ("one", "two"), 1, write_zero_model(tmp_path))
    with FedaggProcess(config) as aggregator:
        aggregator.wait_for_federation()
        result = run(
            "status", aggregator.address, client_options(other_pki, "one", ca=pki.ca), "--timeout", "120"
        )
    assert result.code == EXIT_CONNECTION, result.stderr
    assert "did not accept this client's certificate" in result.stderr
