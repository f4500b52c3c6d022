"""SIGTERM during an upload: the drain exits 0 in time, and a restart counts every acknowledged result once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from fedagg.collaborator import AggregatorClient, RetryPolicy
from fedagg.protocol import base_pb2
from fedagg.protocol.model_file import read_model
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.runners import expected_models
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, raw_stub
from tests.support.training import SPECS, train
from tests.support.uploads import TASKS, metric, task_results_bytes, weights

GRACE = 6.0


def observer(address: str, pki: Pki) -> AggregatorClient:
    return AggregatorClient(address, "observer", AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client("observer"))


def wait_until_done(address: str, pki: Pki, names: set[str]) -> None:
    deadline = time.monotonic() + 60
    with observer(address, pki) as client:
        while time.monotonic() < deadline:
            statuses = {c.name: c.status for c in client.experiment_description().collaborators}
            if all(statuses[name] in ("done", "held") for name in names):  # held: done, asking for more
                return
            time.sleep(0.1)
    raise AssertionError("collaborators did not finish round 0")


def one_train_payload() -> bytes:
    step, size = SPECS["one"]
    tensors = [metric("loss", step, 0), weights("w", step, (2, 3), 0), weights("b", step, (3,), 0)]
    return task_results_bytes("one", 0, TASKS[1], size, tensors)


def held_upload(payload: bytes, halfway: threading.Event) -> Iterator[base_pb2.DataStream]:
    """Sends half the upload, then stalls (the collaborator is slow) without ever finishing."""
    middle = len(payload) // 2
    yield base_pb2.DataStream(npbytes=payload[:middle], size=middle)
    halfway.set()
    threading.Event().wait(GRACE * 3)
    yield base_pb2.DataStream(npbytes=payload[middle:], size=len(payload) - middle)


def test_sigterm_during_an_upload_then_restart(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path,
        pki,
        COLLABORATORS,
        1,
        write_zero_model(tmp_path),
        ops={"drain_seconds": 0.5, "grace_seconds": GRACE},
        server={"observers": ["observer"]},
    )
    one_tls = pki.client("one")
    with ThreadPoolExecutor(2) as pool, FedaggProcess(config) as first:
        first.wait_for_federation()
        others = pool.submit(
            train,
            first.address,
            pki,
            {name: SPECS[name] for name in ("two", "three")},
            retry=RetryPolicy(initial=0.1, maximum=0.5, give_up_after=15),
        )
        wait_until_done(first.address, pki, {"two", "three"})
        with AggregatorClient(first.address, "one", AGGREGATOR_UUID, FEDERATION_UUID, tls=one_tls) as one:
            one.send_task_results(0, TASKS[0], 5, [metric("acc", 0.0, 0, "validate_agg")])
        channel, stub = raw_stub(first.address, pki.client("one"))
        halfway = threading.Event()
        upload = pool.submit(stub.SendLocalTaskResults, held_upload(one_train_payload(), halfway))
        assert halfway.wait(30)

        signalled = time.monotonic()
        first.terminate()
        code = first.wait(timeout=GRACE * 2)
        drained_in = time.monotonic() - signalled
        with pytest.raises(grpc.RpcError) as cut:
            upload.result(timeout=30)
        channel.close()

        settings = yaml.safe_load(config.read_text())
        settings["server"]["port"] = first.federation_port  # collaborators ride through to the same address
        config.write_text(yaml.safe_dump(settings))
        with FedaggProcess(config) as second:
            second.wait_for_federation()
            with AggregatorClient(
                second.address, "one", AGGREGATOR_UUID, FEDERATION_UUID, tls=one_tls
            ) as one:
                one.send_task_results(0, TASKS[0], 5, [metric("acc", 0.0, 0, "validate_agg")])  # a resend
                one.send_task_results(
                    0,
                    TASKS[1],
                    SPECS["one"][1],
                    [metric("loss", 1.0, 0), weights("w", 1.0, (2, 3), 0), weights("b", 1.0, (3,), 0)],
                )
                one.send_task_results(0, TASKS[2], 5, [metric("acc", 1.0, 0, "validate_local")])
                assert one.get_tasks().quit
            others.result(timeout=60)
            final = second.wait()

    assert code == 0
    assert drained_in < GRACE
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert final == 0
    np.testing.assert_allclose(
        read_model(tmp_path / "state" / "last.pbuf").tensors["w"],
        expected_models(list(SPECS.values()), 1)[-1],
        rtol=1e-6,
    )
    records = json.loads((tmp_path / "state" / "metrics" / "round-000000.json").read_text())["body"]
    reported = [(r["origin"], r["task"]) for r in records if r["origin"] != "aggregator"]
    assert sorted(reported) == sorted((name, task) for name in COLLABORATORS for task in TASKS), (
        "every acknowledged result is counted exactly once"
    )
