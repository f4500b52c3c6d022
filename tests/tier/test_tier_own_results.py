"""A collaborator's own results across the tier (a restarted OpenFL 1.8/1.9 collaborator asks for them on a new
connection, which may land on any replica): served by the replica holding the upload, relayed through the root by
any other, with the bytes a standalone fedagg sends; refused to another collaborator; UNAVAILABLE or NOT_FOUND
with a message naming what is missing when no replica can answer. Real replicas and a real root over mTLS on
loopback (:mod:`tests.tier.ingest_tier`); the root's round notices are published by the test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedagg.protocol import aggregator_pb2, tier_pb2, tier_pb2_grpc
from fedagg.protocol.codec import decode_tensor
from fedagg.tier.collection import PartialCollection
from fedagg.tier.ingest_replica import IngestReplica
from fedagg.tier.own_results_relay import RelayLimits
from fedagg.tier.root_service import TierLimits, TierService
from tests.support.pki import Pki
from tests.tier.conftest import REPLICAS
from tests.tier.ingest_tier import (
    INITIAL,
    Root,
    RootParts,
    collaborator,
    opened,
    raw_tensor,
    refused,
    replica,
    running_tier,
    site_model,
    upload,
)

TRAINED = ["two", "trained"]
"""The tags a restarted OpenFL 1.9 collaborator "two" asks its own trained tensors with."""


def test_own_results_are_served_by_their_holder_and_relayed_by_the_other_replica(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path) as (root, replicas):
            await opened(root, replicas)
            holder, other = replicas
            async with (
                collaborator(pki, "two", holder.port) as at_holder,
                collaborator(pki, "two", other.port) as at_other,
                collaborator(pki, "two", root.server.port) as standalone,
            ):
                assert await upload(at_holder, 1) == ()
                assert await upload(standalone, 1) == ()  # the root's federation is a standalone fedagg too
                for name in INITIAL:
                    held = await raw_tensor(at_holder, "two", name, TRAINED)
                    assert await raw_tensor(at_other, "two", name, TRAINED) == held
                    assert await raw_tensor(standalone, "two", name, TRAINED) == held
                    reply = aggregator_pb2.GetAggregatedTensorResponse.FromString(held)
                    assert list(reply.tensor.tags) == ["compressed", "trained", "two"]
                    np.testing.assert_array_equal(decode_tensor(reply.tensor), site_model(1)[name])
                missing = await refused(raw_tensor(at_other, "two", "nowhere", TRAINED))
                assert missing.code() == grpc.StatusCode.NOT_FOUND  # the holder's answer, relayed
                assert "'nowhere'" in (missing.details() or "")
                assert "ingest-0" in (missing.details() or "")

    asyncio.run(scenario())


def test_only_the_collaborator_itself_gets_its_results_and_only_from_a_holder(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path) as (root, replicas):
            await opened(root, replicas)
            async with collaborator(pki, "two", replicas[0].port) as channel:
                assert await upload(channel, 1) == ()
            for each in replicas:
                async with collaborator(pki, "three", each.port) as impostor:
                    denied = await refused(raw_tensor(impostor, "three", "w", TRAINED))
                    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "may only fetch its own results" in (denied.details() or "")
                    nothing = await refused(raw_tensor(impostor, "three", "w", ["three", "trained"]))
                    assert nothing.code() == grpc.StatusCode.NOT_FOUND
                    assert "three's results of round 0" in (nothing.details() or "")

    asyncio.run(scenario())


def test_a_holder_restarted_serves_the_results_it_recovered(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path) as (root, replicas):
            await opened(root, replicas)
            async with collaborator(pki, "two", replicas[1].port) as channel:
                assert await upload(channel, 1) == ()
                before = await raw_tensor(channel, "two", "w", TRAINED)
            await replicas[1].stop(None)
            replicas[1] = replica(pki, REPLICAS[1], tmp_path, root.address)
            await replicas[1].start()
            await replicas[1].acted_on(0, tier_pb2.OPEN)
            for each in replicas:
                async with collaborator(pki, "two", each.port) as channel:
                    assert await raw_tensor(channel, "two", "w", TRAINED) == before

    asyncio.run(scenario())


async def asked_once_the_holder_stopped(
    pki: Pki, root: Root, replicas: list[IngestReplica], settled: bool
) -> grpc.aio.AioRpcError:
    """ "two" uploads through the second replica, which then stops; the refusal of asking the first for its results
    (``settled``: once the root has seen the holder's ask stream end, :func:`refused_once`)."""
    await opened(root, replicas)
    async with collaborator(pki, "two", replicas[1].port) as channel:
        assert await upload(channel, 1) == ()
    holder = replicas.pop()
    await holder.stop(None)
    async with collaborator(pki, "two", replicas[0].port) as channel:
        if settled:
            return await refused_once(lambda: raw_tensor(channel, "two", "w", TRAINED))
        return await refused(raw_tensor(channel, "two", "w", TRAINED))


def test_a_holder_that_is_gone_is_unavailable_with_its_name(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path) as (root, replicas):
            unavailable = await asked_once_the_holder_stopped(pki, root, replicas, settled=False)
            assert unavailable.code() == grpc.StatusCode.UNAVAILABLE
            assert "ingest replica ingest-1, which holds two's results of round 0" in (
                unavailable.details() or ""
            )

    asyncio.run(scenario())


class QuickRelay(TierService):
    """A root that waits one second for a holder's answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["limits"] = TierLimits(relay=RelayLimits(answer_seconds=1.0))
        super().__init__(*args, **kwargs)


def test_a_holder_that_does_not_answer_in_time_is_unavailable(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1], service_class=QuickRelay) as (root, replicas):
            await opened(root, replicas)
            async with silent_holder(pki, root.address) as asks:
                async with collaborator(pki, "two", replicas[0].port) as channel:
                    late = await refused_once(lambda: raw_tensor(channel, "two", "w", TRAINED))
                ask = await anext(aiter(asks))
                assert (ask.request.collaborator, ask.request.tensor_name) == ("two", "w")
            assert late.code() == grpc.StatusCode.UNAVAILABLE
            assert "ingest-1, which holds two's results of round 0, did not answer within 1s" in (
                late.details() or ""
            )

    asyncio.run(scenario())


def test_a_lost_holder_is_not_found_with_its_name(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        parts = RootParts.published(tmp_path)
        parts = dataclasses.replace(
            parts, collection=PartialCollection(parts.book, REPLICAS, 0.0, time.monotonic)
        )
        async with running_tier(pki, tmp_path, parts=parts) as (root, replicas):
            lost = await asked_once_the_holder_stopped(pki, root, replicas, settled=True)
            assert lost.code() == grpc.StatusCode.NOT_FOUND
            assert "ingest replica ingest-1, which holds two's results of round 0, is lost" in (
                lost.details() or ""
            )

    asyncio.run(scenario())


class OneAskAtATime(TierService):
    """A root that relays one ask per holder at a time, and holds 64 bytes of answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        relay = RelayLimits(asks_per_replica=1, bytes_held=64)
        kwargs["limits"] = TierLimits(relay=relay)
        super().__init__(*args, **kwargs)


def test_the_roots_relay_holds_one_ask_per_holder_and_bounded_bytes(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1], service_class=OneAskAtATime) as (root, replicas):
            await opened(root, replicas)
            async with collaborator(pki, "two", replicas[0].port) as channel:
                assert await upload(channel, 1) == ()
            # ingest-1 asks the root, as a replica does, for what ingest-0 holds: more than 64 bytes
            async with grpc.aio.secure_channel(root.address, pki.client(REPLICAS[1]).credentials()) as asker:
                stub = tier_pb2_grpc.TierStub(asker)
                request = tier_pb2.OwnResultsRequest(
                    collaborator="two", round=0, tensor_name="w", tags=TRAINED
                )
                too_large = await refused_once(lambda: fetched(stub.FetchOwnResults(request)))
            assert too_large.code() == grpc.StatusCode.UNAVAILABLE
            assert "ingest-0's answer has" in (too_large.details() or "")
            assert "(limit 64); ask again" in (too_large.details() or "")

    asyncio.run(scenario())


