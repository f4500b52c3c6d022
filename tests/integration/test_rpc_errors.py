"""Every RPC validates its input and answers with a deliberate status and an actionable message (spec §3.11)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.app import NOT_THE_LEADER
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.wire import WireType, encode_varint, field_key
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import zero_model
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    ServerThread,
    make_federation,
    make_plan,
    raw_stub,
    refusal,
    serving,
)
from tests.support.uploads import task_results_bytes

HEADER = aggregator_pb2.MessageHeader(sender="one", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID)


def chunks(payload: bytes, size: int = 64, empty_between: bool = False) -> Iterator[base_pb2.DataStream]:
    for start in range(0, len(payload), size):
        if empty_between:
            yield base_pb2.DataStream()
        yield base_pb2.DataStream(npbytes=payload[start : start + size], size=min(size, len(payload) - start))


def upload(tensors: list[base_pb2.NamedTensor], task: str = "train", round_number: int = 0) -> bytes:
    payload = aggregator_pb2.TaskResults(
        header=HEADER, round_number=round_number, task_name=task, data_size=10, tensors=tensors
    )
    return payload.SerializeToString()


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ServerThread]:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())
    with serving(federation, pki, observers=("observer",)) as thread:
        yield thread


@pytest.fixture
def stub(server: ServerThread, pki: Pki) -> Iterator[object]:
    channel, stub = raw_stub(server.address, pki.client("one"))
    yield stub
    channel.close()


UPLOAD_CASES = {
    "empty stream": (b"", grpc.StatusCode.INVALID_ARGUMENT, "the upload is empty"),
    "not a TaskResults": (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "stream ended"),
    "truncated": (
        upload([encode_tensor("loss", np.float32(1), round_number=0, tags=["metric"], report=True)])[:-3],
        grpc.StatusCode.INVALID_ARGUMENT,
        "stream ended inside tensor #0 'loss'",
    ),
    "huge header area": (
        field_key(9, WireType.LEN) + encode_varint(100_000) + bytes(100_000) + upload([]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds limits.header_bytes (65536 bytes)",
    ),
}


CONTENT_CASES = {
    "untagged tensor": (upload([base_pb2.NamedTensor(name="w", tags=["trained"])]), "rejected:codec"),
    "delta without base": (
        upload([encode_tensor("zz", np.ones(2), round_number=0, tags=["trained", "delta"])]),
        "rejected:delta_base",
    ),
    "NaN weights": (
        upload([encode_tensor("w", np.full((2, 3), np.nan), round_number=0, tags=["trained"])]),
        "rejected:non_finite",
    ),
    "unknown task": (upload([], task="fly"), "ignored:unknown_task"),
    "wrong round": (upload([], round_number=7), "ignored:wrong_round"),
}


@pytest.mark.parametrize("case", list(CONTENT_CASES), ids=list(CONTENT_CASES))
def test_unusable_content_is_answered_ok_and_excluded(server: ServerThread, stub: object, case: str) -> None:
    """OpenFL 1.7.1 re-sends anything but OK in a hot loop: content that cannot improve gets OK, and is excluded."""
    payload, verdict = CONTENT_CASES[case]

    reply, call = stub.SendLocalTaskResults.with_call(chunks(payload, size=1 << 16))  # type: ignore[attr-defined]

    assert reply.header.receiver == "one"
    assert ("fedagg-contribution", verdict) in call.trailing_metadata()
    assert [r for r in server.server.aggregator.metrics.history() if r.origin == "one"] == []


@pytest.mark.parametrize("case", list(UPLOAD_CASES), ids=list(UPLOAD_CASES))
def test_bad_uploads(server: ServerThread, stub: object, case: str) -> None:
    payload, code, message = UPLOAD_CASES[case]

    actual = refusal(lambda: stub.SendLocalTaskResults(chunks(payload)))  # type: ignore[attr-defined]

    assert actual[0] == code
    assert message in actual[1]
    assert server.server.aggregator.metrics.history() == []


def test_zero_length_chunks_are_skipped_and_ignored_uploads_answer_ok(
    server: ServerThread, stub: object
) -> None:
    payload = upload(
        [encode_tensor("acc", np.float32(1), round_number=0, tags=["metric", "validate_agg"], report=True)],
        task="aggregated_model_validation",
    )

    first = stub.SendLocalTaskResults(chunks(payload, size=7, empty_between=True))  # type: ignore[attr-defined]
    again = stub.SendLocalTaskResults(chunks(payload))  # type: ignore[attr-defined]

    assert first.header.receiver == again.header.receiver == "one"
    assert len(server.server.aggregator.metrics.history()) == 1, "the duplicate was answered OK and ignored"


def test_bad_tensor_requests(stub: object) -> None:
    def ask(name: str, round_number: int, tags: list[str]) -> tuple[grpc.StatusCode, str]:
        request = aggregator_pb2.GetAggregatedTensorRequest(
            header=HEADER, tensor_name=name, round_number=round_number, tags=tags
        )
        return refusal(lambda: stub.GetAggregatedTensor(request))  # type: ignore[attr-defined]

    assert ask("nope", 0, ["model"]) == (
        grpc.StatusCode.NOT_FOUND,
        "tensor 'nope' is not in round 0's model (tensors: ['b', 'w'])",
    )
    assert ask("w", 3, ["model"])[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert ask("w", 0, ["trained"])[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_reply_header_and_tensor_bytes(stub: object) -> None:
    request = aggregator_pb2.GetAggregatedTensorRequest(
        header=HEADER, tensor_name="w", tags=["model"], require_lossless=True
    )

    reply = stub.GetAggregatedTensor(request)  # type: ignore[attr-defined]

    assert reply.header == aggregator_pb2.MessageHeader(
        sender=AGGREGATOR_UUID, receiver="one", federation_uuid=FEDERATION_UUID
    )
    assert (reply.tensor.name, list(reply.tensor.tags), reply.tensor.lossless) == (
        "w",
        ["compressed", "model"],
        True,
    )
    assert reply.tensor.data_bytes == np.zeros((2, 3), np.float32).tobytes()


def test_observer_rpcs_check_the_caller_and_the_experiment(server: ServerThread, pki: Pki) -> None:
    channel, rogue = raw_stub(server.address, pki.client("rogue"))
    observer_channel, observer = raw_stub(server.address, pki.client("observer"))
    kinds = aggregator_pb2.GetTrainedModelRequest

    denied = refusal(lambda: rogue.GetExperimentDescription(aggregator_pb2.GetExperimentDescriptionRequest()))
    unknown = refusal(
        lambda: observer.GetExperimentDescription(
            aggregator_pb2.GetExperimentDescriptionRequest(name="other")
        )
    )
    bad_type = refusal(lambda: observer.GetTrainedModel(kinds(model_type=7)))  # type: ignore[arg-type]
    not_yet = refusal(lambda: observer.GetTrainedModel(kinds(model_type=kinds.LAST_MODEL)))
    stream = refusal(lambda: list(rogue.GetMetricStream(aggregator_pb2.GetMetricStreamRequest())))
    channel.close()
    observer_channel.close()

    assert denied == (
        grpc.StatusCode.PERMISSION_DENIED,
        "'rogue' is neither a collaborator nor a configured observer",
    )
    assert unknown[0] == grpc.StatusCode.NOT_FOUND
    assert "this aggregator serves 'testfed_0123abcd'" in unknown[1]
    assert bad_type[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert not_yet == (grpc.StatusCode.FAILED_PRECONDITION, "no last model yet: no round has finished")
    assert stream[0] == grpc.StatusCode.PERMISSION_DENIED


def test_unavailable_while_not_accepting(server: ServerThread, stub: object) -> None:
    server.run(server.server.stop_accepting)

    code, message = refusal(lambda: stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER)))  # type: ignore[attr-defined]

    assert code == grpc.StatusCode.UNAVAILABLE
    assert "retry shortly" in message


def test_a_replica_that_lost_its_lease_says_so(server: ServerThread, stub: object) -> None:
    server.run(lambda: server.server.stop_accepting(NOT_THE_LEADER))

    answer = refusal(lambda: stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER)))  # type: ignore[attr-defined]

    assert answer == (grpc.StatusCode.UNAVAILABLE, NOT_THE_LEADER)


def test_plaintext_mode_still_checks_the_sender(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    with serving(federation, None) as thread:
        channel, stub = raw_stub(thread.address, None)
        header = aggregator_pb2.MessageHeader(
            sender="mallory", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
        )
        refused = refusal(lambda: stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header)))
        accepted = stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER))
        channel.close()

    assert refused == (grpc.StatusCode.UNAUTHENTICATED, "collaborator 'mallory' is not authorized here")
    assert [task.name for task in accepted.tasks][:1] == ["aggregated_model_validation"]


def test_upload_with_unauthorized_header_is_refused_before_its_bulk(server: ServerThread, pki: Pki) -> None:
    channel, stub = raw_stub(server.address, pki.client("two"))
    payload = upload([encode_tensor("w", np.zeros(1_000_000), round_number=0, tags=["trained"])])
    sent = []

    def watched() -> Iterator[base_pb2.DataStream]:
        for chunk in chunks(payload, size=1 << 16):
            sent.append(chunk)
            yield chunk

    code, _ = refusal(lambda: stub.SendLocalTaskResults(watched()))
    channel.close()

    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert len(sent) < len(payload) // (1 << 16), "the server stopped reading once the header failed"
    assert task_results_bytes  # the helper module is shared with the unit tests


def test_error_details_stay_short_and_name_no_paths(tmp_path: Path, pki: Pki) -> None:
    """Regression: a NOT_FOUND listing every tensor name used to exceed gRPC's metadata limit (RESOURCE_EXHAUSTED)."""
    model = {f"layer{index:05d}/kernel": np.zeros(1, np.float32) for index in range(5000)}
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), model)
    with serving(federation, pki) as thread:
        channel, stub = raw_stub(thread.address, pki.client("one"))
        request = aggregator_pb2.GetAggregatedTensorRequest(header=HEADER, tensor_name="nope", tags=["model"])
        code, details = refusal(lambda: stub.GetAggregatedTensor(request))
        channel.close()

    assert code == grpc.StatusCode.NOT_FOUND
    assert len(details) < 1024
    assert "... 4992 more" in details
    assert str(tmp_path) not in details


def test_a_full_disk_answers_unavailable_so_clients_back_off(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ENOSPC used to become INTERNAL, which OpenFL 1.7.1 re-sends at once, forever."""
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    payload = upload(
        [encode_tensor("acc", np.float32(1), round_number=0, tags=["metric", "validate_agg"], report=True)],
        task="aggregated_model_validation",
    )

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "state" / "spool"))

    monkeypatch.setattr(federation._store.spool, "accept", disk_full)
    with serving(federation, pki) as thread:
        channel, stub = raw_stub(thread.address, pki.client("one"))
        code, details = refusal(lambda: stub.SendLocalTaskResults(chunks(payload)))
        channel.close()

    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == "the aggregator cannot write its state: ENOSPC (No space left on device); retry later"
    assert federation.describe().storage_failing
    assert federation.metrics.history() == []
