"""Long-poll GetTasks: an idle collaborator is held until it has work, not told to sleep (issue 11)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc

from fedagg.protocol import aggregator_pb2
from fedagg.server.observer import ServerObserver
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    make_federation,
    make_plan,
    raw_stub,
    serving,
)
from tests.support.uploads import run_round


def header(name: str) -> aggregator_pb2.MessageHeader:
    return aggregator_pb2.MessageHeader(
        sender=name, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )


class HeldCounter(ServerObserver):
    """A server observer that records how many GetTasks calls are held right now."""

    def __init__(self) -> None:
        self.held = 0
        self.changed = threading.Condition()

    def tasks_held(self, change: int) -> None:
        with self.changed:
            self.held += change
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.held == count, timeout=30), f"{self.held} held"


def ask_tasks(stub: object, name: str) -> aggregator_pb2.GetTasksResponse:
    return stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header(name)))  # type: ignore[attr-defined,no-any-return]


def test_a_held_get_tasks_gets_the_next_rounds_tasks_as_soon_as_the_round_starts(
    tmp_path: Path, pki: Pki
) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())
    counter = HeldCounter()
    with serving(federation, pki, observer=counter) as thread, ThreadPoolExecutor(1) as pool:
        run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
        channel, stub = raw_stub(thread.address, pki.client("one"))
        held: Future[aggregator_pb2.GetTasksResponse] = pool.submit(ask_tasks, stub, "one")
        counter.wait_for(1)
        assert not held.done(), "nothing to do yet: the call is held, not answered with a sleep"

        run_round(federation, 0, {"two": (1.0, 10), "three": (1.0, 10)}, SHAPES)
        reply = held.result(timeout=30)
        channel.close()

    assert (reply.round_number, reply.sleep_time) == (1, 0)
    assert [task.name for task in reply.tasks][:1] == ["aggregated_model_validation"]
    counter.wait_for(0)


def test_a_drain_answers_held_calls_instead_of_cutting_them(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())
    counter = HeldCounter()
    with serving(federation, pki, observer=counter) as thread, ThreadPoolExecutor(1) as pool:
        run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
        channel, stub = raw_stub(thread.address, pki.client("one"))
        held = pool.submit(ask_tasks, stub, "one")
        counter.wait_for(1)

        thread.run(thread.server.stop_accepting)
        reply = held.result(timeout=30)
        refused = None
        try:
            ask_tasks(stub, "one")
        except grpc.RpcError as error:
            refused = error.code()
        channel.close()

    assert (reply.round_number, reply.sleep_time, list(reply.tasks)) == (0, 1, [])
    assert refused == grpc.StatusCode.UNAVAILABLE, "new calls are refused while draining"


def test_without_a_hold_idle_collaborators_are_told_to_sleep_as_openfl_does(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2, sleep_seconds=7), zero_model())
    with serving(federation, pki, tasks_hold_seconds=0) as thread:
        run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
        channel, stub = raw_stub(thread.address, pki.client("one"))
        reply = ask_tasks(stub, "one")
        channel.close()

    assert (reply.sleep_time, list(reply.tasks)) == (7, [])
