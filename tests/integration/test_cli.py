"""Every ``fedagg`` command, run as a real subprocess on real files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.support.process import FedaggProcess

ROOT = Path(__file__).resolve().parents[2]
FEDERATION = "clitest_0123abcd"


def fedagg(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def openssl() -> str:
    path = shutil.which("openssl")
    require(path is not None, "openssl is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pki"
    fedagg(
        "certs",
        "--out",
        str(out),
        "--collaborators",
        "site-a,site-b",
        "--observers",
        "dashboard",
        "--hosts",
        "localhost,127.0.0.1,fedagg.example.org",
    )
    return out


def test_help_reads_well() -> None:
    top = fedagg("--help").stdout
    for command in (
        "serve",
        "demo",
        "collaborator",
        "certs",
        "model",
        "status",
        "metrics",
        "health",
        "config",
    ):
        assert command in top
        if command not in ("model", "config"):
            assert "examples:" in fedagg(command, "--help").stdout
    assert "examples:" in fedagg("model", "show", "--help").stdout
    assert fedagg("--version").stdout.startswith("fedagg ")


def test_certs_verify_with_openssl_in_every_layout(pki_dir: Path) -> None:
    tool = openssl()
    ca = pki_dir / "ca" / "ca.crt"
    certificates = [
        pki_dir / "aggregator" / "tls.crt",
        *(pki_dir / "collaborators").glob("*/tls.crt"),
        *(pki_dir / "openfl" / "cert").glob("*/*.crt"),
    ]

    for certificate in certificates:
        verified = subprocess.run(
            [tool, "verify", "-CAfile", str(ca), str(certificate)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    server = subprocess.run(
        [tool, "x509", "-in", str(pki_dir / "aggregator" / "tls.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subject = subprocess.run(
        [tool, "x509", "-in", str(pki_dir / "collaborators" / "site-a" / "tls.crt"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = yaml.safe_load((pki_dir / "kubernetes" / "fedagg-tls.yaml").read_text())

    assert len(certificates) == 1 + 3 + 3 + 3
    assert "DNS:fedagg.example.org" in server
    assert "IP Address:127.0.0.1" in server
    assert "CN = site-a" in subject
    assert (secret["kind"], secret["type"], sorted(secret["data"])) == (
        "Secret",
        "kubernetes.io/tls",
        ["ca.crt", "tls.crt", "tls.key"],
    )
    assert oct((pki_dir / "aggregator" / "tls.key").stat().st_mode & 0o777) == "0o600"
    assert "not empty" in fedagg("certs", "--out", str(pki_dir), "--collaborators", "x", check=False).stderr


def test_model_init_show_export_round_trip(tmp_path: Path) -> None:
    weights = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "dense/bias": np.ones(4)}
    np.savez(tmp_path / "weights.npz", **weights)

    fedagg(
        "model",
        "init",
        "--from",
        str(tmp_path / "weights.npz"),
        "--out",
        str(tmp_path / "m.pbuf"),
        "--round",
        "4",
    )
    shown = fedagg("model", "show", str(tmp_path / "m.pbuf")).stdout
    fedagg("model", "export", str(tmp_path / "m.pbuf"), "--out", str(tmp_path / "back.npz"))

    assert "round 4, 2 tensors, 16 parameters" in shown
    assert "3x4" in shown
    assert read_model(tmp_path / "m.pbuf").round_number == 4
    with np.load(tmp_path / "back.npz") as back:
        np.testing.assert_array_equal(back["dense/kernel"], weights["dense/kernel"])
    assert "cannot read" in fedagg("model", "show", str(tmp_path / "absent.pbuf"), check=False).stderr


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


def test_config_check(tmp_path: Path, pki_dir: Path) -> None:
    good = write_config(tmp_path, pki_dir)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("rounds_to_train: 2", "rounds_to_train: two"))

    ok = fedagg("config", "check", str(good))
    refused = fedagg("config", "check", str(bad), check=False)

    assert f"OK: federation {FEDERATION}" in ok.stdout
    assert refused.returncode == 2
    assert "federation.rounds_to_train: got 'two', expected an integer" in refused.stderr


def test_serve_refuses_a_connection_age_grpc_cannot_take_in_one_line(tmp_path: Path) -> None:
    """3e6 s is more milliseconds than gRPC's int32 holds: refused by name before anything starts."""
    path = tmp_path / "fedagg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "federation": {
                    "federation_uuid": FEDERATION,
                    "collaborators": ["site-a"],
                    "rounds_to_train": 1,
                },
                "server": {"max_connection_age_seconds": 3e6},
            }
        )
    )

    refused = fedagg("serve", "--config", str(path), check=False)

    assert refused.returncode == 2
    assert refused.stderr == (
        f"fedagg: configuration error: {path}: server.max_connection_age_seconds: got 3000000.0, expected 0 (never) or a "
        "number of seconds from 1 to 2147483.647\n"
    )


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


