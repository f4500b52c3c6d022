"""Idle connections without a certificate cannot exhaust the aggregator's file descriptors (issue 16, item 8):
under a 1024-file limit, 1100 idle TCP connections to the federation port leave a collaborator able to connect and
upload, and the probes answering.
"""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.training import train


def test_idle_connections_leave_room_for_collaborators_disk_and_probes(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, COLLABORATORS, 2, write_zero_model(tmp_path))
    with FedaggProcess(config, open_files=1024) as fedagg:
        fedagg.wait_for_federation()
        assert "max_connections lowered from 1024 to 768" in fedagg.log()
        idle = []
        for _ in range(1100):  # nothing is ever sent on them: no handshake, no certificate
            connection = socket.socket()
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", fedagg.federation_port))
            idle.append(connection)
        with grpc.insecure_channel(f"127.0.0.1:{fedagg.ops_port}") as ops:
            probe = health_pb2_grpc.HealthStub(ops).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert probe.status == health_pb2.HealthCheckResponse.SERVING
            train(
                fedagg.address, pki
            )  # connects (once the idle ones' handshake deadline passed), uploads, quits
            probe = health_pb2_grpc.HealthStub(ops).Check(health_pb2.HealthCheckRequest(), timeout=5)
        for connection in idle:
            connection.close()
        assert fedagg.wait() == 0

    assert "Too many open files" not in fedagg.log()
