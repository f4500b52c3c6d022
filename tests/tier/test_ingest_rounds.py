"""Ingest replicas in front of a serving root: its federation counts the replicas' claims, closes the round,
publishes COLLECTING and builds the next model from the partials. Two rounds of four collaborators through two
replicas give the model a single pod builds, and the replicas serve it as the root itself does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from fedagg.federation.federation import Federation
from fedagg.federation.plan import StragglerPolicySpec
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, tier_pb2
from fedagg.protocol.codec import encode_tensor
from fedagg.tier.ingest_replica import IngestReplica
from tests.support.pki import Pki
from tests.support.servers import ManualClock, make_federation, make_plan
from tests.support.uploads import submit
from tests.tier.conftest import COLLABORATORS
from tests.tier.ingest_tier import (
    INITIAL,
    PLAN,
    SERVICE,
    RootParts,
    collaborator,
    header,
    raw_tensor,
    running_tier,
    send_results,
    site_model,
)
from tests.tier.tier_rounds import Work, model, single_pod, tick_on_partials, work

OBSERVER_CALLS = (
    ("GetMetricStream", aggregator_pb2.GetMetricStreamRequest()),
    (
        "GetTrainedModel",
        aggregator_pb2.GetTrainedModelRequest(model_type=aggregator_pb2.GetTrainedModelRequest.LAST_MODEL),
    ),
)


async def raw_replies(channel: grpc.aio.Channel, method: str, request: Message) -> list[bytes]:
    """Every reply of a server-streaming (or, on the wire, unary) call, as bytes."""
    call = channel.unary_stream(f"{SERVICE}{method}", type(request).SerializeToString, None)
    return [reply async for reply in call(request)]


async def round_through(pki: Pki, replicas: Sequence[IngestReplica], round_number: int) -> None:
    """Every collaborator asks a replica for its tasks and uploads their results there."""
    for index, name in enumerate(COLLABORATORS):
        async with collaborator(pki, name, replicas[index % len(replicas)].port) as channel:
            stub = aggregator_pb2_grpc.AggregatorStub(channel)
            tasks = await stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header(name)))
            assert tasks.round_number == round_number
            assert [task.name for task in tasks.tasks] == list(PLAN.tasks)
            for task, size, tensors in work(index, round_number):
                assert await send_results(channel, name, round_number, task, size, tensors) == ()


def test_rounds_through_ingest_replicas_build_the_single_pod_model(pki: Pki, tmp_path: Path) -> None:
    single = single_pod(tmp_path / "single")

    async def scenario() -> None:
        async with running_tier(pki, tmp_path, counting=True) as (root, replicas):
            ticking = asyncio.create_task(tick_on_partials(root))
            for each in replicas:
                await each.acted_on(0, tier_pb2.OPEN)
            await round_through(pki, replicas, 0)
            for index, each in enumerate(replicas):  # tasks of round 1 come once the replica serves round 1
                async with collaborator(pki, COLLABORATORS[index], each.port) as channel:
                    stub = aggregator_pb2_grpc.AggregatorStub(channel)
                    request = aggregator_pb2.GetTasksRequest(header=header(COLLABORATORS[index]))
                    assert (await stub.GetTasks(request)).round_number == 1
                    current = each.uploads.round
                    assert current is not None
                    assert current.number == 1
            async with (
                collaborator(pki, "one", replicas[0].port) as via_replica,
                collaborator(pki, "one", root.server.port) as direct,
            ):
                for name in INITIAL:
                    for tags in (["model"], ["aggregated", "delta", "compressed"]):
                        served = await raw_tensor(via_replica, "one", name, tags, round_number=1)
                        assert served == await raw_tensor(direct, "one", name, tags, round_number=1)
            async with collaborator(pki, "four", replicas[1].port) as channel:
                task, size, tensors = work(3, 0)[1]
                late = await send_results(channel, "four", 0, task, size, tensors)
                assert late == ("ignored:wrong_round",)
            await round_through(pki, replicas, 1)
            for each in replicas:
                await each.acted_on(2, tier_pb2.FINISHED)
                assert each.ready
            async with collaborator(pki, "two", replicas[1].port) as channel:
                stub = aggregator_pb2_grpc.AggregatorStub(channel)
                assert (await stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("two")))).quit
            async with (
                collaborator(pki, "three", replicas[0].port) as via_replica,
                collaborator(pki, "three", root.server.port) as direct,
            ):
                for method, request in OBSERVER_CALLS:
                    relayed = await raw_replies(via_replica, method, request)
                    assert len(relayed) > 0
                    assert relayed == await raw_replies(direct, method, request)
            ticking.cancel()
            for round_number in (1, 2):
                expected, got = model(single, round_number), model(root.parts.federation, round_number)
                for name in INITIAL:
                    np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
            got_records, expected_records = history(root.parts.federation), history(single)
            assert len(got_records) > 2 * len(COLLABORATORS) * len(PLAN.tasks)  # theirs, and the aggregates
            assert [record[:5] for record in got_records] == [record[:5] for record in expected_records]
            assert [record[5] for record in got_records] == pytest.approx([r[5] for r in expected_records])

    asyncio.run(scenario())


def history(federation: Federation) -> list[tuple[int, str, str, str, tuple[str, ...], float]]:
    """The metric history, sorted."""
    return sorted(
        (r.round_number, r.origin, r.task, r.name, r.tags, r.value) for r in federation.metrics.history()
    )


def poisoned(index: int, round_number: int) -> list[Work]:
    """Collaborator ``index``'s tasks with its train results poisoned by a NaN (rejected on arrival)."""
    tasks = work(index, round_number)
    task, size, tensors = tasks[1]
    name, values = next(iter(site_model(index).items()))
    bad = np.array(values, copy=True)
    bad.flat[0] = np.nan
    tasks[1] = (
        task,
        size,
        [encode_tensor(name, bad, round_number=round_number, tags=("trained",)), *tensors[1:]],
    )
    return tasks


