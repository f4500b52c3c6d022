"""The client's connection diagnostics and retry reporting, without an aggregator."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from fedagg.cli import build_parser
from fedagg.cli.formatting import ago
from fedagg.collaborator import (
    AggregatorClient,
    AggregatorUnreachable,
    Cause,
    ClientTls,
    ConnectionFailed,
    ConnectionProblem,
    RetryPolicy,
    diagnostics,
)
from fedagg.collaborator.diagnostics import diagnose, split_address
from fedagg.protocol import aggregator_pb2
from tests.support.pki import Pki

FAST = RetryPolicy(initial=0.02, maximum=0.05, give_up_after=0.4)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:50051", ("localhost", 50051)),
        ("10.0.0.7:1", ("10.0.0.7", 1)),
        ("[::1]:50051", ("::1", 50051)),
        ("dns:///agg.example.org:443", ("agg.example.org", 443)),
        ("dns://8.8.8.8/agg.example.org:50051", ("agg.example.org", 50051)),
        ("agg.example.org", ("agg.example.org", 443)),
        ("::1", ("::1", 443)),
        ("unix:/run/fedagg.sock", None),
        ("ipv4:127.0.0.1:50051", None),
        ("localhost:http", None),
        ("localhost:70000", None),
    ],
)
def test_split_address(address: str, expected: tuple[str, int] | None) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "just now"),
        (12.7, "12s ago"),
        (59, "59s ago"),
        (60, "1m ago"),
        (3725, "1h 2m ago"),
        (90061, "1d 1h ago"),
    ],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    """A TCP server answering anything with an HTTP/1 response (like the Prometheus exporter)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(5)
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_refused_is_transient_and_names_the_address() -> None:
    address = f"127.0.0.1:{closed_port()}"

    problem = diagnose(address, None)

    assert problem.cause == Cause.REFUSED
    assert problem.transient
    assert address in problem.message


def test_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(diagnostics.socket, "getaddrinfo", fail)

    problem = diagnose("agg.example.org:50051", None)

    assert problem.cause == Cause.DNS
    assert problem.transient
    assert "cannot resolve 'agg.example.org' (DNS: Name or service not known)" in problem.message


def test_an_http_server_is_not_grpc_and_does_not_speak_tls(http_server: int, pki: Pki) -> None:
    address = f"127.0.0.1:{http_server}"

    plaintext = diagnose(address, None)
    tls = diagnose(address, pki.client("one"))

    assert plaintext.cause == Cause.NOT_GRPC
    assert tls.cause == Cause.NOT_TLS
    assert not plaintext.transient
    assert not tls.transient


def test_unusable_local_files(pki: Pki, other_pki: Pki, http_server: int, tmp_path: Path) -> None:
    mismatched = ClientTls(pki.ca, pki.client("one").certificate, other_pki.client("one").private_key)

    problem = diagnose(f"127.0.0.1:{http_server}", mismatched)

    assert problem.cause == Cause.LOCAL_FILES
    assert "--key" in problem.message


def test_transient_problems_are_logged_at_every_retry_then_the_call_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    client = AggregatorClient(address, "one", "aggregator_x", "x", retry=FAST)

    with (
        caplog.at_level(logging.WARNING, "fedagg.collaborator.connection"),
        pytest.raises(AggregatorUnreachable) as raised,
    ):
        client.get_tasks()
    client.close()

    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) >= 2
    assert all(
        address in record.getMessage() and "connection refused" in record.getMessage() for record in retries
    )
    assert raised.value.problem.cause == Cause.REFUSED
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert 0.3 <= raised.value.seconds < 5


def test_a_permanent_problem_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    client = AggregatorClient(f"127.0.0.1:{closed_port()}", "one", "aggregator_x", "x", retry=RetryPolicy())
    problem = ConnectionProblem(client.address, Cause.NAME_MISMATCH, "TLS: not valid for 'x'")
    monkeypatch.setattr(client, "diagnose", lambda _details="": problem)

    with pytest.raises(ConnectionFailed) as raised:
        client.experiment_description()
    client.close()

    assert raised.value.problem is problem
    assert str(raised.value) == "TLS: not valid for 'x'"


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "draining"