def test_a_second_ask_to_a_busy_holder_is_refused_at_once(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[:1], service_class=OneAskAtATime) as (root, replicas):
            await opened(root, replicas)
            async with (
                silent_holder(pki, root.address) as asks,
                collaborator(pki, "two", replicas[0].port) as channel,
            ):
                waiting = asyncio.create_task(refused_once(lambda: raw_tensor(channel, "two", "w", TRAINED)))
                ask = await anext(aiter(asks))  # the first ask reached the silent holder
                busy = await refused(raw_tensor(channel, "two", "b", TRAINED))
                waiting.cancel()
            assert ask.request.tensor_name == "w"
            assert busy.code() == grpc.StatusCode.UNAVAILABLE
            assert "the root relays 1 requests to ingest-1" in (busy.details() or "")

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def silent_holder(
    pki: Pki, root_address: str
) -> AsyncIterator[grpc.aio.UnaryStreamCall[tier_pb2.AwaitOwnResultsAsksRequest, tier_pb2.OwnResultsAsk]]:
    """ingest-1 (no replica runs as it) claims two's train results of round 0, then takes the root's asks and never
    answers them."""
    async with grpc.aio.secure_channel(root_address, pki.client(REPLICAS[1]).credentials()) as channel:
        stub = tier_pb2_grpc.TierStub(channel)
        claim = tier_pb2.ClaimRequest(collaborator="two", round=0, task="train")
        assert (await stub.Claim(claim)).granted
        asks = stub.AwaitOwnResultsAsks(tier_pb2.AwaitOwnResultsAsksRequest())
        try:
            yield asks
        finally:
            asks.cancel()


async def fetched(
    call: grpc.aio.UnaryStreamCall[tier_pb2.OwnResultsRequest, tier_pb2.OwnResultsChunk],
) -> bytes:
    """A FetchOwnResults reply's bytes."""
    return b"".join([chunk.data async for chunk in call])


RETRIED = ("is not connected", "connection to the root ended")
"""Refusals of a relay while the holder's ask stream is not (or no longer) registered at the root."""


async def refused_once(fetch: Callable[[], Awaitable[bytes]]) -> grpc.aio.AioRpcError:
    """The refusal of ``fetch()`` once the root's view of the holder's ask stream has settled (before, the asker is
    told the holder is not connected, and asks again as OpenFL 1.9 does)."""
    for _ in range(1000):
        refusal = await refused(fetch())
        if not any(retried in (refusal.details() or "") for retried in RETRIED):
            return refusal
    raise AssertionError("the root's view of the holder's ask stream never settled")
