"""The ``topology`` section: roles, their required keys, and which aggregation methods a tier may run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedagg.assembly import build_aggregator
from fedagg.config.loading import parse_config
from fedagg.config.topology import Role
from fedagg.settings import ConfigError
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.tier.serving import tier_certificates


def tier_config(role: str, aggregation: str = "weighted_average", **task: object) -> dict[str, Any]:
    topology: dict[str, Any] = {"role": role}
    if role == "root":
        topology["replicas"] = ["ingest-0", "ingest-1"]
    if role == "ingest":
        topology["root_address"] = "fedagg-root:50054"
        topology["tier_certificate_dir"] = "/etc/fedagg/tier"
    return {
        "federation": {
            "federation_uuid": "fed_1",
            "collaborators": ["one", "two"],
            "rounds_to_train": 2,
            "tasks": {"train": {"function": "train", "aggregation": aggregation, **task}},
        },
        "topology": topology,
    }


def problems(data: dict[str, Any]) -> list[ConfigError]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, Path("/etc/fedagg"), {})
    return list(raised.value.problems)


def test_standalone_is_the_default_and_runs_every_method() -> None:
    data = tier_config("standalone", "median")
    del data["topology"]
    config = parse_config(data, Path("/etc/fedagg"), {})
    assert config.topology.role == Role.STANDALONE
    assert config.topology.tier_port == 50054


@pytest.mark.parametrize("role", ["root", "ingest"])
@pytest.mark.parametrize(
    "method", ["weighted_average", "fedcurv_weighted_average", "adam", "adagrad", "yogi"]
)
def test_methods_exact_from_partial_sums_are_accepted_in_the_tier(role: str, method: str) -> None:
    config = parse_config(tier_config(role, method), Path("/etc/fedagg"), {})
    assert config.topology.role == Role(role)


@pytest.mark.parametrize("role", ["root", "ingest"])
@pytest.mark.parametrize(
    ("method", "why"),
    [
        ("median", "a median needs every contribution"),
        ("trimmed_mean", "trimming needs every contribution"),
        ("krum", "Krum scores each contribution"),
        ("multi_krum", "Multi-Krum scores"),
        ("bulyan", "Bulyan selects and trims"),
        ("geometric_median", "the geometric median iterates"),
    ],
)
def test_robust_methods_are_refused_in_the_tier_naming_the_method_and_why(
    role: str, method: str, why: str
) -> None:
    (error,) = problems(tier_config(role, method))
    assert error.key == "federation.tasks.train.aggregation"
    assert error.value == method
    assert f"{method} is refused because {why}" in str(error)
    assert f"topology.role {role}" in str(error)
    assert "forwarding contributions to the root is not built yet" in str(error)


PRIVACY = {"noise_multiplier": 0.1, "clipping_norm": 1.0, "adaptive": True, "clipped_count_stddev": 1.0}


@pytest.mark.parametrize("role", ["root", "ingest"])
@pytest.mark.parametrize("method", ["weighted_average", "fedcurv_weighted_average"])
def test_privacy_around_a_method_exact_from_partial_sums_is_accepted_in_the_tier(
    role: str, method: str
) -> None:
    config = parse_config(tier_config(role, method, privacy=PRIVACY), Path("/etc/fedagg"), {})
    assert config.topology.role == Role(role)
    privacy = config.federation.tasks["train"].privacy
    assert privacy is not None
    assert {key: getattr(privacy, key) for key in PRIVACY} == PRIVACY


@pytest.mark.parametrize(("method", "key"), [("median", "aggregation"), ("adam", "privacy")])
def test_privacy_around_another_method_is_refused_in_the_tier_naming_the_method(
    method: str, key: str
) -> None:
    errors = {error.key: str(error) for error in problems(tier_config("root", method, privacy=PRIVACY))}
    assert list(errors) == [f"federation.tasks.train.{key}"]
    assert method in errors[f"federation.tasks.train.{key}"]


@pytest.mark.parametrize("method", ["weighted_average", "adam"])
def test_clipping_without_privacy_is_accepted_in_the_tier(method: str) -> None:
    config = parse_config(tier_config("ingest", method, clipping_norm=1.0), Path("/etc/fedagg"), {})
    assert config.federation.tasks["train"].clipping_norm == 1.0


def test_clipping_with_privacy_is_refused_in_the_tier_with_the_reason() -> None:
    data = tier_config("root", clipping_norm=1.0, privacy=PRIVACY)
    keys = {error.key: str(error) for error in problems(data)}
    assert list(keys) == ["federation.tasks.train.clipping_norm"]
    assert "clipping each update twice at the replicas" in keys["federation.tasks.train.clipping_norm"]


def test_an_ingest_replica_needs_the_root_address() -> None:
    data = tier_config("ingest")
    data["topology"]["root_address"] = ""
    (error,) = problems(data)
    assert error.key == "topology.root_address"
    assert "host:port of the root's tier port" in str(error)


def test_a_root_needs_its_replicas_and_refuses_duplicates() -> None:
    data = tier_config("root")
    data["topology"]["replicas"] = []
    (error,) = problems(data)
    assert error.key == "topology.replicas"
    data["topology"]["replicas"] = ["ingest-0", "ingest-0"]
    (error,) = problems(data)
    assert error.key == "topology.replicas"
    assert "distinct" in str(error)


def test_the_roots_tier_port_may_not_share_another_listeners_port() -> None:
    data = tier_config("root")
    data["topology"]["tier_port"] = 50053
    (error,) = problems(data)
    assert error.key == "topology.tier_port"
    assert "ops.metrics_port" in str(error)


def test_an_unknown_role_names_the_choices() -> None:
    data = tier_config("root")
    data["topology"]["role"] = "relay"
    (error,) = problems(data)
    assert error.key == "topology.role"
    assert "standalone" in str(error)
    assert "ingest" in str(error)


def test_an_adaptive_optimizers_max_update_is_refused_in_the_tier() -> None:
    (error,) = problems(
        tier_config("ingest", "adam", aggregation_settings={"learning_rate": 0.1, "max_update": 1.0})
    )
    assert error.key == "federation.tasks.train.aggregation_settings.max_update"
    assert "not built yet" in str(error)


def config_check(path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``fedagg config check`` of ``data`` written to ``path``."""
    path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "config", "check", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )


