"""Concurrent downloads through a real server hold at most ``reply_bytes_in_flight`` of replies, and give it back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.protocol import aggregator_pb2
from fedagg.server.observer import ServerObserver
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    client_for,
    make_federation,
    make_plan,
    raw_stub,
    serving,
)


class BudgetRecorder(ServerObserver):
    """Every (bytes in flight, replies waiting) the server reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []

    def replies_in_flight(self, size: int, waiting: int) -> None:
        self.reports.append((size, waiting))


TENSOR_VALUES = 1 << 19  # 2 MiB per tensor
MODEL = {f"layer{index}": np.full(TENSOR_VALUES, index, np.float32) for index in range(4)}


def test_downloads_wait_for_the_budget_and_every_one_is_served(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), MODEL)
    budget_bytes = 3 << 20  # one tensor reply at a time (two would be 4 MiB)
    observer = BudgetRecorder()
    with serving(federation, pki, reply_bytes_in_flight=budget_bytes, observer=observer) as thread:
        clients = [client_for(thread, name, pki) for name in COLLABORATORS]
        jobs = [(client, name) for client in clients for name in MODEL]
        with ThreadPoolExecutor(len(jobs)) as pool:
            fetched = list(pool.map(lambda job: job[0].get_aggregated_tensor(job[1], 0, ["model"]), jobs))
        for client in clients:
            client.close()
        in_flight_after = thread.run(lambda: thread.server.reply_budget.in_flight)

    assert [float(values[0]) for values in fetched] == [float(MODEL[name][0]) for _, name in jobs]
    assert all(values.shape == (TENSOR_VALUES,) for values in fetched)
    assert max(size for size, _ in observer.reports) <= budget_bytes  # never two 2 MiB replies at once
    assert len(observer.reports) >= 2 * len(jobs)  # each reply's admission and delivery were reported
    assert observer.reports[-1] == (0, 0)  # what the metrics show once every reply was delivered
    assert in_flight_after == 0


def test_a_download_the_client_abandons_gives_its_bytes_back(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), MODEL)
    with serving(federation, pki, reply_bytes_in_flight=1) as thread:
        channel, stub = raw_stub(thread.address, pki.client(COLLABORATORS[0]))
        request = aggregator_pb2.GetAggregatedTensorRequest(
            header=aggregator_pb2.MessageHeader(
                sender=COLLABORATORS[0], receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
            ),
            tensor_name="layer0",
            round_number=0,
            tags=["model"],
            require_lossless=True,
        )
        abandoned = [stub.GetAggregatedTensor.future(request) for _ in range(8)]
        for call in abandoned:
            call.cancel()
        for call in abandoned:
            with pytest.raises(grpc.FutureCancelledError):
                call.result()
        served = stub.GetAggregatedTensor(request, timeout=30)  # the budget is not stuck with abandoned bytes
        channel.close()
        client = client_for(thread, COLLABORATORS[1], pki)
        client.close()
        in_flight_after = thread.run(lambda: thread.server.reply_budget.in_flight)

    assert served.tensor.name == "layer0"
    assert in_flight_after == 0
