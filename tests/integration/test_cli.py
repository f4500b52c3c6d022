"""The ``fedagg`` commands that work on files, run as real subprocesses: help, certs, model, config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.integration.cli import FEDERATION, fedagg, write_config


def openssl() -> str:
    path = shutil.which("openssl")
    require(path is not None, "openssl is not installed")
    assert path is not None
    return path


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
