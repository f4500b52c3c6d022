"""One fedagg container run with podman the way Kubernetes runs it, for the image tests.

The aggregator runs as UID 10001 with a read-only root filesystem and only /tmp and the state volume writable; its
certificates are mounted as a kubelet-style secret directory (``..data`` symlinks, mode 0440, group 10001).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.ports import free_port
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.secrets import MountedSecret
from tests.support.servers import FEDERATION_UUID

UID = 10001
SPECS = {"one": (1.0, 10), "two": (2.0, 30)}
ROUNDS = 2
READINESS = "openfl.aggregator.Aggregator"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-2000:]}"
    return result


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