def test_config_check_accepts_an_ingest_replica_with_its_tier_certificates(
    tier_pki: Pki, tmp_path: Path
) -> None:
    data = tier_config("ingest")
    data["topology"]["replica"] = "ingest-0"
    data["topology"]["tier_certificate_dir"] = str(
        tier_certificates(tier_pki, ("ingest-0",), tmp_path / "tier")
    )
    data["storage"] = {"state_dir": str(tmp_path / "state")}
    data["server"] = {"tls": {"certificate_dir": str(tier_pki.server_dir)}}
    checked = config_check(tmp_path / "fedagg.yaml", data)
    assert checked.returncode == 0, checked.stderr


def test_an_ingest_replica_needs_mutual_tls() -> None:
    data = tier_config("ingest")
    data["server"] = {"tls": {"mode": "insecure"}}
    (error,) = problems(data)
    assert error.key == "server.tls.mode"
    assert "mtls under topology.role ingest" in str(error)


def test_config_check_names_unusable_tier_certificates(tmp_path: Path) -> None:
    data = tier_config("root")
    data["topology"]["tier_certificate_dir"] = str(tmp_path / "missing")
    data["storage"] = {"state_dir": str(tmp_path / "state")}
    data["federation"]["initial_model"] = str(write_zero_model(tmp_path))
    checked = config_check(tmp_path / "fedagg.yaml", data)
    assert checked.returncode == 2
    assert f"topology.tier_certificate_dir: got '{tmp_path / 'missing'}'" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_an_ingest_replicas_name_defaults_to_its_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(tier_config("ingest"), Path("/etc/fedagg"), {})
    monkeypatch.setenv("POD_NAME", "fedagg-ingest-3")
    assert config.topology.replica_name == "fedagg-ingest-3"
    named = tier_config("ingest")
    named["topology"]["replica"] = "ingest-a"
    assert parse_config(named, Path("/etc/fedagg"), {}).topology.replica_name == "ingest-a"


@pytest.mark.parametrize(
    "stragglers",
    [{"policy": "cutoff_time", "cutoff_seconds": 30}, {"policy": "percentage", "percent_needed": 0.5}],
)
def test_a_round_that_may_close_early_is_accepted_in_the_tier(stragglers: dict[str, Any]) -> None:
    data = tier_config("root")
    data["federation"]["stragglers"] = stragglers
    config = parse_config(data, Path("/etc/fedagg"), {})
    assert config.topology.role == Role.ROOT


def test_an_ingest_replica_needs_its_tier_certificates() -> None:
    data = tier_config("ingest")
    del data["topology"]["tier_certificate_dir"]
    (error,) = problems(data)
    assert error.key == "topology.tier_certificate_dir"
    assert "a subdirectory named after each replica" in str(error)


def test_config_check_reports_a_roots_tier_port_and_certificate(tier_pki: Pki, tmp_path: Path) -> None:
    data = tier_config("root")
    data["topology"].update({"tier_port": 50051, "tier_certificate_dir": str(tier_pki.server_dir)})
    data["storage"] = {"state_dir": str(tmp_path / "state")}
    data["federation"]["initial_model"] = str(write_zero_model(tmp_path))

    checked = config_check(
        tmp_path / "fedagg.yaml", data
    )  # 50051 is server.port's default: a root never binds it

    assert checked.returncode == 0, checked.stderr
    assert "root, port 50051, TLS mtls" in checked.stdout
    assert "tier       [::]:50051  grpc, mutual TLS" in checked.stdout
    assert "federation [" not in checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr


def test_a_root_allows_the_calls_its_replicas_relay_on_one_connection(tier_pki: Pki, tmp_path: Path) -> None:
    data = tier_config("root")
    data["federation"]["collaborators"] = [f"site-{index}" for index in range(40)]
    data["federation"]["initial_model"] = str(write_zero_model(tmp_path))
    data["topology"]["tier_certificate_dir"] = str(tier_pki.server_dir)
    data["storage"] = {"state_dir": str(tmp_path / "state")}
    root = build_aggregator(parse_config(data, tmp_path, {}))
    standalone_data = {
        **data,
        "topology": {"role": "standalone"},
        "storage": {"state_dir": str(tmp_path / "s")},
    }
    standalone_data["server"] = {"tls": {"mode": "insecure"}}
    standalone = build_aggregator(parse_config(standalone_data, tmp_path, {}))

    assert root.server.options.connection_limits.max_concurrent_streams == 2 * 40 + 16
    assert standalone.server.options.connection_limits.max_concurrent_streams == 16
    for process in (root, standalone):
        if process.root is not None:
            process.root.close()
