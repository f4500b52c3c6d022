"""Metric streams are capped per caller and queue a bounded number of live records; an upload whose caller goes
away during its commit is committed whole, by the commit alone; OpenFL's constructor keys are accepted (issue 16,
items 6, 7 and 13).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from fedagg.federation.federation import Federation
from fedagg.federation.metric_log import MetricLog, MetricRecord
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.server import AggregatorGRPCServer
from fedagg.server.gate import CallGate
from fedagg.server.metric_stream import MetricStreams
from fedagg.server.observer import Limit
from fedagg.server.options import CallerLimits
from tests.conftest import COLLABORATORS
from tests.support.h2peer import H2Peer
from tests.support.observers import Breaches
from tests.support.pki import Pki
from tests.support.runners import zero_model
from tests.support.servers import make_federation, make_plan, raw_stub, serving
from tests.support.uploads import TASKS, hand_out, task_results_bytes, weights


def test_a_caller_may_keep_only_its_share_of_metric_streams(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    observer = Breaches()
    limits = CallerLimits(metric_streams=2)
    with serving(federation, pki, observers=("observer",), caller_limits=limits, observer=observer) as thread:
        request = aggregator_pb2.GetMetricStreamRequest().SerializeToString()
        with H2Peer("127.0.0.1", thread.server.port, pki.client("observer")) as peer:
            held = [peer.open_call("GetMetricStream", [request]) for _ in range(2)]
            extra = peer.open_call("GetMetricStream", [request])
            assert peer.wait_ended(extra, timeout=30)
            assert peer.status(extra) == "8"  # RESOURCE_EXHAUSTED
            assert not any(stream in peer.ended for stream in held)
        channel, stub = raw_stub(thread.address, pki.client("observer"))  # the held ones were let go
        stream = stub.GetMetricStream(aggregator_pb2.GetMetricStreamRequest(), timeout=30)
        stream.cancel()
        channel.close()
    assert observer.breaches == [Limit.METRIC_STREAMS]


def test_live_records_beyond_the_queue_drop_the_oldest() -> None:
    async def scenario() -> tuple[list[float], list[Limit]]:
        observer = Breaches()
        streams = MetricStreams(CallerLimits(metric_stream_queue=3), CallGate(), observer)
        log = MetricLog()
        records = streams.records("observer", log)
        first = asyncio.ensure_future(anext(records))  # takes the (empty) history and subscribes
        await asyncio.sleep(0)
        log.extend([MetricRecord(1, "one", "train", "loss", float(value)) for value in range(1, 8)])
        await asyncio.sleep(0)  # the records are delivered to the loop
        received = [(await first).value]
        received += [(await anext(records)).value for _ in range(2)]
        return received, observer.breaches

    received, breaches = asyncio.run(scenario())
    assert received == [5.0, 6.0, 7.0]  # the three newest; 1-4 were dropped for a reader that did not keep up
    assert breaches == [Limit.METRIC_STREAM_QUEUE] * 4


def test_an_upload_whose_caller_leaves_during_its_commit_is_committed_whole(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    collaborator = COLLABORATORS[0]
    hand_out(federation, collaborator)
    entered, release, committed = threading.Event(), threading.Event(), threading.Event()
    commit = federation.commit

    def held_commit(intake: Any) -> Any:
        entered.set()
        release.wait(30)
        try:
            return commit(intake)
        finally:
            committed.set()

    monkeypatch.setattr(federation, "commit", held_commit)
    trained = [weights(name, 1.0, values.shape, 0) for name, values in zero_model().items()]
    payload = task_results_bytes(collaborator, 0, TASKS[1], 10, trained)
    caplog.set_level(logging.WARNING)
    with serving(federation, pki) as thread:
        channel, stub = raw_stub(thread.address, pki.client(collaborator))
        call = stub.SendLocalTaskResults.future(
            iter([base_pb2.DataStream(size=len(payload), npbytes=payload)])
        )
        assert entered.wait(30)  # the commit has the upload
        call.cancel()  # the collaborator goes away
        assert thread.call(thread.server.wait_idle(30))  # its call has ended on the server
        release.set()
        assert committed.wait(30)
        channel.close()
        status = federation.describe()

    assert not federation.health.storage_failing
    assert "Task was destroyed" not in caplog.text
    mine = next(entry for entry in status.collaborators if entry.name == collaborator)
    assert TASKS[1] not in (mine.current_task, mine.next_task)  # counted: its train results are in


def test_openfl_network_settings_are_accepted_and_ignored(tmp_path: Path) -> None:
    federation: Federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    network_settings = {
        "agg_addr": "localhost",
        "agg_port": 50051,
        "cert_folder": "cert",
        "client_reconnect_interval": 5,
        "hash_salt": "auto",
        "use_tls": False,
        "require_client_auth": False,
        "disable_client_auth": True,
    }
    server = AggregatorGRPCServer(**{**network_settings, "agg_port": 0}, aggregator=federation)
    assert server.mode.value == "insecure"
    with pytest.raises(TypeError, match="reply_bytes_in_fligth"):
        AggregatorGRPCServer(federation, 0, use_tls=False, reply_bytes_in_fligth=1)
