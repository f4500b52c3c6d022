"""A full state directory (a small tmpfs mounted by the test): at upload time and at a round end.

* Uploads that cannot be spooled are refused with UNAVAILABLE, nothing is recorded, the aggregator reports it
  (``fedagg_storage_errors_total``, ``fedagg_storage_failing``, readiness NOT_SERVING), and once space returns the
  collaborators' retries go through and the run ends with the right model.
* A round whose uploads fit but whose next model does not stays closing: ``fedagg_round_end_failing`` is 1,
  readiness NOT_SERVING, GetTasks still answers (sleep); once space returns the round end's retry commits it by
  itself and the run ends with the right model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.collaborator import AggregatorClient, AggregatorError, RetryPolicy
from fedagg.federation.store import publish_model
from fedagg.protocol.base_pb2 import DataStream, NamedTensor
from fedagg.protocol.model_file import read_model
from tests.faults.harness import (
    NAMES,
    NOT_SERVING,
    SERVING,
    TASKS,
    Aggregator,
    FedaggCollaborators,
    assert_counted_once,
    assert_final_model,
    fill,
    free_bytes,
    make_setup,
    poll,
    spooled_uploads,
    stop,
    tmpfs,
)
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.runners import expected_models
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, raw_stub
from tests.support.uploads import metric, task_results_bytes, weights

pytestmark = pytest.mark.slow

ROUNDS = 2
FAIL_FAST = RetryPolicy(initial=0.01, maximum=0.01, give_up_after=0)
PATIENT = RetryPolicy(initial=0.05, maximum=0.5, give_up_after=60)
ROUND_END_RETRY_LIMIT = 60 + 30
"""The round end's retry back-off is at most 60 s; the rest is margin for a loaded machine."""


def storage_errors(aggregator: Aggregator, operation: str) -> float:
    return aggregator.metric("fedagg_storage_errors_total", operation=operation)


def handled(aggregator: Aggregator, method: str, code: str) -> float:
    return sum(
        value
        for (name, labels), value in aggregator.metrics().items()
        if name == "grpc_server_handled_total"
        and ("grpc_method", method) in labels
        and ("grpc_code", code) in labels
    )


def client(address: str, pki: Pki, name: str, retry: RetryPolicy = PATIENT) -> AggregatorClient:
    return AggregatorClient(
        address, name, AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client(name), retry=retry
    )


def test_uploads_to_a_full_disk_get_unavailable_and_go_through_once_space_returns(
    tmp_path: Path, pki: Pki
) -> None:
    with tmpfs(tmp_path / "state", "8m") as state:
        setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
        aggregator = Aggregator(setup.config)
        collaborators: FedaggCollaborators | None = None
        try:
            aggregator.wait_for_federation()
            filler = fill(state)

            with client(setup.address, pki, "one", FAIL_FAST) as one:
                assert [task.name for task in one.get_tasks().tasks] == list(TASKS)
                with pytest.raises(AggregatorError) as refused:
                    one.send_task_results(0, TASKS[0], 5, [metric("acc", 1.0, 0, "validate_agg")])
                pending = [task.name for task in one.get_tasks().tasks]
            errors = storage_errors(aggregator, "spool")
            failing = aggregator.metric("fedagg_storage_failing")
            poll(lambda: aggregator.readiness() == NOT_SERVING, 10, "readiness NOT_SERVING on a full disk")
            recorded = spooled_uploads(state)

            collaborators = FedaggCollaborators(setup, pki)  # they start while the disk is full
            poll(
                lambda: handled(aggregator, "SendLocalTaskResults", "Unavailable") >= 3,
                60,
                "the collaborators' uploads to be refused while the disk is full",
            )
            filler.unlink()
            poll(lambda: aggregator.readiness() == SERVING, 30, "readiness once the disk has space again")
            collaborators.wait(120)
            aggregator.wait_finished(60)
        finally:
            stop(aggregator, collaborators)

        assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
        assert pending == list(TASKS), "the refused upload was not recorded: its task is still to do"
        assert recorded == [], "nothing reached the spool while the disk was full"
        assert errors > 0
        assert failing == 1
        assert_final_model(setup, FedaggCollaborators.expected())
        assert_counted_once(setup)


