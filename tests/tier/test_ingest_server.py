"""Ingest replicas in front of a real root over real mTLS on loopback (:mod:`tests.tier.ingest_tier`), the root's
round notices published by the test: relayed calls, downloads, uploads and claims, partials, a root that is down,
a restarted replica, a claim the root refuses."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, tier_pb2
from fedagg.tier.root_service import Context, TierService
from tests.support.pki import Pki
from tests.tier.conftest import REPLICAS
from tests.tier.ingest_tier import (
    COLLABORATORS,
    INITIAL,
    PLAN,
    collaborator,
    header,
    opened,
    raw_tensor,
    refused,
    replica,
    retried_upload,
    running_tier,
    site_model,
    site_weight,
    start_root,
    upload,
)


def test_collaborator_calls_through_replicas_are_answered_by_the_root(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, (*REPLICAS, "intruder")) as (root, replicas):
            await opened(root, replicas[:2])
            async with collaborator(pki, "two", replicas[1].port) as channel:
                stub = aggregator_pb2_grpc.AggregatorStub(channel)
                tasks = await stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("two")))
                assert tasks.header.receiver == "two"
                assert tasks.round_number == 0
                assert [task.name for task in tasks.tasks] == list(PLAN.tasks)
                described = await stub.GetExperimentDescription(
                    aggregator_pb2.GetExperimentDescriptionRequest()
                )
                assert described.experiment.progress == 0.0
                last = aggregator_pb2.GetTrainedModelRequest(
                    model_type=aggregator_pb2.GetTrainedModelRequest.LAST_MODEL
                )
                relayed_refusal = await refused(stub.GetTrainedModel(last))
                async with collaborator(pki, "two", root.server.port) as direct:
                    direct_refusal = await refused(
                        aggregator_pb2_grpc.AggregatorStub(direct).GetTrainedModel(last)
                    )
                assert relayed_refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert relayed_refusal.details() == direct_refusal.details()
                mismatch = await refused(stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("one"))))
                assert mismatch.code() == grpc.StatusCode.UNAUTHENTICATED  # refused at the replica
            async with collaborator(pki, "two", replicas[2].port) as channel:
                stub = aggregator_pb2_grpc.AggregatorStub(channel)
                untrusted = await refused(stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("two"))))
                assert untrusted.code() == grpc.StatusCode.UNAUTHENTICATED  # refused at the root, relayed
                assert "'intruder'" in (untrusted.details() or "")
            async with collaborator(pki, "intruder", root.server.port) as channel:
                stub = aggregator_pb2_grpc.AggregatorStub(channel)
                direct = await refused(stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("two"))))
                assert direct.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())


def test_downloads_from_a_replica_are_the_bytes_a_standalone_server_sends(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1]) as (root, replicas):
            await opened(root, replicas)
            async with (
                collaborator(pki, "one", replicas[0].port) as via_replica,
                collaborator(pki, "one", root.server.port) as standalone,
            ):
                for name in INITIAL:
                    for tags in (["model"], ["aggregated"], ["model", "compressed"]):
                        tier_bytes = await raw_tensor(via_replica, "one", name, tags)
                        assert tier_bytes == await raw_tensor(standalone, "one", name, tags)
                no_delta = await refused(
                    raw_tensor(via_replica, "one", "w", ["aggregated", "delta", "compressed"])
                )
                standalone_no_delta = await refused(
                    raw_tensor(standalone, "one", "w", ["aggregated", "delta", "compressed"])
                )
                assert (no_delta.code(), no_delta.details()) == (
                    standalone_no_delta.code(),
                    standalone_no_delta.details(),
                )

    asyncio.run(scenario())


def test_uploads_are_claimed_once_acknowledged_and_delivered_as_exact_sums(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path) as (root, replicas):
            await opened(root, replicas)
            async with contextlib.AsyncExitStack() as stack:
                homes = [
                    await stack.enter_async_context(collaborator(pki, name, replicas[index % 2].port))
                    for index, name in enumerate(COLLABORATORS)
                ]
                other = await stack.enter_async_context(collaborator(pki, "one", replicas[1].port))
                # the same upload at both replicas at once: one claim, one ack as used, one as a duplicate
                first, second = await asyncio.gather(upload(homes[0], 0), upload(other, 0))
                assert sorted([first, second]) == [(), ("ignored:duplicate",)]
                for index in (1, 2, 3):
                    assert await upload(homes[index], index) == ()
                    holders = root.parts.book.holders(0)
                    assert any((COLLABORATORS[index], "train") in held for held in holders.values())
                assert await upload(homes[1], 1) == ("ignored:duplicate",)  # a retry after its ack
                ahead = await refused(upload(homes[2], 2, round_number=1))  # the replica is behind the root
                assert ahead.code() == grpc.StatusCode.UNAVAILABLE
                assert "has not opened round 1 yet" in (ahead.details() or "")
                assert await upload(homes[2], 2, task="fit") == ("ignored:unknown_task",)
            holders = root.parts.book.holders(0)
            assert sorted(c for held in holders.values() for c, _ in held) == sorted(COLLABORATORS)

            root.parts.notices.publish(0, tier_pb2.COLLECTING)
            while (collected := root.parts.collection.collected(0)) is None or len(
                [view for view in root.parts.collection.replicas(0) if view.generation is not None]
            ) < len(REPLICAS):
                await root.service.partial_arrived.wait()
                root.service.partial_arrived.clear()
            train = collected.merged.tasks["train"]
            assert sorted(name for name, _ in train.contributors) == sorted(COLLABORATORS)
            for tensor in INITIAL:
                expected = sum(
                    np.float64(site_weight(index)) * site_model(index)[tensor].astype(np.float64).reshape(-1)
                    for index in range(len(COLLABORATORS))
                )
                np.testing.assert_allclose(train.tensors[tensor].values, expected, rtol=1e-12)
                assert train.tensors[tensor].weight == sum(site_weight(i) for i in range(len(COLLABORATORS)))
            loss = train.metrics[("loss", ("metric", "trained"))]
            assert loss.weighted == pytest.approx(sum(site_weight(i) * i for i in range(len(COLLABORATORS))))

    asyncio.run(scenario())


def test_a_root_that_is_down_is_named_and_the_upload_is_claimed_once_it_is_back(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1]) as (root, replicas):
            await opened(root, replicas)
            port = root.server.port
            await root.server.stop(None)
            async with collaborator(pki, "three", replicas[0].port) as channel:
                unreachable = await refused(upload(channel, 2))
                assert unreachable.code() == grpc.StatusCode.UNAVAILABLE
                assert f"the root localhost:{port}" in (unreachable.details() or "")
                stub = aggregator_pb2_grpc.AggregatorStub(channel)
                no_tasks = await refused(
                    stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header("three")))
                )
                assert no_tasks.code() == grpc.StatusCode.UNAVAILABLE
                assert f"the root localhost:{port} is unreachable" in (no_tasks.details() or "")
                assert root.parts.book.holders(0) == {}
                back = await start_root(pki, root.parts.restarted(), port)
                try:
                    assert await retried_upload(channel, 2) == ()
                    assert root.parts.book.holders(0) == {REPLICAS[0]: frozenset({("three", "train")})}
                    back.parts.notices.publish(
                        0, tier_pb2.COLLECTING
                    )  # the replica follows the restarted root
                    while back.parts.collection.collected(0) is None:
                        await back.service.partial_arrived.wait()
                        back.service.partial_arrived.clear()
                    assert back.parts.collection.collected(0).merged.contributions == {("three", "train")}
                finally:
                    await back.server.stop(None)

    asyncio.run(scenario())


def test_a_restarted_replica_delivers_what_it_acknowledged_before(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1]) as (root, replicas):
            await opened(root, replicas)
            async with collaborator(pki, "one", replicas[0].port) as channel:
                assert await upload(channel, 0) == ()
            await replicas[0].stop(None)
            replicas[0] = restarted = replica(pki, REPLICAS[0], tmp_path, root.address)
            await restarted.start()
            await restarted.acted_on(0, tier_pb2.OPEN)
            async with collaborator(pki, "one", restarted.port) as channel:
                assert await upload(channel, 0) == ("ignored:duplicate",)  # recovered from the spool
            root.parts.notices.publish(0, tier_pb2.COLLECTING)
            while (collected := root.parts.collection.collected(0)) is None:
                await root.service.partial_arrived.wait()
                root.service.partial_arrived.clear()
            (view,) = [view for view in root.parts.collection.replicas(0) if view.replica == REPLICAS[0]]
            assert view.generation == 2
            train = collected.merged.tasks["train"]
            assert train.contributors == [("one", float(site_weight(0)))]
            for tensor, values in site_model(0).items():
                expected = np.float64(site_weight(0)) * values.astype(np.float64).reshape(-1)
                np.testing.assert_array_equal(train.tensors[tensor].values, expected)

    asyncio.run(scenario())


class RefusingTierService(TierService):
    """The root's claim refusal as the root's round answers it (a task that is not the collaborator's)."""

    async def Claim(self, request: tier_pb2.ClaimRequest, context: Context) -> tier_pb2.ClaimReply:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"not_assigned: task {request.task!r} is not {request.collaborator}'s in round {request.round}",
        )
        raise AssertionError("abort raises")


def test_a_claim_the_root_refuses_is_answered_as_ignored_and_its_copy_deleted(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1], RefusingTierService) as (root, replicas):
            await opened(root, replicas)
            async with collaborator(pki, "four", replicas[0].port) as channel:
                assert await upload(channel, 3) == ("ignored:not_assigned",)
            spooled = list((tmp_path / REPLICAS[0] / "spool" / "round-000000").iterdir())
            assert spooled == []
            root.parts.notices.publish(0, tier_pb2.COLLECTING)
            while (
                root.parts.collection.collected(0) is None
                or not root.parts.collection.replicas(0)[0].generation
            ):
                await root.service.partial_arrived.wait()
                root.service.partial_arrived.clear()
            assert root.parts.collection.collected(0).merged.contributions == frozenset()

    asyncio.run(scenario())
