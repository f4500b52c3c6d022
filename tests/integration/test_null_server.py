"""The benchmark's null server (bench/null_server.py) trains real OpenFL 1.7.1 collaborators, so it cannot rot,
and its replies are fedagg's, byte for byte (fedagg's are OpenFL's: tests/interop)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bench.models import shapes_for, write_init_model
from bench.openfl_cases import Case, run_case
from bench.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    RunningServer,
    openfl_python,
    start_fedagg,
    start_null,
)
from fedagg.pki.federation import write_federation_pki
from fedagg.protocol import aggregator_pb2
from tests.conftest import require


@pytest.mark.slow
@pytest.mark.interop
def test_the_null_server_serves_openfl_rounds_over_mtls(tmp_path: Path) -> None:
    python = openfl_python()
    require(python is not None, "the OpenFL 1.7.1 venv is missing and cannot be built")
    assert python is not None
    case = Case("null-smoke", 10_000, 2, rounds=2)
    write_federation_pki(tmp_path / "pki", case.names, ["localhost", "127.0.0.1"])

    result = run_case("null", case, tmp_path, tmp_path / "pki", python)

    assert result.server == "null"
    assert (
        len(result.round_seconds) == case.rounds
    )  # every round ended: each collaborator uploaded every task
    assert result.cpu_seconds >= 0


def raw_tensor_reply(server: RunningServer, tags: list[str]) -> bytes:
    header = aggregator_pb2.MessageHeader(
        sender="col-0", receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )
    request = aggregator_pb2.GetAggregatedTensorRequest(
        header=header, tensor_name="layer1", round_number=0, tags=tags, require_lossless=True
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(
            "/openfl.aggregator.Aggregator/GetAggregatedTensor",
            request_serializer=aggregator_pb2.GetAggregatedTensorRequest.SerializeToString,
            response_deserializer=bytes,
        )
        reply: bytes = call(request, timeout=60)
    return reply


@pytest.mark.slow
def test_the_null_server_replies_with_fedaggs_bytes(tmp_path: Path) -> None:
    names = ["col-0", "col-1"]
    init = write_init_model(shapes_for(10_000), tmp_path / "init.pbuf")
    replies = []
    for start in (start_fedagg, start_null):
        server = start(tmp_path / start.__name__, None, names, init)
        try:
            replies.append(raw_tensor_reply(server, ["model"]))
        finally:
            server.kill()

    fedagg, null = replies
    assert len(fedagg) > 10_000 // 8 * 4
    assert null == fedagg