def test_a_cut_metric_stream_is_opened_again_without_repeating_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = AggregatorClient(f"127.0.0.1:{closed_port()}", "one", "aggregator_x", "x", retry=FAST)
    metrics = [aggregator_pb2.GetMetricStreamResponse(metric_name=f"m{index}") for index in range(4)]
    attempts = []

    def stream(request: object) -> Iterator[aggregator_pb2.GetMetricStreamResponse]:
        attempts.append(request)
        if len(attempts) == 1:
            yield from metrics[:2]
            raise Unavailable()
        yield from metrics  # a new stream starts with every metric so far

    monkeypatch.setattr(client, "_stub", type("Stub", (), {"GetMetricStream": staticmethod(stream)})())
    monkeypatch.setattr(
        client, "diagnose", lambda details="": ConnectionProblem(client.address, Cause.UNAVAILABLE, details)
    )

    names = [metric.metric_name for metric in client.metric_stream()]
    client.close()

    assert names == ["m0", "m1", "m2", "m3"]
    assert len(attempts) == 2


def test_connection_options_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in {
        "FEDAGG_ADDRESS": "agg.example.org:50051",
        "FEDAGG_CA": "ca.crt",
        "FEDAGG_CERT": "me.crt",
        "FEDAGG_KEY": "me.key",
        "FEDAGG_NAME": "site-a",
        "FEDAGG_SERVER_NAME": "fedagg.internal",
        "FEDAGG_FEDERATION_UUID": "myfed_0123abcd",
        "FEDAGG_AGGREGATOR_UUID": "agg_1",
    }.items():
        monkeypatch.setenv(variable, value)

    args = build_parser().parse_args(["collaborator"])
    overridden = build_parser().parse_args(["status", "--address", "other:1", "--timeout", "5"])

    assert (args.address, args.ca, args.cert, args.key) == (
        "agg.example.org:50051",
        Path("ca.crt"),
        Path("me.crt"),
        Path("me.key"),
    )
    assert (args.name, args.server_name, args.federation_uuid, args.aggregator_uuid) == (
        "site-a",
        "fedagg.internal",
        "myfed_0123abcd",
        "agg_1",
    )
    assert (args.insecure, args.timeout) == (False, 600.0)
    assert (overridden.address, overridden.name, overridden.timeout) == ("other:1", "site-a", 5.0)


def test_without_the_environment_address_and_name_are_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("FEDAGG_ADDRESS", "FEDAGG_NAME", "FEDAGG_FEDERATION_UUID"):
        monkeypatch.delenv(variable, raising=False)

    with pytest.raises(SystemExit):
        build_parser().parse_args(["collaborator"])

    assert "--name, --address, --federation-uuid" in capsys.readouterr().err


def test_a_call_the_server_cancels_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A stopping server cuts calls in flight with CANCELLED (a drain, a replica that lost its lease)."""
    answers = iter([grpc.StatusCode.CANCELLED, None])

    def get_tasks(request: aggregator_pb2.GetTasksRequest, context: grpc.ServicerContext) -> object:
        if (status := next(answers)) is not None:
            context.abort(status, "server stopping")
        header = request.header
        return aggregator_pb2.GetTasksResponse(
            header=aggregator_pb2.MessageHeader(
                sender=header.receiver, receiver=header.sender, federation_uuid=header.federation_uuid
            ),
            round_number=3,
            sleep_time=1,
        )

    handler = grpc.method_handlers_generic_handler(
        "openfl.aggregator.Aggregator",
        {
            "GetTasks": grpc.unary_unary_rpc_method_handler(
                get_tasks,
                request_deserializer=aggregator_pb2.GetTasksRequest.FromString,
                response_serializer=aggregator_pb2.GetTasksResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = AggregatorClient(f"127.0.0.1:{port}", "one", "aggregator_x", "x", retry=FAST)

    with caplog.at_level(logging.WARNING, "fedagg.collaborator.connection"):
        reply = client.get_tasks()
    client.close()
    server.stop(None)

    assert reply.round_number == 3
    assert any("retrying" in record.getMessage() for record in caplog.records)
