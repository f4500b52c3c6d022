"""Running ``fedagg`` commands as real subprocesses, and the files they need: a config and client options."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
FEDERATION = "clitest_0123abcd"


def fedagg(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``fedagg args...`` run to its end, without this process's ``FEDAGG_*`` environment."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FEDAGG_")}
    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
        env=environment,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_collaborators(
    names: Sequence[str], address: str, federation: str, options: Callable[[str], list[str]], *extra: str
) -> list[subprocess.Popen[str]]:
    """One ``fedagg collaborator`` process per name (stdout piped, as text), ``options(name)`` its TLS options."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedagg.cli",
                "collaborator",
                "--name",
                name,
                "--address",
                address,
                "--federation-uuid",
                federation,
                *options(name),
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in names
    ]


def write_config(directory: Path, pki_dir: Path, **extra: object) -> Path:
    (directory / "init.npz").parent.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "init.npz", **{"softmax/weights": np.zeros((32, 10)), "softmax/bias": np.zeros(10)})
    fedagg("model", "init", "--from", str(directory / "init.npz"), "--out", str(directory / "init.pbuf"))
    config = {
        "federation": {
            "federation_uuid": FEDERATION,
            "collaborators": ["site-a", "site-b"],
            "rounds_to_train": 2,
            "initial_model": "init.pbuf",
            "sleep_seconds": 1,
        },
        "server": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "observers": ["dashboard"],
            "tls": {"certificate_dir": str(pki_dir / "aggregator")},
        },
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
        "storage": {"state_dir": "state"},
        **extra,
    }
    path = directory / "fedagg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def client_options(pki_dir: Path, name: str) -> list[str]:
    directory = pki_dir / "collaborators" / name
    return [
        "--ca",
        str(directory / "ca.crt"),
        "--cert",
        str(directory / "tls.crt"),
        "--key",
        str(directory / "tls.key"),
    ]
