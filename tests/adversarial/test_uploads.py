"""Hostile uploaders: an upload of many tiny tensors never stalls the others' calls or the probes, and half-open
uploads of one task are capped per caller and end when idle (issue 16, items 1 and 10).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.wire import length_delimited_prefix
from fedagg.server.observer import Limit
from fedagg.server.options import CallerLimits, ReceiveLimits
from tests.conftest import COLLABORATORS
from tests.support import servers
from tests.support.h2peer import H2Peer
from tests.support.models import write_zero_model
from tests.support.observers import Breaches
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.runners import zero_model
from tests.support.training import train
from tests.support.uploads import TASKS, hand_out, task_results_bytes, weights

CHUNK = 2 << 20


def header(sender: str) -> aggregator_pb2.MessageHeader:
    return aggregator_pb2.MessageHeader(
        sender=sender, receiver=servers.AGGREGATOR_UUID, federation_uuid=servers.FEDERATION_UUID
    )


def tiny_tensor_upload(sender: str, total: int = 4 << 20) -> bytes:
    """A TaskResults of ``total`` bytes made of ~45-byte tensors (about 93k of them in 4 MiB)."""
    head = aggregator_pb2.TaskResults(
        header=header(sender), task_name=TASKS[1], data_size=1
    ).SerializeToString()
    tensor = base_pb2.NamedTensor(name="t" * 24, round_number=0, data_bytes=b"\0" * 4).SerializeToString()
    field = length_delimited_prefix(5, len(tensor)) + tensor
    return head + field * ((total - len(head)) // len(field))


def chunks(payload: bytes) -> Iterator[base_pb2.DataStream]:
    for start in range(0, len(payload), CHUNK):
        piece = payload[start : start + CHUNK]
        yield base_pb2.DataStream(size=len(piece), npbytes=piece)


def test_tiny_tensor_uploads_never_stall_probes_or_honest_calls(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path))
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        hostile = COLLABORATORS[0]
        channel, stub = servers.raw_stub(fedagg.address, pki.client(hostile))
        stub.GetTasks(
            aggregator_pb2.GetTasksRequest(header=header(hostile)), timeout=30
        )  # its upload is read
        channel.close()
        uploads = [tiny_tensor_upload("intruder"), tiny_tensor_upload(hostile), tiny_tensor_upload(hostile)]
        outcomes: list[grpc.StatusCode] = []

        def upload(payload: bytes) -> None:
            channel, stub = servers.raw_stub(fedagg.address, pki.client(hostile))
            try:
                stub.SendLocalTaskResults(chunks(payload), timeout=120)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                outcomes.append(error.code())
            finally:
                channel.close()

        senders = [threading.Thread(target=upload, args=(payload,)) for payload in uploads]
        ops = grpc.insecure_channel(f"127.0.0.1:{fedagg.ops_port}")
        honest_channel, honest = servers.raw_stub(fedagg.address, pki.client(COLLABORATORS[1]))
        probes = 0
        for sender in senders:
            sender.start()
        while any(sender.is_alive() for sender in senders) or probes < 3:
            health = health_pb2_grpc.HealthStub(ops).Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            honest.Ping(aggregator_pb2.PingRequest(header=header(COLLABORATORS[1])), timeout=1)
            probes += 1
        ops.close()
        honest_channel.close()

    assert outcomes.count(grpc.StatusCode.UNAUTHENTICATED) == 1  # the intruder: refused at the header
    assert probes >= 3


def test_half_open_uploads_of_one_task_are_capped_and_end_when_idle(tmp_path: Path, pki: Pki) -> None:
    federation = servers.make_federation(tmp_path, servers.make_plan(COLLABORATORS, 1), zero_model())
    collaborator = COLLABORATORS[0]
    hand_out(federation, collaborator)
    trained = [weights(name, 1.0, values.shape, 0) for name, values in zero_model().items()]
    payload = task_results_bytes(collaborator, 0, TASKS[1], 10, trained)
    first_half = base_pb2.DataStream(size=len(payload) // 2, npbytes=payload[: len(payload) // 2])
    limits = CallerLimits(concurrent_uploads_per_task=2, upload_idle_seconds=2)
    with servers.serving(federation, pki, caller_limits=limits) as thread:
        with H2Peer("127.0.0.1", thread.server.port, pki.client(collaborator), window=1 << 20) as peer:
            held = [
                peer.open_call("SendLocalTaskResults", [first_half.SerializeToString()], end=False)
                for _ in range(2)
            ]
            extra = peer.open_call("SendLocalTaskResults", [first_half.SerializeToString()], end=False)
            assert peer.wait_ended(extra, timeout=30)
            assert peer.status(extra) == "14"  # UNAVAILABLE: the collaborator may send again later
            assert all(peer.wait_ended(stream, timeout=60) for stream in held)  # idle: ended, nothing kept
            assert {peer.status(stream) for stream in held} == {"14"}
        train(thread.address, pki)  # the round still completes with every collaborator's upload
        assert federation.finished


def test_decode_limits_refuse_the_upload_and_are_counted_by_name(tmp_path: Path, pki: Pki) -> None:
    federation = servers.make_federation(tmp_path, servers.make_plan(COLLABORATORS, 1), zero_model())
    collaborator = COLLABORATORS[0]
    hand_out(federation, collaborator)
    observer = Breaches()
    payload = tiny_tensor_upload(collaborator, total=40 << 10)  # about 900 tensors, within the header area
    with servers.serving(
        federation, pki, receive_limits=ReceiveLimits(tensors_per_upload=100), observer=observer
    ) as thread:
        channel, stub = servers.raw_stub(thread.address, pki.client(collaborator))
        code, details = servers.refusal(lambda: stub.SendLocalTaskResults(chunks(payload), timeout=30))
        channel.close()

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 100 tensors" in details
    assert observer.breaches == [Limit.TENSORS_PER_UPLOAD]
