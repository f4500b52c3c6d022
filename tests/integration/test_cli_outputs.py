"""``-o json`` of status, metrics, model show and config check; ``model pull``; ``model init --reference``.

One real aggregator (``ops.after_finish: stay``, so models and status stay readable) trains two rounds with two
``fedagg collaborator`` processes; every output is then read as the documented JSON.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.protocol.model_file import read_model
from tests.integration.cli import fedagg, start_collaborators
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import FEDERATION_UUID

pytestmark = pytest.mark.slow


def options(pki: Pki, name: str) -> list[str]:
    tls = pki.client(name)
    return ["--ca", str(tls.root_certificate), "--cert", str(tls.certificate), "--key", str(tls.private_key)]


@pytest.fixture(scope="module")
def finished(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FedaggProcess, Path]]:
    """An aggregator after a two-round experiment with the reference collaborators, still serving."""
    directory = tmp_path_factory.mktemp("outputs")
    fedagg("model", "init", "--reference", "--out", str(directory / "init.pbuf"))
    config = write_config(
        directory,
        pki,
        ("one", "two"),
        2,
        directory / "init.pbuf",
        server={"observers": ["observer"]},
        ops={"after_finish": "stay"},
    )
    with FedaggProcess(config) as server:
        server.wait_for_federation()
        collaborators = start_collaborators(
            ("one", "two"), server.address, FEDERATION_UUID, lambda name: options(pki, name), "--quiet"
        )
        for process in collaborators:
            process.communicate(timeout=120)
        assert [process.returncode for process in collaborators] == [0, 0]
        yield server, config


def observe(server: FedaggProcess, pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    return fedagg(*args, "--address", server.address, "--name", "observer", *options(pki, "observer"))


def test_status_json(finished: tuple[FedaggProcess, Path], pki: Pki) -> None:
    server, _config = finished

    before = time.time()
    document = json.loads(observe(server, pki, "status", "-o", "json").stdout)

    assert set(document) == {
        "experiment",
        "status",
        "round",
        "rounds",
        "progress",
        "time",
        "models",
        "collaborators",
        "tasks",
    }
    assert (document["experiment"], document["status"], document["rounds"]) == (
        FEDERATION_UUID,
        "finished",
        2,
    )
    assert {model["name"]: model["status"] for model in document["models"]} == {
        "best": "ready",
        "last": "ready",
        "init": "ready",
    }
    assert [collaborator["name"] for collaborator in document["collaborators"]] == ["one", "two"]
    for collaborator in document["collaborators"]:
        assert set(collaborator) == {
            "name",
            "status",
            "round",
            "progress",
            "current_task",
            "next_task",
            "last_contact",
            "seconds_since_contact",
            "training_since",
        }
        assert collaborator["status"] == "quit"
        assert before - 300 < collaborator["last_contact"] <= document["time"]
        assert 0 <= collaborator["seconds_since_contact"] < 300
        assert collaborator["training_since"] is None
    assert {"name", "description"} <= set(document["tasks"][0])


def test_status_text_shows_the_last_contact(finished: tuple[FedaggProcess, Path], pki: Pki) -> None:
    server, _config = finished

    text = observe(server, pki, "status").stdout

    assert "last contact" in text
    assert "s ago" in text or "m ago" in text or "just now" in text


def test_metrics_json_lines(finished: tuple[FedaggProcess, Path], pki: Pki) -> None:
    server, _config = finished

    result = observe(server, pki, "metrics", "-o", "json")
    records = [json.loads(line) for line in result.stdout.splitlines()]

    assert records
    assert all(set(record) == {"round", "origin", "task", "metric", "value"} for record in records)
    assert {record["origin"] for record in records} == {"one", "two", "aggregator"}
    assert {record["round"] for record in records} == {0, 1}
    assert any(
        record["origin"] == "aggregator" and record["metric"] == "acc" and 0 <= record["value"] <= 1
        for record in records
    )
    assert "the experiment has finished" in result.stderr


@pytest.mark.parametrize("kind", ["best", "last"])
def test_model_pull_round_trips(
    kind: str, finished: tuple[FedaggProcess, Path], pki: Pki, tmp_path: Path
) -> None:
    server, config = finished
    out = tmp_path / f"{kind}.pbuf"

    result = observe(server, pki, "model", "pull", f"--{kind}", "--out", str(out))
    pulled, published = read_model(out), read_model(config.parent / "state" / f"{kind}.pbuf")

    assert f"the {kind} model, round {published.round_number}" in result.stdout
    assert pulled.round_number == published.round_number
    assert sorted(pulled.tensors) == sorted(published.tensors) == ["softmax/bias", "softmax/weights"]
    for name, values in published.tensors.items():
        np.testing.assert_array_equal(pulled.tensors[name], values)


def test_model_show_json(tmp_path: Path) -> None:
    fedagg(
        "model", "init", "--reference", "--features", "8", "--classes", "3", "--out", str(tmp_path / "m.pbuf")
    )

    document = json.loads(fedagg("model", "show", str(tmp_path / "m.pbuf"), "-o", "json").stdout)

    assert document == {
        "file": str(tmp_path / "m.pbuf"),
        "round": 0,
        "parameters": 27,
        "bytes": 108,
        "tensors": [
            {"name": "softmax/weights", "shape": [8, 3], "elements": 24, "mean": 0.0},
            {"name": "softmax/bias", "shape": [3], "elements": 3, "mean": 0.0},
        ],
    }


def test_model_init_reference_is_what_the_reference_collaborator_trains(tmp_path: Path) -> None:
    result = fedagg("model", "init", "--reference", "--out", str(tmp_path / "init.pbuf"))
    model = read_model(tmp_path / "init.pbuf")

    assert {name: values.shape for name, values in model.tensors.items()} == {
        "softmax/weights": (32, 10),
        "softmax/bias": (10,),
    }
    assert "softmax/weights 32x10" in result.stdout
    both = fedagg("model", "init", "--reference", "--from", "x.npz", "--out", "y.pbuf", check=False)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def test_config_check_json_and_text(finished: tuple[FedaggProcess, Path], pki: Pki, tmp_path: Path) -> None:
    _server, config = finished

    document: dict[str, Any] = json.loads(fedagg("config", "check", str(config), "-o", "json").stdout)
    text = fedagg("config", "check", str(config)).stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("rounds_to_train: 2", "rounds_to_train: two"))
    refused = fedagg("config", "check", str(bad), "-o", "json", check=False)

    assert document["ok"] is True
    assert (document["federation_uuid"], document["collaborators"], document["rounds"]) == (
        FEDERATION_UUID,
        ["one", "two"],
        2,
    )
    assert document["task_group"] is None
    assert document["resumes"] is True  # the experiment above left a checkpoint
    assert [
        (item["name"], item["protocol"], item["tls"], item["plaintext"]) for item in document["listeners"]
    ] == [
        ("federation", "grpc", "mtls", False),
        ("ops", "grpc", None, True),
        ("metrics", "http", None, True),
    ]
    for listener in document["listeners"]:
        assert {"address", "port", "security", "serves"} <= set(listener)
    certificate = document["certificate"]
    assert certificate["names"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert 360 < certificate["days_left"] <= 366
    assert {"file", "subject", "issuer", "not_after"} <= set(certificate)
    assert any("holds a checkpoint" in warning for warning in document["warnings"])
    assert document["ignored"] == []
    assert text.startswith(f"OK: federation {FEDERATION_UUID}")
    assert "federation 127.0.0.1:0 (any free port)  grpc, mutual TLS" in text
    assert "ops        127.0.0.1:0 (any free port)  grpc, plaintext" in text
    assert "metrics    127.0.0.1:0 (any free port)  http, plaintext" in text
    assert "names DNS:localhost, IP:127.0.0.1, IP:::1" in text
    assert refused.returncode == 2
    error = f"{bad}: federation.rounds_to_train: got 'two', expected an integer"
    assert json.loads(refused.stdout) == {
        "ok": False,
        "error": error,
        "errors": [error],
    }


def test_config_check_warns_in_insecure_mode(tmp_path: Path) -> None:
    fedagg("model", "init", "--reference", "--out", str(tmp_path / "init.pbuf"))
    config = write_config(tmp_path, None, ("one",), 1, tmp_path / "init.pbuf")

    text = fedagg("config", "check", str(config)).stdout
    document = json.loads(fedagg("config", "check", str(config), "-o", "json").stdout)

    assert "WARNING: server.tls.mode is insecure" in text
    assert "PLAINTEXT (insecure)" in text
    assert document["certificate"] is None
    assert document["listeners"][0]["plaintext"] is True
    assert any("insecure" in warning for warning in document["warnings"])
