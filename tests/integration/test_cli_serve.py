"""``fedagg serve`` as a real subprocess, with ``fedagg collaborator``, ``status``, ``metrics`` and ``health``
against it, from a fedagg config and from an OpenFL workspace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from fedagg.protocol.model_file import read_model
from tests.integration.cli import FEDERATION, ROOT, client_options, fedagg, start_collaborators, write_config
from tests.support.process import FedaggProcess


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
        collaborators = start_collaborators(
            ("site-a", "site-b"), address, FEDERATION, lambda name: client_options(pki_dir, name)
        )
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
