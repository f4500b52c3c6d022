"""A tier on loopback for the ingest replica's tests: a root and ingest replicas, collaborators' raw calls.

The root is a real Federation served by AggregatorGRPCServer over mTLS, trusting the replicas (``replicas=``), with
the Tier service registered on the same port. :meth:`RootParts.published` is a root whose round notices the test
publishes (its claims are the claim book's); :meth:`RootParts.counting` is a serving root: its federation counts
the claims, closes the round, publishes COLLECTING and builds the next model from the partials
(:mod:`fedagg.tier.root_rounds`). Collaborators call with raw grpc.aio stubs and their own certificates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.collaborator.transfer import task_results_messages
from fedagg.federation.federation import Federation
from fedagg.federation.plan import FederationPlan
from fedagg.federation.store import StateStore
from fedagg.protocol import aggregator_pb2, base_pb2, tier_pb2, tier_pb2_grpc
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
from fedagg.tier.root_rounds import CountedClaims, RootRounds
from fedagg.tier.root_service import ClaimTaker, TierService
from fedagg.tier.round_notices import RoundNotices
from tests.support.aggregation import Model, model_of
from tests.support.pki import Pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, make_federation, make_plan
from tests.support.uploads import metric
from tests.tier.conftest import COLLABORATORS, REPLICAS

INITIAL = model_of(np.random.default_rng(1000))
PLAN = make_plan(COLLABORATORS, 2)
SERVICE = "/openfl.aggregator.Aggregator/"


def site_model(index: int) -> Model:
    return model_of(np.random.default_rng(index), shift=index)


def site_weight(index: int) -> int:
    return 10 + 7 * index


@dataclass(frozen=True)
class RootParts:
    """What a root's server serves: its federation, claims, collected partials and round notices."""

    federation: Federation
    book: ClaimBook
    collection: PartialCollection
    notices: RoundNotices
    model_file: Callable[[int], Path | None]
    claims: ClaimTaker | None = None

    @classmethod
    def published(cls, state: Path) -> RootParts:
        """A root serving round 0's model; the test publishes its notices."""
        model_path = state / "served-model-0.pbuf"
        with model_path.open("wb") as stream:
            write_model(stream, INITIAL, 0)
        book = ClaimBook(state / "claims", time.monotonic)
        federation = make_federation(state / "root", PLAN, INITIAL)
        return cls(federation, book, cls.new_collection(book), RoundNotices(), {0: model_path}.get)

    @classmethod
    def counting(
        cls, state: Path, plan: FederationPlan = PLAN, clock: Callable[[], float] = time.monotonic
    ) -> RootParts:
        """A serving root: its federation counts the claims and runs the rounds from the partials."""
        book = ClaimBook(state / "claims", time.monotonic)
        collection, notices = cls.new_collection(book), RoundNotices()
        rounds = RootRounds(book, collection, notices, plan.aggregation_bytes)
        federation = make_federation(state / "root", plan, INITIAL, collector=rounds, clock=clock)
        store = StateStore(state / "root" / "state")

        def model_file(round_number: int) -> Path | None:
            path = store.model_path(round_number)
            return path if path.exists() else None

        return cls(federation, book, collection, notices, model_file, CountedClaims(federation, book))

    @staticmethod
    def new_collection(book: ClaimBook) -> PartialCollection:
        return PartialCollection(book, REPLICAS, 300.0, time.monotonic)

    def restarted(self) -> RootParts:
        """The parts after a restart of the root: partials and notices are gone with the process."""
        return dataclasses.replace(self, collection=self.new_collection(self.book), notices=RoundNotices())


@dataclass
class Root:
    parts: RootParts
    server: AggregatorGRPCServer
    service: TierService

    @property
    def address(self) -> str:
        return f"localhost:{self.server.port}"


async def start_root(
    pki: Pki, parts: RootParts, port: int = 0, service_class: type[TierService] = TierService
) -> Root:
    service = service_class(
        parts.book,
        parts.collection,
        REPLICAS,
        ThreadPoolExecutor(2),
        model_file=parts.model_file,
        notices=parts.notices,
        claims=parts.claims,
    )

    def register(server: grpc.aio.Server) -> list[str]:
        tier_pb2_grpc.add_TierServicer_to_server(service, server)
        return ["fedagg.tier.v1.Tier"]

    server = AggregatorGRPCServer(
        parts.federation,
        port,
        root_certificate=pki.ca,
        certificate=pki.server_dir / "tls.crt",
        private_key=pki.server_dir / "tls.key",
        bind_address="127.0.0.1",
        auth_failure_max_delay=0,
        replicas=REPLICAS,
        extra_services=[register],
    )
    await server.start()
    return Root(parts, server, service)


