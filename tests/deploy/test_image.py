"""The container image, built with podman: its metadata, its user and read-only filesystem, the mounted secret.

The image is built once per session by scripts/build-image (the ``image`` fixture, tests/deploy/conftest.py).
Needs root (rootful podman); scripts/install-container-tools installs podman, buildah and runc when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import require
from tests.deploy.container import UID, Aggregator, podman
from tests.support.pki import Pki

pytestmark = pytest.mark.slow


# --- the image itself ---------------------------------------------------------------------------------------------


def test_image_metadata_follows_the_contract(image: str) -> None:
    config = yaml.safe_load(podman("image", "inspect", image, "--format", "{{json .Config}}").stdout)
    health = yaml.safe_load(podman("image", "inspect", image, "--format", "{{json .HealthCheck}}").stdout)

    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/opt/fedagg/bin/fedagg"]
    assert config["Cmd"] == ["serve", "--config", "/etc/fedagg/fedagg.yaml"]
    assert set(config["ExposedPorts"]) == {
        "50051/tcp",
        "50052/tcp",
        "50053/tcp",
        "50054/tcp",
    }  # 50054: a root's
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
