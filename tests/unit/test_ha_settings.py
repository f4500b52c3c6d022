"""The ``ha`` section: checked at start (key, value, expectation), overridable from the environment, and turned
into this process's leadership (identity and namespace from the downward API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from fedagg.assembly import leadership_from_config
from fedagg.config.ha import ElectionBackend
from fedagg.config.loading import parse_config
from fedagg.settings import ConfigError

FEDERATION = {"federation_uuid": "fed_1", "collaborators": ["one", "two"], "rounds_to_train": 3}


def parsed(ha: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return parse_config({"federation": FEDERATION, "ha": ha}, Path("/etc/fedagg"), environ or {})


def refusal(ha: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        parsed(ha)
    return str(raised.value)


def test_off_by_default_with_the_documented_timings() -> None:
    settings = parse_config({"federation": FEDERATION}, Path("/etc/fedagg"), {}).ha

    assert not settings.enabled
    assert settings.backend == ElectionBackend.KUBERNETES
    assert (settings.lease_seconds, settings.renew_deadline_seconds, settings.retry_seconds) == (
        15,
        10.0,
        2.0,
    )


def test_enabled_from_the_environment() -> None:
    settings = parsed({}, {"FEDAGG__HA__ENABLED": "true", "FEDAGG__HA__IDENTITY": "fedagg-1"}).ha

    assert settings.enabled
    assert settings.identity == "fedagg-1"


@pytest.mark.parametrize(
    ("ha", "message"),
    [
        pytest.param(
            {"lease_seconds": 10, "renew_deadline_seconds": 10},
            "ha.renew_deadline_seconds: got 10.0, expected less than ha.lease_seconds (10)",
            id="deadline-not-below-lease",
        ),
        pytest.param(
            {"renew_deadline_seconds": 2, "retry_seconds": 3},
            "ha.retry_seconds: got 3.0, expected less than ha.renew_deadline_seconds (2.0)",
            id="retry-not-below-deadline",
        ),
        pytest.param({"lease_seconds": 0}, "ha.lease_seconds: got 0, expected", id="lease-zero"),
        pytest.param({"backend": "zookeeper"}, "ha.backend: got 'zookeeper', expected one of", id="backend"),
        pytest.param(
            {"enabled": True, "backend": "etcd", "etcd_endpoint": "127.0.0.1:2379"},
            "ha.etcd_endpoint: got '127.0.0.1:2379', expected an http:// or https:// URL",
            id="etcd-endpoint",
        ),
    ],
)
def test_refusals_name_the_key_the_value_and_the_expectation(ha: dict[str, Any], message: str) -> None:
    assert message in refusal(ha)


def test_no_leadership_unless_enabled() -> None:
    assert leadership_from_config(parsed({}).ha, CollectorRegistry(), k8s.Configuration) is None


def test_the_identity_and_namespace_come_from_the_downward_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "fedagg-7f9c")
    monkeypatch.setenv("POD_NAMESPACE", "federation")

    leadership = leadership_from_config(parsed({"enabled": True}).ha, CollectorRegistry(), k8s.Configuration)

    assert leadership is not None
    assert leadership.identity == "fedagg-7f9c"
    assert leadership.description == "Lease federation/fedagg"


def test_a_kubernetes_lease_needs_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr("fedagg.ops.kube.NAMESPACE_FILE", Path("/nonexistent/namespace"))

    with pytest.raises(ConfigError, match=r"ha\.namespace"):
        leadership_from_config(parsed({"enabled": True}).ha, CollectorRegistry(), k8s.Configuration)
