"""Ingest replicas in front of a real root, over real mTLS on loopback.

The root is a real Federation served by AggregatorGRPCServer, trusting the replicas (``replicas=``), with the Tier
service on the same port; the test publishes the root's round notices. Collaborators call the replicas with raw
gRPC stubs and their own certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.collaborator.transfer import task_results_messages
from fedagg.federation.federation import Federation
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, base_pb2, tier_pb2, tier_pb2_grpc
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.extensions import CONTRIBUTION_METADATA
from fedagg.protocol.model_file import write_model
from fedagg.server import AggregatorGRPCServer
from fedagg.server.options import ServerOptions
from fedagg.server.tls import CertificateFiles, CertificateSource
from fedagg.tier.claims import ClaimBook
from fedagg.tier.collection import PartialCollection
from fedagg.tier.ingest_replica import IngestReplica
from fedagg.tier.root_link import LinkTimings
from fedagg.tier.root_service import Context, TierService
from fedagg.tier.round_notices import RoundNotices
from tests.support.aggregation import Model, model_of
from tests.support.pki import Pki, make_pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, make_federation, make_plan
from tests.support.uploads import metric
from tests.tier.conftest import REPLICAS

COLLABORATORS = ("one", "two", "three", "four")
INITIAL = model_of(np.random.default_rng(1000))
PLAN = make_plan(COLLABORATORS, 2)
SERVICE = "/openfl.aggregator.Aggregator/"


def site_model(index: int) -> Model:
    return model_of(np.random.default_rng(index), shift=index)


def site_weight(index: int) -> int:
    return 10 + 7 * index


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ingest-pki"), (*REPLICAS, "intruder", *COLLABORATORS))


@dataclass
class Root:
    federation: Federation
    server: AggregatorGRPCServer
    book: ClaimBook
    collection: PartialCollection
    service: TierService
    notices: RoundNotices

    @property
    def address(self) -> str:
        return f"localhost:{self.server.port}"


def tier_service_registration(service: TierService) -> object:
    def register(server: grpc.aio.Server) -> list[str]:
        tier_pb2_grpc.add_TierServicer_to_server(service, server)
        return ["fedagg.tier.v1.Tier"]

    return register


async def start_root(
    pki: Pki,
    federation: Federation,
    book: ClaimBook,
    state: Path,
    port: int = 0,
    service_class: type[TierService] = TierService,
) -> Root:
    model_path = state / "served-model-0.pbuf"
    if not model_path.exists():
        with model_path.open("wb") as stream:
            write_model(stream, INITIAL, 0)
    collection = PartialCollection(book, REPLICAS, 300.0, time.monotonic)
    notices = RoundNotices()
    service = service_class(
        book, collection, REPLICAS, ThreadPoolExecutor(2), model_file={0: model_path}.get, notices=notices
    )
    server = AggregatorGRPCServer(
        federation,
        port,
        root_certificate=pki.ca,
        certificate=pki.server_dir / "tls.crt",
        private_key=pki.server_dir / "tls.key",
        bind_address="127.0.0.1",
        auth_failure_max_delay=0,
        replicas=REPLICAS,
        extra_services=[tier_service_registration(service)],
    )
    await server.start()
    return Root(federation, server, book, collection, service, notices)


def replica(pki: Pki, name: str, state: Path, root_address: str) -> IngestReplica:
    files = CertificateFiles(pki.server_dir / "tls.crt", pki.server_dir / "tls.key", pki.ca)
    return IngestReplica(
        PLAN,
        name,
        state / name,
        root_address,
        pki.client(name).credentials(),
        CertificateSource(files, True),
        PLAN.limits.resolve(sum(values.nbytes for values in INITIAL.values())),
        options=ServerOptions(bind_address="127.0.0.1", auth_failure_max_delay=0),
        timings=LinkTimings(call_seconds=5, patience_seconds=1, initial_backoff=0.05, maximum_backoff=0.2),
    )


@contextlib.asynccontextmanager
async def running_tier(
    pki: Pki, state: Path, names: Sequence[str] = REPLICAS, service_class: type[TierService] = TierService
) -> AsyncIterator[tuple[Root, list[IngestReplica]]]:
    federation = make_federation(state / "root", PLAN, INITIAL)
    book = ClaimBook(state / "claims", time.monotonic)
    root = await start_root(pki, federation, book, state, service_class=service_class)
    replicas = [replica(pki, name, state, root.address) for name in names]
    try:
        for each in replicas:
            await each.start()
        yield root, replicas
    finally:
        for each in replicas:
            await each.stop(None)
        await root.server.stop(None)
        book.close()


@contextlib.asynccontextmanager
async def collaborator(pki: Pki, name: str, port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.secure_channel(f"localhost:{port}", pki.client(name).credentials()) as channel:
        yield channel


def header(sender: str) -> aggregator_pb2.MessageHeader:
    return aggregator_pb2.MessageHeader(
        sender=sender, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )


def training_results(
    index: int, round_number: int = 0, task: str = "train"
) -> tuple[aggregator_pb2.TaskResults, list[base_pb2.NamedTensor]]:
    name = COLLABORATORS[index]
    results = aggregator_pb2.TaskResults(
        header=header(name), round_number=round_number, task_name=task, data_size=site_weight(index)
    )
    tensors = [
        encode_tensor(tensor, values, round_number=0, tags=("trained",))
        for tensor, values in site_model(index).items()
    ]
    tensors.append(metric("loss", float(index), 0, "trained"))
    return results, tensors


async def upload(
    channel: grpc.aio.Channel, index: int, round_number: int = 0, task: str = "train"
) -> tuple[str, ...]:
    """Send collaborator ``index``'s train results; the contribution trailers the server answered with."""
    results, tensors = training_results(index, round_number, task)
    send = channel.stream_unary(
        SERVICE + "SendLocalTaskResults", None, aggregator_pb2.SendLocalTaskResultsResponse.FromString
    )
    call = send(iter(list(task_results_messages(results, tensors))))
    reply = await call
    assert reply.header.receiver == COLLABORATORS[index]
    trailers = await call.trailing_metadata()
    return tuple(value for key, value in trailers or () if key == CONTRIBUTION_METADATA)


