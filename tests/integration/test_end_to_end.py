"""Three collaborators train over mutual TLS on loopback; identity failures change nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.collaborator import AggregatorError, ClientTls, RetryPolicy
from fedagg.protocol.model_file import read_model
from fedagg.server import AggregatorGRPCServer
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import expected_models, zero_model
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    client_for,
    make_federation,
    make_plan,
    serving,
)
from tests.support.training import SPECS, train

ROUNDS = 3


@pytest.mark.parametrize(
    "delta",
    [
        {"one": False, "two": False, "three": False},
        {"one": True, "two": True, "three": True},
        {"one": True, "two": False, "three": True},
    ],
    ids=["full", "delta", "mixed"],
)
def test_three_rounds_over_mtls_match_the_closed_form(
    tmp_path: Path, pki: Pki, delta: dict[str, bool]
) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, ROUNDS), zero_model())

    with serving(federation, pki) as thread:
        collaborators = train(thread.address, pki, SPECS, delta)
        quit_seen = thread.call(_wait(thread.server.wait_for_quit_jobs()))

    expected = expected_models(list(SPECS.values()), ROUNDS)
    last = read_model(tmp_path / "last.pbuf")
    assert quit_seen
    assert last.round_number == ROUNDS
    for name in ("w", "b"):
        np.testing.assert_allclose(last.tensors[name], expected[-1], rtol=1e-6)
    assert all(c.rounds_completed == ROUNDS for c in collaborators)
    aggregated = [
        r
        for r in federation.metrics.history()
        if r.origin == "aggregator" and r.name == "acc" and "validate_agg" in r.tags
    ]
    assert [r.value for r in aggregated] == pytest.approx([0.0, *expected[:-1]], rel=1e-6)


async def _wait(awaitable: object) -> bool:
    await awaitable  # type: ignore[misc]
    return True


def test_observers_read_status_metrics_and_models(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())

    with serving(federation, pki, observers=("observer",)) as thread:
        observer = client_for(thread, "observer", pki)
        before = observer.experiment_description()
        stream = observer.metric_stream()
        train(thread.address, pki, SPECS)
        streamed = list(stream)
        after = observer.experiment_description(FEDERATION_UUID)
        last = observer.trained_model(best=False)
        best = observer.trained_model(best=True)

    assert (before.status, before.current_round, before.total_rounds) == ("pending", 0, 2)
    assert [c.name for c in before.collaborators] == list(COLLABORATORS)
    assert (after.status, after.current_round, after.progress) == ("finished", 2, pytest.approx(1.0))
    assert {c.status for c in after.collaborators} == {"quit"}
    assert {m.name: m.status for m in after.download_statuses.models} == {
        "best": "ready",
        "last": "ready",
        "init": "ready",
    }
    assert len(streamed) == len(federation.metrics.history())
    assert {m.metric_origin for m in streamed} == {*COLLABORATORS, "aggregator"}
    assert last.round_number == 2
    np.testing.assert_allclose(last.tensors["w"], read_model(tmp_path / "last.pbuf").tensors["w"])
    assert best.round_number == 1


IDENTITY_CASES = {
    "wrong CA": ("one", "other", {}, grpc.StatusCode.UNAVAILABLE),
    "CN is not the sender": ("two", "one", {}, grpc.StatusCode.UNAUTHENTICATED),
    "unknown collaborator": ("rogue", "rogue", {}, grpc.StatusCode.UNAUTHENTICATED),
    "wrong federation_uuid": (
        "one",
        "one",
        {"federation_uuid": "another_fed"},
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "wrong receiver": (
        "one",
        "one",
        {"aggregator_uuid": "aggregator_other"},
        grpc.StatusCode.UNAUTHENTICATED,
    ),
}


@pytest.mark.parametrize("case", list(IDENTITY_CASES), ids=list(IDENTITY_CASES))
def test_identity_failures_are_refused_and_change_nothing(
    tmp_path: Path, pki: Pki, other_pki: Pki, case: str
) -> None:
    sender, certificate_of, header, code = IDENTITY_CASES[case]
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    if certificate_of == "other":
        tls = ClientTls(pki.ca, other_pki.root / "one.crt", other_pki.root / "one.key")
    else:
        tls = pki.client(certificate_of)

    with serving(federation, pki) as thread:
        before = federation.describe()
        client = client_for(thread, sender, pki, tls=tls, retry=RetryPolicy(give_up_after=0.2), **header)
        with pytest.raises(AggregatorError) as refused:
            client.get_tasks()
        with pytest.raises(AggregatorError):
            client.send_task_results(0, "aggregated_model_validation", 5, [])
        after = federation.describe()

    assert refused.value.code == code
    assert after == before
    assert federation.metrics.history() == []


def test_identity_failure_messages_say_what_is_wrong(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())

    with serving(federation, pki) as thread:
        client = client_for(thread, "two", pki, tls=pki.client("one"))
        with pytest.raises(AggregatorError) as mismatch:
            client.get_tasks()
        client = client_for(thread, "one", pki, federation_uuid="another_fed")
        with pytest.raises(AggregatorError) as wrong_federation:
            client.get_tasks()

    assert mismatch.value.details == "certificate CN 'one' does not match header.sender 'two'"
    assert wrong_federation.value.details == (
        f"header.federation_uuid is 'another_fed'; this aggregator serves {FEDERATION_UUID!r}"
    )
    assert AGGREGATOR_UUID.startswith("aggregator_")


def test_openfl_seed_api_serve_returns_after_every_quit_job(tmp_path: Path, pki: Pki) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 1), zero_model())
    server = AggregatorGRPCServer(
        federation,
        0,
        use_tls=True,
        require_client_auth=True,
        root_certificate=str(pki.ca),
        certificate=str(pki.server_dir / "tls.crt"),
        private_key=str(pki.server_dir / "tls.key"),
        bind_address="127.0.0.1",
    )
    serving_thread = threading.Thread(target=server.serve)
    serving_thread.start()
    for _ in range(600):  # until the server has bound its port (serve() binds inside its own event loop)
        if server.accepting:
            break
        threading.Event().wait(0.05)

    train(f"localhost:{server.port}", pki, SPECS)
    serving_thread.join(timeout=30)

    assert not serving_thread.is_alive()
    assert federation.all_quit_jobs_sent
    assert server.uri == f"127.0.0.1:{server.port}"
    assert (server.use_tls, server.require_client_auth) == (True, True)
    assert server.server is not None
    assert server.server_credentials is not None
    for method in (
        "GetTasks",
        "GetAggregatedTensor",
        "SendLocalTaskResults",
        "GetMetricStream",
        "GetTrainedModel",
        "GetExperimentDescription",
        "check_request",
        "get_header",
        "get_server",
        "serve",
        "validate_collaborator",
    ):
        assert callable(getattr(server, method))
    header = server.get_header("one")
    assert (header.sender, header.receiver, header.federation_uuid) == (
        AGGREGATOR_UUID,
        "one",
        FEDERATION_UUID,
    )
