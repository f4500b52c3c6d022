"""JSON log lines carry their context, and no log ever holds a key or a certificate."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from fedagg.collaborator import ClientTls
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.training import train

FIELDS = {"time", "level", "logger", "message", "collaborator", "round", "task"}


def test_json_lines_with_collaborator_round_and_task_and_no_secrets(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path, pki, COLLABORATORS, 2, write_zero_model(tmp_path), logging={"level": "debug"}
    )
    with FedaggProcess(config, "--log-format", "json") as fedagg:
        fedagg.wait_for_federation()
        train(fedagg.address, pki)
        code = fedagg.wait()
    key_text = (pki.server_dir / "tls.key").read_text()

    entries = [json.loads(line) for line in fedagg.lines]
    assert code == 0
    assert entries
    assert all(set(entry) >= FIELDS for entry in entries)
    assert {entry["level"] for entry in entries} >= {"info", "debug"}
    contextual = [e for e in entries if e["collaborator"] and e["round"] is not None and e["task"]]
    assert contextual, "upload handling logs name the collaborator, round and task"
    everything = "".join(fedagg.lines)
    assert "BEGIN" not in everything
    assert "PRIVATE KEY" not in everything
    assert key_text.splitlines()[1] not in everything


def test_grpc_core_lines_become_json_records_too(tmp_path: Path, pki: Pki, other_pki: Pki) -> None:
    """grpc-core prints its own lines on stderr (a failed TLS handshake here); JSON mode keeps them JSON."""
    config = write_config(tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path))
    environment = {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "handshaker"}
    with FedaggProcess(config, "--log-format", "json", environment=environment) as fedagg:
        fedagg.wait_for_federation()
        impostor = ClientTls(pki.ca, other_pki.root / "one.crt", other_pki.root / "one.key")
        channel = grpc.secure_channel(fedagg.address, impostor.credentials())
        with pytest.raises(grpc.RpcError):
            aggregator_pb2_grpc.AggregatorStub(channel).GetTasks(aggregator_pb2.GetTasksRequest(), timeout=5)
        channel.close()
        fedagg.terminate()
        fedagg.wait()

    entries = [json.loads(line) for line in fedagg.lines]
    assert any(entry["logger"] == "grpc.core" for entry in entries), "native lines were captured"
