"""The root's tier port over real mTLS on loopback: claims exactly once across replicas, partials checked against
claims, idempotent redelivery, a restarted root, refused identities."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.ops.tier_metrics import TierMetrics
from fedagg.protocol import tier_pb2, tier_pb2_grpc
from fedagg.tier.division import divide
from fedagg.tier.events import TierListener
from fedagg.tier.partials import RoundPartial
from fedagg.tier.root_link import LinkTimings, RootLink, TierRefusal
from fedagg.tier.root_service import TierLimits
from fedagg.tier.wire import partial_chunks
from tests.support.aggregation import aggregate, model_of
from tests.support.pki import Pki
from tests.tier.conftest import REPLICAS
from tests.tier.roots import running_root

SITES = tuple(f"site-{index}" for index in range(12))
MODELS = [model_of(np.random.default_rng(index), shift=index) for index in range(len(SITES))]
WEIGHTS = [float(10 + 7 * index) for index in range(len(SITES))]


def link(pki: Pki, replica: str, port: int, listener: TierListener | None = None) -> RootLink:
    return RootLink(
        f"localhost:{port}",
        pki.client(replica).credentials(),
        LinkTimings(call_seconds=10, patience_seconds=5),
        listener=listener,
    )


def folded(replica: str, generation: int, sites: list[str]) -> RoundPartial:
    partial = RoundPartial(0, replica, generation)
    for site in sites:
        index = SITES.index(site)
        partial.fold("train", site, WEIGHTS[index], MODELS[index])
    return partial


def test_the_same_upload_claimed_at_two_replicas_at_once_counts_once(tier_pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        registries = {name: CollectorRegistry() for name in ("root", *REPLICAS)}
        metrics = {name: TierMetrics(registry) for name, registry in registries.items()}
        async with running_root(tier_pki, tmp_path, metrics["root"]) as root:
            links = [link(tier_pki, replica, root.port, metrics[replica]) for replica in REPLICAS]
            replies = await asyncio.gather(
                *(links[index].claim(site, 0, "train") for site in SITES for index in (0, 1))
            )
            granted: dict[str, list[str]] = {replica: [] for replica in REPLICAS}
            for position, site in enumerate(SITES):
                first, second = replies[2 * position], replies[2 * position + 1]
                assert [first.granted, second.granted].count(True) == 1, site
                assert first.holder == second.holder
                granted[first.holder].append(site)
            for index, replica in enumerate(REPLICAS):
                assert await links[index].deliver(folded(replica, 1, granted[replica]))
            sums_bytes = sum(values.nbytes * 2 for values in MODELS[0].values())  # float64
            for replica in REPLICAS:
                registry = registries[replica]
                assert registry.get_sample_value("fedagg_tier_claims_total", {"outcome": "granted"}) == len(
                    granted[replica]
                )
                taken = len(SITES) - len(granted[replica])
                assert registry.get_sample_value("fedagg_tier_claims_total", {"outcome": "taken"}) == taken
                assert registry.get_sample_value("fedagg_tier_claim_seconds_count") == len(SITES)
                assert registry.get_sample_value("fedagg_tier_partials_sent_total") == 1
                expected_bytes = sums_bytes if granted[replica] else 0
                assert registry.get_sample_value("fedagg_tier_partial_bytes_sent_total") == expected_bytes
                received = registries["root"].get_sample_value(
                    "fedagg_tier_partial_bytes_received_total", {"replica": replica}
                )
                assert received == expected_bytes
            collected = root.collection.collected(0)
            assert collected is not None
            assert collected.stragglers == frozenset()
            contributors = [name for name, _ in collected.merged.tasks["train"].contributors]
            assert sorted(contributors) == sorted(SITES)
            standalone = aggregate(WeightedAverage(), MODELS, WEIGHTS)
            assert standalone is not None
            tier = divide(WeightedAverage(), 0, "train", collected.merged.tasks["train"], MODELS[0])
            for name, values in standalone.items():
                np.testing.assert_array_max_ulp(tier[name], values, maxulp=1)
            for each in links:
                await each.close()

    asyncio.run(scenario())


def test_a_certificate_that_is_not_a_replica_is_refused_by_name(tier_pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path) as root:
            intruder = link(tier_pki, "intruder", root.port)
            with pytest.raises(TierRefusal) as refused:
                await intruder.claim("site-0", 0, "train")
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "'intruder' is not an ingest replica" in str(refused.value)
            await intruder.close()

    asyncio.run(scenario())


def test_partials_are_checked_against_claims_and_redelivery_is_idempotent(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path) as root:
            replica = link(tier_pki, "ingest-0", root.port)
            for site in SITES[:3]:
                assert (await replica.claim(site, 0, "train")).granted
            with pytest.raises(TierRefusal) as refused:
                await replica.deliver(folded("ingest-0", 1, list(SITES[:2])))
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "lacks contributions ingest-0 claimed: [('site-2', 'train')]" in str(refused.value)
            twice = folded("ingest-0", 1, list(SITES[:3]))
            twice.tasks["train"].contributors.append(("site-0", 1.0))
            with pytest.raises(TierRefusal) as repeated:
                await replica.deliver(twice)
            assert repeated.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "names a collaborator twice" in str(repeated.value)
            assert await replica.deliver(folded("ingest-0", 1, list(SITES[:3])))
            assert not await replica.deliver(folded("ingest-0", 1, list(SITES[:3])))
            assert await replica.deliver(folded("ingest-0", 2, list(reversed(SITES[:3]))))
            collected = root.collection.collected(0)
            assert collected is not None
            assert len(collected.merged.tasks["train"].contributors) == 3
            states = {state.replica: state for state in (await replica.replicas(0)).replicas}
            assert states["ingest-0"].claimed == 3
            assert states["ingest-0"].generation == 2
            assert not states["ingest-1"].delivered
            await replica.close()

    asyncio.run(scenario())


def test_a_malformed_partial_is_refused_naming_the_problem(tier_pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path) as root:
            options = (("grpc.ssl_target_name_override", "localhost"),)
            credentials = tier_pki.client("ingest-0").credentials()
            async with grpc.aio.secure_channel(f"127.0.0.1:{root.port}", credentials, options) as channel:
                stub = tier_pb2_grpc.TierStub(channel)
                header = tier_pb2.PartialHeader(
                    round=0,
                    generation=1,
                    tasks=[
                        tier_pb2.TaskPartial(task="train", tensors=[tier_pb2.TensorSum(name="w", shape=[4])])
                    ],
                )
                chunks = [tier_pb2.PartialChunk(header=header), tier_pb2.PartialChunk(sums=b"\0" * 16)]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.DeliverPartial(iter(chunks), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "end before the 32 bytes its header announces" in (refused.value.details() or "")

    asyncio.run(scenario())


def test_a_restarted_root_keeps_its_claims_and_collects_the_partials_again(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path) as root:
            first = link(tier_pki, "ingest-0", root.port)
            assert (await first.claim("site-0", 0, "train")).granted
            assert await first.deliver(folded("ingest-0", 1, ["site-0"]))
            await first.close()
        async with running_root(tier_pki, tmp_path) as restarted:
            links = [link(tier_pki, replica, restarted.port) for replica in REPLICAS]
            taken = await links[1].claim("site-0", 0, "train")
            assert not taken.granted
            assert taken.holder == "ingest-0"
            assert (await links[1].claim("site-1", 0, "train")).granted
            assert await links[1].deliver(folded("ingest-1", 1, ["site-1"]))
            assert restarted.collection.collected(0) is None
            assert await links[0].deliver(folded("ingest-0", 1, ["site-0"]))
            collected = restarted.collection.collected(0)
            assert collected is not None
            assert collected.merged.contributions == {("site-0", "train"), ("site-1", "train")}
            for each in links:
                await each.close()

    asyncio.run(scenario())


def test_claims_and_partials_beyond_the_limits_are_refused_naming_the_field(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path, limits=TierLimits(partial_bytes=64)) as root:
            replica = link(tier_pki, "ingest-0", root.port)
            with pytest.raises(TierRefusal) as empty:
                await replica.claim("", 0, "train")
            assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "ClaimRequest.collaborator" in str(empty.value)
            assert (await replica.claim("site-0", 0, "train")).granted
            with pytest.raises(TierRefusal) as large:
                await replica.deliver(folded("ingest-0", 1, ["site-0"]))
            assert large.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than the tier allows (64)" in str(large.value)
            huge = folded("ingest-0", 1, ["site-0"])
            huge.tasks["train"].tensors["w"].shape = (1 << 40, 1 << 40)  # announced, never allocated
            with pytest.raises(TierRefusal) as announced:
                await replica.deliver(huge)
            assert "announces 9671406556917033397649448 bytes" in str(announced.value)
            await replica.close()

    asyncio.run(scenario())


def test_a_replica_delivers_one_partial_at_a_time(tier_pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path) as root:
            replica = link(tier_pki, "ingest-0", root.port)
            assert (await replica.claim("site-0", 0, "train")).granted
            chunks = list(partial_chunks(folded("ingest-0", 1, ["site-0"])))
            release = asyncio.Event()

            async def held() -> AsyncIterator[tier_pb2.PartialChunk]:
                yield chunks[0]
                await release.wait()
                for chunk in chunks[1:]:
                    yield chunk

            options = (("grpc.ssl_target_name_override", "localhost"),)
            credentials = tier_pki.client("ingest-0").credentials()
            async with grpc.aio.secure_channel(f"127.0.0.1:{root.port}", credentials, options) as channel:
                stub = tier_pb2_grpc.TierStub(channel)
                calls = [asyncio.ensure_future(stub.DeliverPartial(held(), timeout=30)) for _ in range(2)]
                done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
                (refused,) = done
                error = refused.exception()
                assert isinstance(error, grpc.aio.AioRpcError)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "ingest-0 is delivering a partial already" in (error.details() or "")
                release.set()
                (other,) = [call for call in calls if call is not refused]
                assert (await other).recorded
            await replica.close()

    asyncio.run(scenario())