def test_an_upload_a_replica_rejects_counts_as_done_at_the_root_as_in_a_single_pod(
    pki: Pki, tmp_path: Path
) -> None:
    single = make_federation(tmp_path / "single", PLAN, INITIAL)
    for index, name in enumerate(COLLABORATORS):
        for task, size, tensors in (poisoned if index == 3 else work)(index, 0):
            submit(single, name, 0, task, size, tensors)
    assert single.round_number == 1, (
        "the single pod closes the round with the rejected upload counted as done"
    )

    async def scenario() -> None:
        async with running_tier(pki, tmp_path, counting=True) as (root, replicas):
            ticking = asyncio.create_task(tick_on_partials(root))
            for each in replicas:
                await each.acted_on(0, tier_pb2.OPEN)
            for index, name in enumerate(COLLABORATORS):
                async with collaborator(pki, name, replicas[index % len(replicas)].port) as channel:
                    for task, size, tensors in (poisoned if index == 3 else work)(index, 0):
                        answer = await send_results(channel, name, 0, task, size, tensors)
                        assert answer == (("rejected:non_finite",) if index == 3 and task == "train" else ())
            for each in replicas:
                await each.acted_on(1, tier_pb2.OPEN)
            ticking.cancel()
            rejected = root.parts.book.rejected(0)
            assert list(rejected) == [(COLLABORATORS[3], "train")]
            assert rejected[(COLLABORATORS[3], "train")].startswith("non_finite: ")
            expected, got = model(single, 1), model(root.parts.federation, 1)
            for name in INITIAL:
                np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)

    asyncio.run(scenario())


def test_a_straggler_that_trained_is_left_out_of_the_replicas_partials_as_a_single_pod_leaves_it_out(
    pki: Pki, tmp_path: Path
) -> None:
    plan = make_plan(COLLABORATORS, 1, stragglers=StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=2))
    single_clock, root_clock = ManualClock(), ManualClock()
    single = make_federation(tmp_path / "single", plan, INITIAL, clock=single_clock)
    single.get_tasks(COLLABORATORS[0])
    for index, name in enumerate(COLLABORATORS):
        for task, size, tensors in work(index, 0)[: 2 if index == 3 else 3]:  # "four" never validates locally
            assert submit(single, name, 0, task, size, tensors).accepted
    single_clock.now += 31
    single.tick()

    async def scenario() -> None:
        parts = RootParts.counting(tmp_path, plan, root_clock)
        async with running_tier(pki, tmp_path, parts=parts) as (root, replicas):
            ticking = asyncio.create_task(tick_on_partials(root))
            for each in replicas:
                await each.acted_on(0, tier_pb2.OPEN)
            for index, name in enumerate(COLLABORATORS):
                async with collaborator(pki, name, replicas[index % len(replicas)].port) as channel:
                    stub = aggregator_pb2_grpc.AggregatorStub(channel)
                    await stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header(name)))
                    for task, size, tensors in work(index, 0)[: 2 if index == 3 else 3]:
                        assert await send_results(channel, name, 0, task, size, tensors) == ()
            root_clock.now += 31
            await asyncio.get_running_loop().run_in_executor(None, root.parts.federation.tick)
            for each in replicas:
                await each.acted_on(1, tier_pb2.FINISHED)
            ticking.cancel()
            expected, got = model(single, 1), model(root.parts.federation, 1)
            for name in INITIAL:
                np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
            # A single pod records a straggler's own metrics as they arrive; the root learns collaborators' own
            # metrics with the partials, which leave the straggler out (README, Scale-out tier).
            got_records = history(root.parts.federation)
            expected_records = [r for r in history(single) if r[1] != COLLABORATORS[3]]
            assert [r[:5] for r in got_records] == [r[:5] for r in expected_records]
            assert [r[5] for r in got_records] == pytest.approx([r[5] for r in expected_records])

    asyncio.run(scenario())
