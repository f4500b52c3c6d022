"""JSON log lines carry their context, and no log ever holds a key or a certificate."""

from __future__ import annotations

import json
from pathlib import Path

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
