"""A real federation through the container, run the way Kubernetes runs it.

Two reference collaborators on the host train 2 rounds through the published federation port over mTLS; health
is checked on the ops port (from the host and with the image's own HEALTHCHECK), /metrics is scraped, and SIGTERM
stops it with exit status 0, leaving the final models in the mounted state volume. Needs root (rootful podman).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.collaborator import AggregatorClient, AggregatorError, RetryPolicy
from fedagg.protocol.model_file import read_model
from tests.deploy.container import READINESS, ROUNDS, SPECS, UID, Aggregator, podman
from tests.support.pki import Pki
from tests.support.runners import expected_models
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.support.training import train

pytestmark = pytest.mark.slow


@pytest.fixture
def aggregator(image: str, tmp_path: Path, pki: Pki) -> Iterator[Aggregator]:
    container = Aggregator(image, tmp_path, pki)
    try:
        yield container
    finally:
        container.remove()


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    matches = [v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls)]
    assert matches, f"no sample {name}{labels}"
    return sum(matches)


def test_two_rounds_over_mtls_through_the_container(aggregator: Aggregator, pki: Pki) -> None:
    # Start: liveness first, then readiness (certificates loaded, state restored).
    aggregator.start()
    aggregator.wait_for("")
    aggregator.wait_for(READINESS)
    health_cli = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "health", "--address", f"127.0.0.1:{aggregator.ports.ops}",
         "--service", READINESS],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    healthcheck = podman("healthcheck", "run", aggregator.name, check=False)
    assert health_cli.returncode == 0, health_cli.stderr
    assert healthcheck.returncode == 0, healthcheck.stdout + healthcheck.stderr

    # An unknown collaborator with a certificate from the same CA is refused; the federation is untouched.
    rogue = AggregatorClient(
        f"localhost:{aggregator.ports.federation}",
        "rogue",
        AGGREGATOR_UUID,
        FEDERATION_UUID,
        tls=pki.client("rogue"),
        retry=RetryPolicy(initial=0.05, maximum=0.1, give_up_after=1),
    )
    with rogue, pytest.raises(AggregatorError) as refused:
        rogue.get_tasks()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

    # Train.
    collaborators = train(f"localhost:{aggregator.ports.federation}", pki, SPECS)
    assert [c.rounds_completed for c in collaborators] == [ROUNDS, ROUNDS]

    # Scrape: the finished experiment, its traffic, the refused caller, the certificate.
    metrics = aggregator.metrics()
    assert value(metrics, "fedagg_round") == ROUNDS
    assert value(metrics, "fedagg_rounds_to_train") == ROUNDS
    assert value(metrics, "fedagg_rounds_completed_total") == ROUNDS
    assert value(metrics, "fedagg_experiment_state", state="finished") == 1
    assert value(metrics, "fedagg_collaborators_authorized") == len(SPECS)
    assert value(metrics, "fedagg_task_results_total", outcome="accepted") == ROUNDS * len(SPECS) * 3
    assert value(metrics, "grpc_server_handled_total", grpc_method="GetTasks", grpc_code="OK") > 0
    assert value(
        metrics, "grpc_server_handled_total", grpc_method="SendLocalTaskResults", grpc_code="OK"
    ) == (ROUNDS * len(SPECS) * 3)
    assert value(metrics, "grpc_server_handling_seconds_count", grpc_method="GetAggregatedTensor") > 0
    assert value(metrics, "fedagg_auth_failures_total") >= 1
    assert value(metrics, "fedagg_received_bytes_total") > 0
    assert value(metrics, "fedagg_tls_certificate_expiry_timestamp_seconds") > time.time()
    assert value(metrics, "fedagg_checkpoint_last_success_timestamp_seconds") > 0
    assert value(metrics, "fedagg_build_info", version="0.1.0") == 1
    resident = value(metrics, "process_resident_memory_bytes")
    print(f"aggregator resident memory after {ROUNDS} rounds: {resident / 2**20:.0f} MiB")
    # after_finish: stay keeps serving (read-only) and stays ready.
    assert aggregator.health(READINESS) == "SERVING"

    # SIGTERM: drain, checkpoint, exit 0 within the grace period.
    started = time.monotonic()
    podman("kill", "--signal", "TERM", aggregator.name)
    exit_code = podman("wait", aggregator.name, timeout=60).stdout.strip()
    stopped_after = time.monotonic() - started
    logs = aggregator.logs()
    assert exit_code == "0", logs
    assert stopped_after < 10 + 2, logs

    # The models are on the state volume, written by UID 10001, and match the closed form.
    last = aggregator.state / "last.pbuf"
    best = aggregator.state / "best.pbuf"
    assert last.is_file(), sorted(p.name for p in aggregator.state.iterdir())
    assert best.is_file()
    assert {path.stat().st_uid for path in (last, best)} == {UID}
    model = read_model(last)
    assert model.round_number == ROUNDS
    np.testing.assert_allclose(
        model.tensors["w"], expected_models(list(SPECS.values()), ROUNDS)[-1], rtol=1e-6
    )
    # Nothing was written outside the volumes (the root filesystem was read-only); the runtime only made the
    # mount point of the config file, which the image cannot have.
    changes = podman("diff", aggregator.name).stdout.split("\n")
    assert sorted(filter(None, changes)) == ["A /etc/fedagg/fedagg.yaml", "C /etc", "C /etc/fedagg"], logs
