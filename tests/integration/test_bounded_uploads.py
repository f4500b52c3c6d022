"""Bounded before trust: what an upload can make the aggregator hold, measured on a real ``fedagg serve`` process.

Regressions of issue 8, defects 3 and 4: megabytes of bytes before the TaskResults header, 512 tags of 1 MiB, or
a 256 MiB tensor that is not in the model must not grow the server's memory or reach its disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import tensor_header
from fedagg.protocol.wire import WireType, encode_varint, field_key, length_delimited_prefix
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, raw_stub, refusal

MIB = 1 << 20
HEADER = aggregator_pb2.MessageHeader(sender="one", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def results_head(task: str = "train") -> bytes:
    """TaskResults' fields before its tensors."""
    return aggregator_pb2.TaskResults(header=HEADER, task_name=task, data_size=10).SerializeToString()


def streamed(prefix: bytes, total: int, sent: list[int]) -> Iterator[base_pb2.DataStream]:
    """``prefix`` then zeros up to ``total`` bytes, in 1 MiB chunks made as they are pulled (never all at once)."""
    zeros = bytes(MIB)
    position = 0
    while position < total:
        piece = prefix + zeros[: MIB - len(prefix)] if position == 0 else zeros[: min(MIB, total - position)]
        sent.append(len(piece))
        position += len(piece)
        yield base_pb2.DataStream(size=len(piece), npbytes=piece)


def many_huge_tags(count: int, sent: list[int]) -> Iterator[base_pb2.DataStream]:
    """A TaskResults whose first tensor carries ``count`` tags of 1 MiB, made tag by tag as it is pulled."""
    tag = length_delimited_prefix(5, MIB) + b"x" * MIB
    name = length_delimited_prefix(1, 1) + b"w"
    head = results_head() + length_delimited_prefix(5, len(name) + count * len(tag)) + name
    for piece in (head, *(tag for _ in range(count))):
        sent.append(len(piece))
        yield base_pb2.DataStream(size=len(piece), npbytes=piece)


def tensor_prefix(header: base_pb2.NamedTensor, data_length: int) -> bytes:
    """A TaskResults tensor field whose NamedTensor's data (``data_length`` bytes) follows."""
    head = header.SerializeToString() + length_delimited_prefix(7, data_length)
    return length_delimited_prefix(5, len(head) + data_length) + head


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bounded")


@pytest.fixture(scope="module")
def server(directory: Path, pki: Pki) -> Iterator[FedaggProcess]:
    config = write_config(directory, pki, COLLABORATORS, 1, write_zero_model(directory))
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        yield fedagg


@pytest.fixture
def stub(server: FedaggProcess, pki: Pki) -> Iterator[object]:
    channel, stub = raw_stub(server.address, pki.client("one"))
    stub.GetTasks(aggregator_pb2.GetTasksRequest(header=HEADER))  # warm up: the connection and handlers exist
    yield stub
    channel.close()


@pytest.mark.slow
def test_megabytes_before_the_header_and_huge_tags_leave_the_servers_memory_alone(
    server: FedaggProcess, stub: object
) -> None:
    before = peak_rss_mib(server.process.pid)
    sent: list[int] = []
    tags_sent: list[int] = []
    unknown_field = field_key(9, WireType.LEN) + encode_varint(512 * MIB)

    pre_header = refusal(lambda: stub.SendLocalTaskResults(streamed(unknown_field, 512 * MIB, sent)))  # type: ignore[attr-defined]
    huge_tags = refusal(lambda: stub.SendLocalTaskResults(many_huge_tags(512, tags_sent)))  # type: ignore[attr-defined]

    growth = peak_rss_mib(server.process.pid) - before
    assert pre_header == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the upload's header area (everything before its first tensor) exceeds limits.header_bytes (65536 bytes)",
    )
    assert huge_tags[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit for fields other than tensor data is 16384 bytes" in huge_tags[1]
    assert sum(sent) < 64 * MIB, "the server stopped reading"
    assert sum(tags_sent) < 64 * MIB
    assert growth < 20, f"peak RSS grew by {growth:.1f} MiB"


@pytest.mark.slow
def test_a_256_mib_tensor_outside_the_model_is_refused_before_it_is_spooled(
    server: FedaggProcess, stub: object, directory: Path
) -> None:
    before = peak_rss_mib(server.process.pid)
    data_length = 256 * MIB
    header = tensor_header(
        "optimizer_state", (data_length // 4,), round_number=0, tags=["compressed", "trained"]
    )
    prefix = results_head() + tensor_prefix(header, data_length)
    sent: list[int] = []

    reply, call = stub.SendLocalTaskResults.with_call(streamed(prefix, len(prefix) + data_length, sent))  # type: ignore[attr-defined]

    assert reply.header.receiver == "one"
    assert ("fedagg-contribution", "rejected:extra_tensor_budget") in call.trailing_metadata()
    assert sum(sent) < 64 * MIB, "the server answered without reading the bulk"
    assert peak_rss_mib(server.process.pid) - before < 20
    stored = [path for path in (directory / "state").rglob("*") if path.is_file()]
    assert stored, "the state directory is where the test expects it"
    assert max(path.stat().st_size for path in stored) < MIB, "nothing of the bulk reached the disk"


def test_an_observer_certificate_cannot_upload(server: FedaggProcess, pki: Pki) -> None:
    channel, observer = raw_stub(server.address, pki.client("observer"))
    payload = np.zeros(1, np.float32).tobytes()

    code, details = refusal(
        lambda: observer.SendLocalTaskResults(iter([base_pb2.DataStream(size=len(payload), npbytes=payload)]))
    )
    channel.close()

    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == "certificate CN 'observer' may not upload task results"