def replica(pki: Pki, name: str, state: Path, root_address: str) -> IngestReplica:
    files = CertificateFiles(pki.server_dir / "tls.crt", pki.server_dir / "tls.key", pki.ca)
    return IngestReplica(
        PLAN,
        name,
        state / name,
        root_address,
        pki.client(name).credentials(),
        CertificateSource(files, True),
        options=ServerOptions(bind_address="127.0.0.1", auth_failure_max_delay=0),
        timings=LinkTimings(call_seconds=5, patience_seconds=1, initial_backoff=0.05, maximum_backoff=0.2),
    )


@contextlib.asynccontextmanager
async def running_tier(
    pki: Pki,
    state: Path,
    names: Sequence[str] = REPLICAS,
    service_class: type[TierService] = TierService,
    counting: bool = False,
    parts: RootParts | None = None,
) -> AsyncIterator[tuple[Root, list[IngestReplica]]]:
    """A root (``parts``, else a counting or a published one) and started replicas (the list may be changed:
    those in it at the end are stopped)."""
    parts = parts or (RootParts.counting(state) if counting else RootParts.published(state))
    root = await start_root(pki, parts, service_class=service_class)
    replicas = [replica(pki, name, state, root.address) for name in names]
    try:
        for each in replicas:
            await each.start()
        yield root, replicas
    finally:
        for each in replicas:
            await each.stop(None)
        await root.server.stop(None)
        parts.book.close()


@contextlib.asynccontextmanager
async def collaborator(pki: Pki, name: str, port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.secure_channel(f"localhost:{port}", pki.client(name).credentials()) as channel:
        yield channel


def header(sender: str) -> aggregator_pb2.MessageHeader:
    return aggregator_pb2.MessageHeader(
        sender=sender, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )


def trained(index: int, round_number: int = 0) -> list[base_pb2.NamedTensor]:
    """Collaborator ``index``'s train results: its model and a loss metric."""
    tensors = [
        encode_tensor(tensor, values, round_number=round_number, tags=("trained",))
        for tensor, values in site_model(index).items()
    ]
    tensors.append(metric("loss", float(index), round_number, "trained"))
    return tensors


async def send_results(
    channel: grpc.aio.Channel,
    sender: str,
    round_number: int,
    task: str,
    data_size: int,
    tensors: Sequence[base_pb2.NamedTensor],
) -> tuple[str, ...]:
    """Upload task results; the ``fedagg-contribution`` trailers the server answered with."""
    results = aggregator_pb2.TaskResults(
        header=header(sender), round_number=round_number, task_name=task, data_size=data_size
    )
    send = channel.stream_unary(
        SERVICE + "SendLocalTaskResults", None, aggregator_pb2.SendLocalTaskResultsResponse.FromString
    )
    call = send(iter(list(task_results_messages(results, tensors))))
    reply = await call
    assert reply.header.receiver == sender
    trailers = await call.trailing_metadata()
    return tuple(value for key, value in trailers or () if key == CONTRIBUTION_METADATA)


async def upload(
    channel: grpc.aio.Channel, index: int, round_number: int = 0, task: str = "train"
) -> tuple[str, ...]:
    """Send collaborator ``index``'s train results (as results of ``task`` in ``round_number``)."""
    return await send_results(
        channel, COLLABORATORS[index], round_number, task, site_weight(index), trained(index)
    )


async def retried_upload(channel: grpc.aio.Channel, index: int, attempts: int = 100) -> tuple[str, ...]:
    """:func:`upload`, sent again on UNAVAILABLE as OpenFL collaborators do."""
    for _ in range(attempts - 1):
        try:
            return await upload(channel, index)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return await upload(channel, index)


async def raw_tensor(
    channel: grpc.aio.Channel, sender: str, name: str, tags: Sequence[str], round_number: int = 0
) -> bytes:
    """A GetAggregatedTensor reply's bytes."""
    request = aggregator_pb2.GetAggregatedTensorRequest(
        header=header(sender),
        tensor_name=name,
        round_number=round_number,
        tags=list(tags),
        require_lossless=True,
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
    """Publish round 0 OPEN and wait until every replica serves it."""
    assert not any(each.ready for each in replicas)  # no round from the root yet
    root.parts.notices.publish(0, tier_pb2.OPEN)
    for each in replicas:
        await each.acted_on(0, tier_pb2.OPEN)
        assert each.ready


async def until_collected(root: Root, round_number: int, replicas: Sequence[str]) -> None:
    """Wait until the root kept a partial of the round from each of ``replicas``."""
    collection = root.parts.collection

    def kept() -> set[str]:
        return {view.replica for view in collection.replicas(round_number) if view.generation is not None}

    while not set(replicas) <= kept():
        await root.service.partial_arrived.wait()
        root.service.partial_arrived.clear()