# A round end that cannot write its model --------------------------------------------------------------------------

MODEL_SHAPES = {"w": (512, 512), "b": (3,)}  # 1 MiB: each training upload and each model file
STEPS = {"one": (1.0, 10), "two": (2.0, 30)}
LEFT_FREE = 64 << 10
"""What the filler leaves: room for a small upload and the close decision, not for a 1 MiB model."""


def trained(client: AggregatorClient, round_number: int) -> list[NamedTensor]:
    """The train task's results: every weight of the global model plus ``step * (round + 1)`` (StepRunner's rule)."""
    step, _ = STEPS[client.collaborator]
    tensors = [metric("loss", step / (round_number + 1), round_number)]
    for name, shape in MODEL_SHAPES.items():
        values = client.get_aggregated_tensor(name, round_number, ["model"])
        assert values.shape == shape, name
        assert np.all(values == values.flat[0]), name
        tensors.append(weights(name, float(values.flat[0]) + step * (round_number + 1), shape, round_number))
    return tensors


def run_tasks(client: AggregatorClient, round_number: int, tasks: tuple[str, ...]) -> None:
    reply = client.get_tasks()
    assert reply.round_number == round_number
    step, size = STEPS[client.collaborator]
    for task in tasks:
        if task == "train":
            client.send_task_results(round_number, task, size, trained(client, round_number))
        else:
            tag = "validate_agg" if task == TASKS[0] else "validate_local"
            client.send_task_results(round_number, task, 5, [metric("acc", step, round_number, tag)])


def one_mib_model(directory: Path) -> Path:
    path = directory / "init.pbuf"
    publish_model(path, {name: np.zeros(shape, np.float32) for name, shape in MODEL_SHAPES.items()}, 0)
    return path


def test_a_round_end_that_cannot_write_its_model_commits_by_itself_once_space_returns(
    tmp_path: Path, pki: Pki
) -> None:
    with tmpfs(tmp_path / "state", "24m") as state:
        # No long poll: GetTasks answers "sleep" at once while the round end waits.
        setup = make_setup(tmp_path, pki, ROUNDS, one_mib_model(tmp_path), server={"tasks_hold_seconds": 0})
        aggregator = Aggregator(setup.config)
        try:
            aggregator.wait_for_federation()
            with client(setup.address, pki, "one") as one, client(setup.address, pki, "two") as two:
                run_tasks(one, 0, TASKS)
                run_tasks(two, 0, TASKS[:2])  # all but the round's last upload
                filler = fill(state)
                os.truncate(filler, filler.stat().st_size - LEFT_FREE)
                free = free_bytes(state)
                two.send_task_results(
                    0, TASKS[2], 5, [metric("acc", 2.0, 0, "validate_local")]
                )  # acknowledged

                poll(lambda: aggregator.metric("fedagg_round_end_failing") == 1, 30, "the round end to fail")
                failures = aggregator.metric("fedagg_round_end_failures_total")
                readiness = aggregator.readiness()
                waiting = one.get_tasks()
                model_written = (state / "models" / "round-000001.pbuf").exists()

                filler.unlink()
                poll(
                    lambda: aggregator.metric("fedagg_round") == 1,
                    ROUND_END_RETRY_LIMIT,
                    "the round end's retry to commit round 0",
                )
                healed = (aggregator.metric("fedagg_round_end_failing"), aggregator.readiness())
                run_tasks(one, 1, TASKS)
                run_tasks(two, 1, TASKS)
                quits = (one.get_tasks().quit, two.get_tasks().quit)
            aggregator.wait_finished(60)
        finally:
            stop(aggregator)

        assert quits == (True, True)
        assert free < 1 << 20, "the next model (1 MiB) cannot fit"
        assert failures >= 1
        assert readiness == NOT_SERVING
        assert (waiting.round_number, waiting.tasks, waiting.quit) == (0, (), False)
        assert waiting.sleep_seconds > 0, "GetTasks still answers while the round end waits: sleep"
        assert not model_written
        assert healed == (0, SERVING)
        assert "round 0 could not end" in aggregator.log()
        final = read_model(setup.state / "last.pbuf")
        expected = expected_models(list(STEPS.values()), ROUNDS)[-1]
        assert final.round_number == ROUNDS
        for name, values in final.tensors.items():
            np.testing.assert_allclose(values, np.full(MODEL_SHAPES[name], expected), rtol=1e-6, err_msg=name)
        assert_counted_once(setup, NAMES)


