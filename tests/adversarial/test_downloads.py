"""Hostile downloaders: a collaborator that never reads its replies cannot starve the others' downloads, and unread
replies never make the server hold more than the reply budget (issue 16, items 2-4).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fedagg.protocol import aggregator_pb2
from fedagg.server.observer import Limit, ServerObserver
from fedagg.server.options import CallerLimits
from tests.conftest import COLLABORATORS
from tests.support import servers
from tests.support.h2peer import H2Peer
from tests.support.pki import Pki
from tests.support.training import train

TENSOR_VALUES = 1 << 19  # 2 MiB per tensor
MODEL = {f"layer{index}": np.full(TENSOR_VALUES, index, np.float32) for index in range(4)}


class Recorder(ServerObserver):
    """Budget reports and limit breaches, with a condition to wait on (the server's loop reports, tests wait)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.budget: tuple[int, int] = (0, 0)
        self.breaches: list[Limit] = []

    def replies_in_flight(self, size: int, waiting: int) -> None:
        with self.changed:
            self.budget = (size, waiting)
            self.changed.notify_all()

    def limit_breached(self, limit: Limit) -> None:
        with self.changed:
            self.breaches.append(limit)
            self.changed.notify_all()

    def wait_until(self, condition: object, timeout: float = 60) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout), "the server never reported it"  # type: ignore[arg-type]


def resident_bytes() -> int:
    """This process's resident set (the server runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def tensor_request(sender: str, name: str) -> bytes:
    return aggregator_pb2.GetAggregatedTensorRequest(
        header=aggregator_pb2.MessageHeader(
            sender=sender, receiver=servers.AGGREGATOR_UUID, federation_uuid=servers.FEDERATION_UUID
        ),
        tensor_name=name,
        round_number=0,
        tags=["model"],
        require_lossless=True,
    ).SerializeToString()


def test_a_collaborator_that_never_reads_cannot_starve_the_others(tmp_path: Path, pki: Pki) -> None:
    federation = servers.make_federation(tmp_path, servers.make_plan(COLLABORATORS, 1), MODEL)
    observer = Recorder()
    limits = CallerLimits(
        reply_send_seconds=10, reply_min_bytes_per_second=1 << 30
    )  # honest reads: well within
    with servers.serving(
        federation, pki, reply_bytes_in_flight=3 << 20, caller_limits=limits, observer=observer
    ) as thread:
        hostile = COLLABORATORS[0]
        with H2Peer("127.0.0.1", thread.server.port, pki.client(hostile)) as peer:
            streams = [
                peer.open_call("GetAggregatedTensor", [tensor_request(hostile, name)]) for name in MODEL
            ]
            observer.wait_until(
                lambda: observer.budget[0] > 0
            )  # the hostile caller holds a reply it never reads
            honest = servers.client_for(thread, COLLABORATORS[1], pki)
            fetched = {name: honest.get_aggregated_tensor(name, 0, ["model"]) for name in MODEL}
            honest.close()
            # its other downloads are refused once its first stalled; the stalled one is abandoned
            assert all(peer.wait_ended(stream, timeout=60) for stream in streams[1:])
            assert {peer.status(stream) for stream in streams[1:]} == {
                "14"
            }  # UNAVAILABLE: it may retry later
            observer.wait_until(lambda: observer.budget == (0, 0))

    assert {name: float(values[0]) for name, values in fetched.items()} == {
        name: float(values[0]) for name, values in MODEL.items()
    }
    assert Limit.REPLY_SEND in observer.breaches
    assert Limit.REPLIES_PER_CALLER in observer.breaches  # its other downloads waited for its own first


def test_unread_trained_model_calls_hold_one_reply_per_caller(tmp_path: Path, pki: Pki) -> None:
    model = {"w": np.zeros((2, 1 << 20), np.float32), "b": np.zeros(3, np.float32)}  # an 8 MiB model
    federation = servers.make_federation(tmp_path, servers.make_plan(COLLABORATORS, 1), model)
    observer = Recorder()
    with servers.serving(federation, pki, observers=("observer",), observer=observer) as thread:
        train(thread.address, pki)
        request = aggregator_pb2.GetTrainedModelRequest(model_type=1).SerializeToString()
        before = resident_bytes()
        with H2Peer("127.0.0.1", thread.server.port, pki.client("observer")) as peer:
            for _ in range(12):
                peer.open_call("GetTrainedModel", [request])
            observer.wait_until(lambda: observer.budget[1] == 11)  # one reply built, eleven wait their turn
            held = observer.budget[0]
            grown = resident_bytes() - before

    assert 8 << 20 <= held < 9 << 20  # the one reply in flight: the model, not twelve copies of it
    assert grown < (32 << 20) + (20 << 20)  # less than the reply budget + 20 MiB (was 12 x 2 copies)