async def retried_upload(channel: grpc.aio.Channel, index: int, attempts: int = 100) -> tuple[str, ...]:
    """:func:`upload`, sent again on UNAVAILABLE as OpenFL collaborators do."""
    for _ in range(attempts - 1):
        try:
            return await upload(channel, index)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return await upload(channel, index)


async def raw_tensor(channel: grpc.aio.Channel, sender: str, name: str, tags: Sequence[str]) -> bytes:
    request = aggregator_pb2.GetAggregatedTensorRequest(
        header=header(sender), tensor_name=name, round_number=0, tags=list(tags), require_lossless=True
    )
    call = channel.unary_unary(
        SERVICE + "GetAggregatedTensor", aggregator_pb2.GetAggregatedTensorRequest.SerializeToString, None
    )
    reply: bytes = await call(request)
    return reply


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def opened(root: Root, replicas: Sequence[IngestReplica]) -> None:
    assert not any(each.ready for each in replicas)  # no round from the root yet
    root.notices.publish(0, tier_pb2.OPEN)
    for each in replicas:
        await each.acted_on(0, tier_pb2.OPEN)
        assert each.ready


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
                    holders = root.book.holders(0)
                    assert any((COLLABORATORS[index], "train") in held for held in holders.values())
                assert await upload(homes[1], 1) == ("ignored:duplicate",)  # a retry after its ack
                assert await upload(homes[2], 2, round_number=1) == ("ignored:wrong_round",)
                assert await upload(homes[2], 2, task="fit") == ("ignored:unknown_task",)
            holders = root.book.holders(0)
            assert sorted(c for held in holders.values() for c, _ in held) == sorted(COLLABORATORS)

            root.notices.publish(0, tier_pb2.COLLECTING)
            while (collected := root.collection.collected(0)) is None or len(
                [view for view in root.collection.replicas(0) if view.generation is not None]
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
                assert root.book.holders(0) == {}
                back = await start_root(pki, root.federation, root.book, tmp_path, port)
                try:
                    assert await retried_upload(channel, 2) == ()
                    assert root.book.holders(0) == {REPLICAS[0]: frozenset({("three", "train")})}
                    back.notices.publish(0, tier_pb2.COLLECTING)  # the replica follows the restarted root
                    while back.collection.collected(0) is None:
                        await back.service.partial_arrived.wait()
                        back.service.partial_arrived.clear()
                    assert back.collection.collected(0).merged.contributions == {("three", "train")}
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
            root.notices.publish(0, tier_pb2.COLLECTING)
            while (collected := root.collection.collected(0)) is None:
                await root.service.partial_arrived.wait()
                root.service.partial_arrived.clear()
            (view,) = [view for view in root.collection.replicas(0) if view.replica == REPLICAS[0]]
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
            root.notices.publish(0, tier_pb2.COLLECTING)
            while root.collection.collected(0) is None or not root.collection.replicas(0)[0].generation:
                await root.service.partial_arrived.wait()
                root.service.partial_arrived.clear()
            assert root.collection.collected(0).merged.contributions == frozenset()

    asyncio.run(scenario())