# Disk faults in the middle of an upload ------------------------------------------------------------------------


def test_a_disk_that_fills_up_during_an_upload_is_reported(tmp_path: Path, pki: Pki) -> None:
    with tmpfs(tmp_path / "state", "8m") as state:
        setup = make_setup(tmp_path, pki, ROUNDS, one_mib_model(tmp_path))
        aggregator = Aggregator(setup.config)
        try:
            aggregator.wait_for_federation()
            filler = fill(state)
            os.truncate(filler, filler.stat().st_size - LEFT_FREE)
            with client(setup.address, pki, "one", FAIL_FAST) as one:
                round_number = one.get_tasks().round_number
                with pytest.raises(AggregatorError) as refused:
                    one.send_task_results(round_number, TASKS[1], 10, trained(one, round_number))
            errors = storage_errors(aggregator, "spool")
            failing = aggregator.metric("fedagg_storage_failing")
        finally:
            stop(aggregator)

    assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
    assert errors > 0, "the disk error is counted"
    assert failing == 1, "the aggregator reports that its disk refuses writes"


def test_an_upload_refused_for_a_full_disk_leaves_nothing_in_the_spool(tmp_path: Path, pki: Pki) -> None:
    with tmpfs(tmp_path / "state", "8m") as state:
        setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
        aggregator = Aggregator(setup.config)
        incoming = state / "spool" / "incoming"
        try:
            aggregator.wait_for_federation()
            fill(state)
            with client(setup.address, pki, "one", FAIL_FAST) as one:
                one.get_tasks()
                with pytest.raises(AggregatorError):
                    one.send_task_results(0, TASKS[0], 5, [metric("acc", 1.0, 0, "validate_agg")])
            poll(
                lambda: not list(incoming.glob("*.part")),
                5,
                "the refused upload's spool file to be deleted",
            )
        finally:
            stop(aggregator)


def test_readiness_stays_not_serving_while_an_upload_arrives_on_a_full_disk(tmp_path: Path, pki: Pki) -> None:
    with tmpfs(tmp_path / "state", "8m") as state:
        setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
        aggregator = Aggregator(setup.config)
        release = threading.Event()
        payload = task_results_bytes("two", 0, TASKS[0], 5, [metric("acc", 2.0, 0, "validate_agg")])

        def held_upload() -> Iterator[DataStream]:
            """Everything but the last bytes (the upload is admitted and arriving), then a stall."""
            yield DataStream(npbytes=payload[:-2], size=len(payload) - 2)
            release.wait(30)
            yield DataStream(npbytes=payload[-2:], size=2)

        try:
            aggregator.wait_for_federation()
            fill(state)
            with (
                client(setup.address, pki, "one", FAIL_FAST) as one,
                client(setup.address, pki, "two") as two,
            ):
                one.get_tasks()
                two.get_tasks()
                with pytest.raises(AggregatorError):
                    one.send_task_results(0, TASKS[0], 5, [metric("acc", 1.0, 0, "validate_agg")])
            poll(lambda: aggregator.readiness() == NOT_SERVING, 10, "readiness NOT_SERVING on a full disk")
            received = aggregator.metric("fedagg_received_bytes_total")
            channel, stub = raw_stub(setup.address, pki.client("two"))
            with channel, ThreadPoolExecutor(1) as pool:
                call = pool.submit(stub.SendLocalTaskResults, held_upload())
                poll(
                    lambda: aggregator.metric("fedagg_received_bytes_total") >= received + len(payload) - 2,
                    10,
                    "the held upload's first bytes received",
                )
                failing = aggregator.metric("fedagg_storage_failing")
                readiness = aggregator.readiness()
                release.set()
                with pytest.raises(grpc.RpcError) as refused:
                    call.result(30)
        finally:
            release.set()
            stop(aggregator)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert failing == 1, "the disk is still full while an upload arrives"
    assert readiness == NOT_SERVING
