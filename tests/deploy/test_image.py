"""The container image, built with podman and run the way Kubernetes runs it.

The image is built once per session by scripts/build-image (wheels downloaded on the host, installed with
--no-index; the base image comes from scripts/make-base-image, cached). The aggregator then runs as UID 10001 with a
read-only root filesystem and only /tmp and the state volume writable; its certificates are mounted as a
kubelet-style secret directory (``..data`` symlinks, mode 0440, group 10001); two reference collaborators on the
host train 2 rounds through the published federation port over mTLS; health is checked on the ops port (from the
host and with the image's own HEALTHCHECK), /metrics is scraped, and SIGTERM stops it with exit status 0, leaving
the final models in the mounted state volume.

Needs root (rootful podman); scripts/install-container-tools installs podman, buildah and runc when missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fedagg.collaborator import AggregatorClient, AggregatorError, RetryPolicy
from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.deploy.chart import ROOT
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.runners import expected_models
from tests.support.secrets import MountedSecret
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.support.training import train

pytestmark = pytest.mark.slow

UID = 10001
SPECS = {"one": (1.0, 10), "two": (2.0, 30)}
ROUNDS = 2
READINESS = "openfl.aggregator.Aggregator"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-2000:]}"
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image (once per session; unchanged sources reuse every layer) and return its name."""
    require(os.geteuid() == 0, "the container tests need root (rootful podman)")
    tools = subprocess.run(
        ["bash", str(ROOT / "scripts/install-container-tools")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    require(
        tools.returncode == 0 and shutil.which("podman") is not None,
        f"podman unavailable: {tools.stderr[-500:]}",
    )
    build = subprocess.run(
        ["bash", str(ROOT / "scripts/build-image")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return build.stdout.strip().splitlines()[-1]


# --- the image itself ---------------------------------------------------------------------------------------------


def test_image_metadata_follows_the_contract(image: str) -> None:
    config = yaml.safe_load(podman("image", "inspect", image, "--format", "{{json .Config}}").stdout)
    health = yaml.safe_load(podman("image", "inspect", image, "--format", "{{json .HealthCheck}}").stdout)

    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/opt/fedagg/bin/fedagg"]
    assert config["Cmd"] == ["serve", "--config", "/etc/fedagg/fedagg.yaml"]
    assert set(config["ExposedPorts"]) == {"50051/tcp", "50052/tcp", "50053/tcp"}
    assert config["StopSignal"] == "SIGTERM"
    assert health["Test"] == [
        "CMD",
        "/opt/fedagg/bin/fedagg",
        "health",
        "--address",
        "localhost:50052",
        "--timeout",
        "3",
    ]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "fedagg"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.revision"] != "unknown"


def test_fedagg_runs_as_non_root_on_a_read_only_filesystem(image: str) -> None:
    version = podman(
        "run", "--rm", "--pull=never", "--read-only", "--read-only-tmpfs=false", image, "--version"
    )
    identity = podman("run", "--rm", "--pull=never", "--entrypoint", "/usr/bin/id", image)
    compilers = podman(
        "run",
        "--rm",
        "--pull=never",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "for tool in gcc cc c++ pip pip3 apt-get; do command -v $tool; done",
        check=False,
    )

    assert version.stdout.strip() == "fedagg 0.1.0"
    assert identity.stdout.startswith(f"uid={UID}(fedagg) gid={UID}(fedagg)")
    assert compilers.stdout.split() == ["/usr/bin/apt-get"]  # the base image's apt; no compiler, no pip


# --- a real federation through the container ---------------------------------------------------------------------


@dataclass
class Ports:
    federation: int
    ops: int
    metrics: int


class Aggregator:
    """One fedagg container; removed (twice if need be) when the test ends."""

    def __init__(self, image: str, directory: Path, pki: Pki) -> None:
        self.name = f"fedagg-test-{uuid.uuid4().hex[:8]}"
        self.image = image
        self.ports = Ports(free_port(), free_port(), free_port())
        self.state = directory / "state"
        self.state.mkdir()
        os.chown(self.state, UID, UID)
        self.state.chmod(0o750)
        self.secret = self._secret(directory / "tls", pki)
        self.model = directory / "model"
        self.model.mkdir()
        write_zero_model(self.model)
        self.config = directory / "fedagg.yaml"
        self.config.write_text(yaml.safe_dump(self._config()))

    @staticmethod
    def _secret(directory: Path, pki: Pki) -> Path:
        """tls.crt, tls.key, ca.crt as the kubelet mounts a kubernetes.io/tls secret (defaultMode 0440, fsGroup)."""
        secret = MountedSecret(directory)
        secret.publish(
            {name: (pki.server_dir / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")}
        )
        for path in directory.rglob("*"):
            if not path.is_symlink():
                os.chown(path, 0, UID)
                path.chmod(0o2750 if path.is_dir() else 0o440)
        return directory

    @staticmethod
    def _config() -> dict[str, object]:
        # Only what this test needs differs from the defaults; ports and paths are the image's defaults.
        return {
            "federation": {
                "federation_uuid": FEDERATION_UUID,
                "collaborators": list(SPECS),
                "rounds_to_train": ROUNDS,
                "initial_model": "/etc/fedagg/model/init.pbuf",
                "sleep_seconds": 1,
            },
            "server": {
                "tls": {"mode": "mtls", "certificate_dir": "/etc/fedagg/tls"},
                "auth_failure_max_delay": 0,
            },
            "ops": {"drain_seconds": 1, "grace_seconds": 10, "after_finish": "stay"},
            "hooks": {"kubernetes": {"enabled": "false"}},
            "storage": {"state_dir": "/var/lib/fedagg"},
        }

    def start(self) -> None:
        podman(
            "run", "--detach", "--pull=never", "--name", self.name,
            "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
            "--user", f"{UID}:{UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{self.config}:/etc/fedagg/fedagg.yaml:ro",
            "--volume", f"{self.secret}:/etc/fedagg/tls:ro",
            "--volume", f"{self.model}:/etc/fedagg/model:ro",
            "--volume", f"{self.state}:/var/lib/fedagg",
            "--publish", f"127.0.0.1:{self.ports.federation}:50051",
            "--publish", f"127.0.0.1:{self.ports.ops}:50052",
            "--publish", f"127.0.0.1:{self.ports.metrics}:50053",
            self.image,
        )  # fmt: skip

    def health(self, service: str = "") -> str:
        """The ops port's answer for ``service``, or the gRPC error code's name."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports.ops}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError as error:
                return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_for(self, service: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health(service) == "SERVING":
                return
            assert self.running(), f"the container exited:\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"{service or 'liveness'} not SERVING after {timeout}s:\n{self.logs()}")

    def running(self) -> bool:
        return podman("inspect", self.name, "--format", "{{.State.Running}}").stdout.strip() == "true"

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.metrics}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        for _ in range(2):  # a killed container sometimes needs a second try
            if podman("rm", "--force", "--time", "2", self.name, check=False).returncode == 0:
                break


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


def test_the_secret_directory_looks_like_the_kubelets(tmp_path: Path, pki: Pki) -> None:
    """The fixture's secret layout (checked without podman): ..data symlink, group-readable files."""
    require(os.geteuid() == 0, "chown to UID 10001 needs root")
    directory = Aggregator._secret(tmp_path / "tls", pki)

    data = directory / "..data"
    assert data.is_symlink()
    assert os.readlink(directory / "tls.key") == "..data/tls.key"
    key = (directory / "tls.key").resolve()
    assert key.stat().st_mode & 0o777 == 0o440
    assert key.stat().st_gid == UID