def test_serve_collaborators_status_metrics_and_health(tmp_path: Path, pki_dir: Path) -> None:
    config = write_config(tmp_path, pki_dir)
    with FedaggProcess(config) as server:
        server.wait_for_federation()
        address = f"localhost:{server.federation_port}"
        pending = fedagg(
            "status", "--address", address, "--name", "dashboard", *client_options(pki_dir, "dashboard")
        )
        health = fedagg(
            "health", "--address", f"localhost:{server.ops_port}", "--service", "openfl.aggregator.Aggregator"
        )
        metrics = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedagg.cli",
                "metrics",
                "--address",
                address,
                "--name",
                "dashboard",
                *client_options(pki_dir, "dashboard"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        collaborators = [
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
                    FEDERATION,
                    *client_options(pki_dir, name),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for name in ("site-a", "site-b")
        ]
        outputs = [process.communicate(timeout=120)[0] for process in collaborators]
        streamed = metrics.communicate(timeout=60)[0]
        code = server.wait()

    assert code == 0
    assert [process.returncode for process in collaborators] == [0, 0]
    assert "site-a: quit after 2 rounds" in outputs[0]
    assert "experiment clitest_0123abcd: pending, round 0 of 2" in pending.stdout
    assert "site-b" in pending.stdout
    assert "aggregated_model_validation" in pending.stdout
    assert "openfl.aggregator.Aggregator: SERVING" in health.stdout
    assert metrics.returncode == 0
    assert "aggregator" in streamed
    assert "the experiment has finished" in streamed
    assert read_model(tmp_path / "state" / "last.pbuf").round_number == 2
    refused = fedagg("health", "--address", f"localhost:{server.ops_port}", "--timeout", "1", check=False)
    assert refused.returncode == 1


def test_serve_an_openfl_workspace(tmp_path: Path, pki_dir: Path) -> None:
    workspace = tmp_path / "workspace"
    (workspace / "plan").mkdir(parents=True)
    shutil.copytree(pki_dir / "openfl" / "cert", workspace / "cert")
    (workspace / "save").mkdir()
    np.savez(tmp_path / "init.npz", **{"softmax/weights": np.zeros((32, 10)), "softmax/bias": np.zeros(10)})
    fedagg(
        "model", "init", "--from", str(tmp_path / "init.npz"), "--out", str(workspace / "save" / "init.pbuf")
    )
    plan = {
        "aggregator": {
            "settings": {
                "rounds_to_train": 1,
                "init_state_path": "save/init.pbuf",
                "best_state_path": "save/best.pbuf",
                "last_state_path": "save/last.pbuf",
            }
        },
        "network": {
            "settings": {
                "agg_addr": "localhost",
                "agg_port": 50999,
                "use_tls": True,
                "require_client_auth": True,
                "cert_folder": "cert",
            }
        },
        "tasks": {"train": {"function": "train_task", "kwargs": {}}},
        "assigner": {
            "template": "openfl.component.RandomGroupedAssigner",
            "settings": {"task_groups": [{"name": "g", "percentage": 1.0, "tasks": ["train"]}]},
        },
    }
    (workspace / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    (workspace / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": ["site-a"]}))
    overrides = tmp_path / "ops.yaml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "server": {"bind_address": "127.0.0.1", "port": 0},
                "ops": {
                    "bind_address": "127.0.0.1",
                    "port": 0,
                    "metrics_bind_address": "127.0.0.1",
                    "metrics_port": 0,
                },
                "storage": {"state_dir": str(tmp_path / "state")},
                "hooks": {"kubernetes": {"enabled": "false"}},
            }
        )
    )
    checked = fedagg(
        "config",
        "check",
        "--openfl-plan",
        str(workspace / "plan" / "plan.yaml"),
        "--openfl-cols",
        str(workspace / "plan" / "cols.yaml"),
    )
    federation = checked.stdout.split("federation ")[1].split(" ")[0]

    with FedaggProcess(
        overrides,
        "--openfl-plan",
        str(workspace / "plan" / "plan.yaml"),
        "--openfl-cols",
        str(workspace / "plan" / "cols.yaml"),
    ) as server:
        server.wait_for_federation()
        fedagg(
            "collaborator",
            "--name",
            "site-a",
            "--address",
            f"localhost:{server.federation_port}",
            "--federation-uuid",
            federation,
            *client_options(pki_dir, "site-a"),
            "--quiet",
        )
        code = server.wait()

    assert federation.startswith("plan.yaml_")
    assert "port 50999, TLS mtls" in checked.stdout
    assert code == 0
    assert read_model(workspace / "save" / "last.pbuf").round_number == 1


def stray_processes(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command:
                found.append(command)
    return found


def test_demo_trains_and_accuracy_rises(tmp_path: Path) -> None:
    result = fedagg("demo", "--rounds", "2", "--dir", str(tmp_path / "demo"), timeout=120)
    summary = yaml.safe_load((tmp_path / "demo" / "summary.json").read_text())

    assert summary["rounds"] == [0, 1]
    assert summary["accuracy"][1] > summary["accuracy"][0]
    assert "accuracy of the global model rose" in result.stdout
    assert read_model(Path(summary["last_model"])).round_number == 2
    assert stray_processes(str(tmp_path / "demo")) == []


def test_demo_leaves_no_process_behind_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "fedagg.cli", "demo", "--rounds", "50", "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("round 1 "):
            break
    demo.send_signal(signal.SIGINT)
    output = demo.communicate(timeout=60)[0]

    assert demo.returncode == 130
    assert "interrupted" in output
    deadline = time.monotonic() + 10
    while stray_processes(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)  # children were signalled; the kernel reaps them asynchronously
    assert stray_processes(str(workdir)) == []


def test_demo_run_twice_in_one_directory_replaces_the_first_run(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    arguments = ("demo", "--rounds", "2", "--collaborators", "1", "--features", "4", "--dir", str(workdir))

    first = fedagg(*arguments, timeout=120)
    second = fedagg(*arguments, timeout=120)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo")
    foreign = fedagg(*arguments[:-1], str(tmp_path / "mine"), check=False)

    assert "holds an earlier demo" not in first.stdout
    assert f"{workdir} holds an earlier demo: replacing" in second.stdout
    assert "accuracy of the global model rose" in second.stdout
    assert read_model(workdir / "state" / "last.pbuf").round_number == 2
    assert foreign.returncode == 1
    assert "holds files that are not an earlier demo's (notes.txt)" in foreign.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a demo"
