"""A real Prometheus scrapes fedagg during a 2-round run."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from fedagg.collaborator import AggregatorClient, AggregatorError, RetryPolicy
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.prometheus import PrometheusServer, promtool
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.support.training import train


def test_prometheus_scrapes_a_two_round_run(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path, pki, COLLABORATORS, 2, write_zero_model(tmp_path), ops={"after_finish": "stay"}
    )
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{fedagg.metrics_port}"]) as prometheus:
            rogue = AggregatorClient(
                fedagg.address,
                "rogue",
                AGGREGATOR_UUID,
                FEDERATION_UUID,
                tls=pki.client("rogue"),
                retry=RetryPolicy(give_up_after=0),
            )
            with pytest.raises(AggregatorError):
                rogue.get_tasks()
            collaborators = train(fedagg.address, pki)
            sent = sum(collaborator.client.bytes_sent for collaborator in collaborators)

            round_ = prometheus.wait_for("fedagg_round == 2")
            handled = prometheus.wait_for(
                'sum(grpc_server_handled_total{grpc_method="GetTasks",grpc_code="OK"}) > 0'
            )
            refused = prometheus.wait_for(
                'sum(fedagg_auth_failures_total{reason="unknown_collaborator"}) > 0'
            )
            received = prometheus.wait_for(f"fedagg_received_bytes_total >= {sent}")
            accuracy = prometheus.wait_for(
                'fedagg_aggregated_metric{task="aggregated_model_validation",metric="acc"}'
            )
            state = prometheus.wait_for('fedagg_experiment_state{state="finished"} == 1')
            uploads = prometheus.wait_for(
                'sum(grpc_server_msg_received_total{grpc_method="SendLocalTaskResults"})'
            )
            replies_held = prometheus.wait_for(  # every delivered download gave its bytes back
                "fedagg_reply_bytes_in_flight + fedagg_downloads_waiting == 0"
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{fedagg.metrics_port}/metrics", timeout=10) as reply:
            exposition = reply.read()
        fedagg.terminate()
        code = fedagg.wait()

    check = subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert round_ == 2
    assert handled > 0
    assert refused >= 1
    assert received >= sent > 0
    assert accuracy == pytest.approx(3.1, rel=1e-6)  # validation of round 1's model (closed form)
    assert state == 1
    assert uploads >= 2 * 3 * 3
    assert replies_held == 0
    assert code == 0
