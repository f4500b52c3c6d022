"""A slow upload held open mid-stream does not stall anyone else's calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import encode_tensor
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

CHUNK = 2 * 1024 * 1024


def test_calls_are_answered_while_an_upload_is_held_open(tmp_path: Path, pki: Pki) -> None:
    model = {
        "w": np.zeros((2, 3), np.float32),
        "b": np.zeros(3, np.float32),
        "big": np.zeros(64 * 1024 * 1024 // 4, np.float32),
    }
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), model)
    header = aggregator_pb2.MessageHeader(
        sender="one", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )
    payload = aggregator_pb2.TaskResults(
        header=header,
        task_name="train",
        data_size=10,
        tensors=[
            encode_tensor(name, values + 1, round_number=0, tags=["trained"])
            for name, values in model.items()
        ],
    ).SerializeToString()
    release = threading.Event()
    halfway = threading.Event()

    def slow_upload() -> Iterator[base_pb2.DataStream]:
        chunks = [payload[start : start + CHUNK] for start in range(0, len(payload), CHUNK)]
        for index, chunk in enumerate(chunks):
            if index == len(chunks) // 2:
                halfway.set()
                assert release.wait(timeout=60)
            yield base_pb2.DataStream(npbytes=chunk, size=len(chunk))

    with serving(federation, pki) as thread, ThreadPoolExecutor(1) as pool:
        channel, stub = raw_stub(thread.address, pki.client("one"))
        upload = pool.submit(stub.SendLocalTaskResults, slow_upload())
        assert halfway.wait(timeout=30)

        answered = []
        for name in ("two", "three"):
            client = client_for(thread, name, pki)
            answered.append(client.get_tasks().tasks[0].name)
            answered.append(client.get_aggregated_tensor("big", 0, ["model"]).shape)
            client.close()
        still_uploading = not upload.done()
        release.set()
        reply = upload.result(timeout=60)
        channel.close()

    assert still_uploading
    assert answered == ["aggregated_model_validation", (16 * 1024 * 1024,)] * 2
    assert reply.header.receiver == "one"
    assert [r.task for r in federation.metrics.history()] == []
    assert federation.describe().collaborators[0].progress > 0
