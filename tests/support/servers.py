"""Running fedagg's real gRPC server in-process, on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc

from fedagg.collaborator import AggregatorClient, ClientTls, RetryPolicy
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.plan import FederationPlan, default_tasks, single_group_assigner
from fedagg.federation.store import StateStore
from fedagg.protocol import aggregator_pb2_grpc
from fedagg.protocol.codec import Float32Array
from fedagg.protocol.model_file import LoadedModel
from fedagg.server import AggregatorGRPCServer
from tests.support.pki import Pki

FEDERATION_UUID = "testfed_0123abcd"
AGGREGATOR_UUID = f"aggregator_{FEDERATION_UUID}"
T = TypeVar("T")


def make_plan(collaborators: tuple[str, ...], rounds: int, **overrides: Any) -> FederationPlan:
    tasks = overrides.pop("tasks", default_tasks())
    return FederationPlan(
        federation_uuid=FEDERATION_UUID,
        aggregator_uuid=AGGREGATOR_UUID,
        collaborators=collaborators,
        rounds_to_train=rounds,
        tasks=tasks,
        assigner=overrides.pop("assigner", single_group_assigner(tasks)),
        sleep_seconds=overrides.pop("sleep_seconds", 1),
        **overrides,
    )


def make_federation(
    state: Path, plan: FederationPlan, model: dict[str, Float32Array], restore: bool = True, **kwargs: Any
) -> Federation:
    federation = Federation(
        plan,
        StateStore(state / "state"),
        ModelOutputs(state / "best.pbuf", state / "last.pbuf"),
        initial_model=LoadedModel(0, model),
        **kwargs,
    )
    if restore:
        federation.restore()
    return federation


def restart_federation(state: Path, plan: FederationPlan) -> Federation:
    """A new federation process on ``state``'s state directory (as if the previous one simply vanished)."""
    federation = Federation(
        plan, StateStore(state / "state"), ModelOutputs(state / "best.pbuf", state / "last.pbuf")
    )
    federation.restore()
    return federation


class ManualClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status and details of an RPC that must fail."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("the call succeeded; a refusal was expected")


class ServerThread:
    """An AggregatorGRPCServer serving on its own event loop in a background thread."""

    def __init__(self, server: AggregatorGRPCServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fedagg-test-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def run(self, function: Callable[[], T], timeout: float = 30) -> T:
        """Run a plain function on the server's loop thread."""

        async def invoke() -> T:
            return function()

        return self.call(invoke(), timeout)  # type: ignore[no-any-return]

    @property
    def address(self) -> str:
        return f"localhost:{self.server.port}"


@contextmanager
def serving(federation: Federation, pki: Pki | None, **kwargs: Any) -> Iterator[ServerThread]:
    """Serve ``federation`` over mTLS (or plaintext when ``pki`` is None) on 127.0.0.1:<free port>."""
    tls: dict[str, Any] = {"use_tls": False}
    if pki is not None:
        tls = {
            "root_certificate": pki.ca,
            "certificate": pki.server_dir / "tls.crt",
            "private_key": pki.server_dir / "tls.key",
        }
    kwargs.setdefault("auth_failure_max_delay", 0)
    kwargs.setdefault("bind_address", "127.0.0.1")
    server = AggregatorGRPCServer(federation, 0, **tls, **kwargs)
    with ServerThread(server) as thread:
        yield thread


def client_for(
    thread: ServerThread, name: str, pki: Pki | None, *, tls: ClientTls | None = None, **kwargs: Any
) -> AggregatorClient:
    """A collaborator client of ``thread``'s server; fails fast instead of retrying UNAVAILABLE for long."""
    kwargs.setdefault("retry", RetryPolicy(initial=0.05, maximum=0.2, give_up_after=5))
    kwargs.setdefault("aggregator_uuid", AGGREGATOR_UUID)
    kwargs.setdefault("federation_uuid", FEDERATION_UUID)
    material = tls or (pki.client(name) if pki else None)
    return AggregatorClient(thread.address, name, tls=material, **kwargs)


def raw_stub(address: str, tls: ClientTls | None) -> tuple[grpc.Channel, aggregator_pb2_grpc.AggregatorStub]:
    """A bare stub, for sending requests the client library would never send."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, tls.credentials())
    return channel, aggregator_pb2_grpc.AggregatorStub(channel)
