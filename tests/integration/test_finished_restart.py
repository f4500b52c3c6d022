"""A restart on a finished state directory stays routable until every collaborator has its quit job again
(issue 16, item 11: the chart's readiness probe decides whether the Service routes to the pod)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg.protocol import aggregator_pb2
from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, raw_stub
from tests.support.training import train

READINESS = "openfl.aggregator.Aggregator"


def readiness(process: FedaggProcess) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{process.ops_port}") as channel:
        request = health_pb2.HealthCheckRequest(service=READINESS)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_a_finished_experiment_is_routable_until_its_quit_jobs_are_delivered(
    tmp_path: Path, pki: Pki
) -> None:
    config = write_config(
        tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path), server={"quit_redelivery_seconds": 600}
    )
    with FedaggProcess(config) as first:
        train(first.wait_for_federation().address, pki)
        assert first.wait() == 0

    with FedaggProcess(config) as restarted:
        restarted.wait_for_federation()
        restarted.wait_for_line("already finished")
        assert readiness(restarted) == health_pb2.HealthCheckResponse.SERVING
        for name in COLLABORATORS:  # each asks again, as one whose quit reply was lost would
            channel, stub = raw_stub(restarted.address, pki.client(name))
            header = aggregator_pb2.MessageHeader(
                sender=name, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
            )
            assert stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header), timeout=30).quit
            channel.close()
        assert restarted.wait() == 0  # every quit job delivered: the experiment ends without waiting 600 s
