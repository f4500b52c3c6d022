"""Configuration: every class of error names the key, the value and what was expected."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedagg.app import check_files
from fedagg.config.loading import load_config, parse_config
from fedagg.config.operations import AfterFinish
from fedagg.federation.plan import AssignerKind
from fedagg.server.tls import TlsMode
from fedagg.settings import ConfigError
from tests.support.models import write_zero_model
from tests.support.pki import Pki

MINIMAL: dict[str, Any] = {
    "federation": {"federation_uuid": "fed_1", "collaborators": ["one", "two"], "rounds_to_train": 3},
}


def config_with(**sections: dict[str, Any]) -> dict[str, Any]:
    data = {key: dict(value) for key, value in MINIMAL.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def error_of(data: object, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, Path("/etc/fedagg"), environ or {})
    return raised.value


def test_minimal_configuration_gets_documented_defaults() -> None:
    config = parse_config(MINIMAL, Path("/etc/fedagg"), {})
    plan = config.plan()

    assert plan.aggregator_uuid == "aggregator_fed_1"
    assert list(plan.tasks) == ["aggregated_model_validation", "train", "locally_tuned_model_validation"]
    assert plan.assigner.kind == AssignerKind.RANDOM_GROUPED
    assert math.isinf(plan.stragglers.cutoff_seconds)
    assert (config.server.port, config.ops.port, config.ops.metrics_port) == (50051, 50052, 50053)
    assert config.server.tls.mode == TlsMode.MUTUAL
    assert config.ops.after_finish == AfterFinish.EXIT
    assert config.storage.state_dir == Path("/var/lib/fedagg")
    assert config.last_model_path == Path("/var/lib/fedagg/last.pbuf")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (config_with(server={"prot": 1}), "server.prot: got 1, expected one of the known keys"),
        (config_with(server={"prot": 1}), "(did you mean 'port'?)"),
        (config_with(server={"port": "fifty"}), "server.port: got 'fifty', expected an integer"),
        (config_with(server={"port": 70000}), "server.port: got 70000, expected an integer from 0 to 65535"),
        (
            config_with(server={"stream_window_bytes": 1024}),
            "server.stream_window_bytes: got 1024, expected 0 (automatic) or a number of bytes from 65535 to 2147483647",
        ),
        (
            config_with(server={"tls": {"mode": "ssl"}}),
            "server.tls.mode: got 'ssl', expected one of ['mtls', 'tls', 'insecure']",
        ),
        (
            config_with(ops={"after_finish": True}),
            "ops.after_finish: got True, expected one of ['exit', 'stay']",
        ),
        (
            {"federation": {"collaborators": ["a"], "rounds_to_train": 1}},
            "federation.federation_uuid: got None, expected a value (this setting is required)",
        ),
        (
            config_with(federation={"collaborators": "one,two"}),
            "federation.collaborators: got 'one,two', expected a list",
        ),
        (
            config_with(federation={"rounds_to_train": 0}),
            "federation.rounds_to_train: got 0, expected an integer from 1 to 2147483647",
        ),
        (
            config_with(
                federation={
                    "assigner": {"task_groups": [{"name": "g", "tasks": ["train"], "percentage": 0.5}]}
                }
            ),
            "federation.assigner.task_groups[].percentage: got [0.5], expected shares of 0 or more that sum to 1.0 (a 0% group, like OpenFL 1.9's 'evaluation', runs only when selected)",
        ),
        (
            config_with(federation={"stragglers": {"minimum_reporting": 5}}),
            "federation.stragglers.minimum_reporting: got 5, expected between 1 and the number of collaborators (2)",
        ),
        (
            config_with(ops={"drain_seconds": 30, "grace_seconds": 20}),
            "ops.drain_seconds: got 30.0, expected less than ops.grace_seconds (20.0)",
        ),
        (
            config_with(storage={"state_dir": ""}),
            "storage.state_dir: got '', expected a file or directory path",
        ),
        (["a", "list"], "(top level): got ['a', 'list'], expected a mapping of sections"),
        ({**MINIMAL, "server": []}, "server: got [], expected a mapping of settings"),
    ],
)
def test_errors_name_the_key_the_value_and_the_expectation(data: object, message: str) -> None:
    assert message in str(error_of(data))


def test_environment_overrides_paths_and_settings() -> None:
    environ = {
        "FEDAGG__STORAGE__STATE_DIR": "/var/lib/fedagg",
        "FEDAGG__SERVER__TLS__CERTIFICATE_DIR": "/tls",
        "FEDAGG__SERVER__PORT": "6000",
        "OTHER": "ignored",
    }

    config = parse_config(MINIMAL, Path("/etc/fedagg"), environ)

    assert config.storage.state_dir == Path("/var/lib/fedagg")
    assert config.server.tls.certificate_dir == Path("/tls")
    assert config.server.port == 6000


def test_environment_values_are_validated_too() -> None:
    assert "server.port: got 'many', expected an integer" in str(
        error_of(MINIMAL, {"FEDAGG__SERVER__PORT": "many"})
    )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("federation: [unclosed")

    with pytest.raises(
        ConfigError, match=r"missing\.yaml: got None, expected the configuration in a readable file"
    ):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(
        ConfigError, match=r"broken\.yaml: got None, expected the configuration in valid YAML"
    ):
        load_config(broken, environ={})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "fedagg.yaml"
    path.parent.mkdir()
    path.write_text(
        yaml.safe_dump(
            config_with(
                federation={"initial_model": "models/init.pbuf"}, server={"tls": {"certificate_dir": "tls"}}
            )
        )
    )

    config = load_config(path, environ={})

    assert config.federation.initial_model == tmp_path / "conf" / "models" / "init.pbuf"
    assert config.server.tls.files().root_certificate == tmp_path / "conf" / "tls" / "ca.crt"


def test_check_files_names_bad_paths(tmp_path: Path, pki: Pki) -> None:
    base = config_with(
        storage={"state_dir": str(tmp_path / "state")},
        server={"tls": {"certificate_dir": str(pki.server_dir)}},
    )
    missing_model = parse_config(
        config_with(**{**base, "federation": {**base["federation"], "initial_model": "nope.pbuf"}}),
        tmp_path,
        {},
    )
    no_tls = parse_config(
        config_with(
            federation={**base["federation"], "initial_model": str(write_zero_model(tmp_path))},
            storage=base["storage"],
            server={"tls": {"certificate_dir": "absent"}},
        ),
        tmp_path,
        {},
    )

    with pytest.raises(
        ConfigError, match=r"federation.initial_model: got '.*nope.pbuf', expected a readable"
    ):
        check_files(missing_model)
    with pytest.raises(
        ConfigError, match=r"server.tls: got '.*absent', expected usable certificates \(cannot read"
    ):
        check_files(no_tls)
    assert not (tmp_path / "state").exists(), "checking creates nothing"
