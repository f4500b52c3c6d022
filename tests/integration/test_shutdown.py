"""The end of an experiment: models written, readiness, the command hook, the exit status, read-only mode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg.collaborator import AggregatorClient
from fedagg.protocol.model_file import read_model
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.support.training import train

RECORD_ENVIRONMENT = "import json, os, sys; json.dump({k: v for k, v in os.environ.items() if k.startswith('FEDAGG_')}, open(sys.argv[1], 'w'))"


def test_after_the_last_quit_job_the_command_hook_sees_the_final_models(tmp_path: Path, pki: Pki) -> None:
    record = tmp_path / "hook.json"
    config = write_config(
        tmp_path,
        pki,
        COLLABORATORS,
        2,
        write_zero_model(tmp_path),
        hooks={"command": [sys.executable, "-c", RECORD_ENVIRONMENT, str(record)]},
        ops={"exit_code": 3},
    )
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        train(fedagg.address, pki)
        code = fedagg.wait()

    environment = json.loads(record.read_text())
    assert code == 3
    assert environment["FEDAGG_STATE"] == "finished"
    assert environment["FEDAGG_FINAL_ROUND"] == "2"
    assert read_model(Path(environment["FEDAGG_LAST_MODEL"])).round_number == 2
    assert read_model(Path(environment["FEDAGG_BEST_MODEL"])).round_number == 1
    assert float(environment["FEDAGG_BEST_METRIC"]) > 0


def test_a_hanging_hook_does_not_hang_the_exit(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path,
        pki,
        COLLABORATORS,
        1,
        write_zero_model(tmp_path),
        hooks={
            "command": [sys.executable, "-c", "import time; time.sleep(600)"],
            "command_timeout_seconds": 1,
        },
    )
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        train(fedagg.address, pki)
        code = fedagg.wait(timeout=30)

    assert code == 0
    assert "shutdown hook command failed: timed out" in fedagg.log()
    assert (tmp_path / "state" / "last.pbuf").is_file()


def test_stay_mode_keeps_models_and_status_readable_until_stopped(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path,
        pki,
        COLLABORATORS,
        1,
        write_zero_model(tmp_path),
        ops={"after_finish": "stay"},
        server={"observers": ["observer"]},
    )
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        train(fedagg.address, pki)
        with AggregatorClient(
            fedagg.address, "observer", AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client("observer")
        ) as observer:
            status = observer.experiment_description()
            model = observer.trained_model(best=False)
            metrics = list(observer.metric_stream())
        with AggregatorClient(
            fedagg.address, "two", AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client("two")
        ) as two:
            again = two.get_tasks()
        with grpc.insecure_channel(f"localhost:{fedagg.ops_port}") as channel:
            ready = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service="openfl.aggregator.Aggregator"), timeout=5)
                .status
            )
        running = fedagg.process.poll() is None
        fedagg.terminate()
        code = fedagg.wait()

    assert running
    assert status.status == "finished"
    assert model.round_number == 1
    assert {m.metric_origin for m in metrics} == {*COLLABORATORS, "aggregator"}
    assert again.quit
    assert ready == health_pb2.HealthCheckResponse.SERVING
    assert code == 0
