"""The Helm chart, linted and rendered by the real Helm SDK: the core objects, ports, probes, the config, the
test hook and the notes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedagg.config.loading import parse_config
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    render,
    rendered,
    scenario_values,
    with_federation,
)

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- lint and render ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", ["v1.27.0", "v1.37.0"])
def test_chart_lints_strictly(scenario: str, kube_version: str) -> None:
    report = chart.helm().lint(
        CHART, scenario_values(scenario), strict=True, namespace=NAMESPACE, kube_version=kube_version
    )

    # Severity 1 is informational ("icon is recommended"); strict lint fails on warnings (2) and errors (3).
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert problems == [], problems
    assert report["errors"] == []
    assert report["total_charts_linted"] == 1


def test_the_scenarios_cover_what_the_chart_offers() -> None:
    assert set(SCENARIOS) >= {
        "default",
        "deployment",
        "existing-secret",
        "cert-manager",
        "monitoring",
        "network-policy",
        "persistence-off",
        "openfl",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_renders_the_core_objects(scenario: str) -> None:
    objects = rendered(scenario)

    kinds = {document["kind"] for document in objects.objects}
    assert {"ConfigMap", "Service", "ServiceAccount", "Pod"} <= kinds
    assert len(objects.all("Job") + objects.all("Deployment")) == 1
    for document in objects.objects:
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "fedagg"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "fedagg-0.1.0"
        assert document["metadata"]["namespace"] == chart.scenario_namespace(scenario)


def test_values_without_a_federation_are_refused_naming_the_keys() -> None:
    report = chart.helm().lint(CHART, None, strict=True)

    errors = "\n".join(report["errors"])
    assert "federation_uuid" in errors
    assert "collaborators" in errors
    assert "rounds_to_train" in errors


# openfl: with its plan, in test_chart_openfl.py; ha: with the pod's identity, in test_chart_ha.py.
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("openfl", "ha")])
def test_the_rendered_config_is_a_valid_fedagg_config(scenario: str) -> None:
    config = rendered(scenario).config()

    parsed = parse_config(config, Path("/etc/fedagg/config"), environ={})

    assert str(parsed.storage.state_dir) == "/var/lib/fedagg"
    assert parsed.server.port == 50051


# --- ports, probes, config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_and_ports_match_the_container_and_the_config(scenario: str) -> None:
    objects = rendered(scenario)
    container = objects.container
    config = objects.config()

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"federation": 50051, "ops": 50052, "metrics": 50053}
    assert config["server"]["port"] == ports["federation"]
    assert config["ops"]["port"] == ports["ops"]
    assert config["ops"]["metrics_port"] == ports["metrics"]
    probes = {name: container[f"{name}Probe"]["grpc"] for name in ("startup", "readiness", "liveness")}
    assert probes == {
        "startup": {"port": ports["ops"], "service": "liveness"},
        "readiness": {"port": ports["ops"], "service": "openfl.aggregator.Aggregator"},
        "liveness": {"port": ports["ops"], "service": "liveness"},
    }
    federation = objects.one("Service", FULLNAME)
    ops = objects.one("Service", f"{FULLNAME}-ops")
    assert {port["name"]: port["targetPort"] for port in federation["spec"]["ports"]} == {
        "federation": "federation"
    }
    assert {port["name"]: port["targetPort"] for port in ops["spec"]["ports"]} == {
        "ops": "ops",
        "metrics": "metrics",
    }
    pod_labels = objects.workload["spec"]["template"]["metadata"]["labels"]
    for service in (federation, ops):
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_changed_ports_move_together() -> None:
    objects = render(with_federation(containerPorts={"federation": 8443, "ops": 8081, "metrics": 8080}))

    config = objects.config()
    container = objects.container
    assert (config["server"]["port"], config["ops"]["port"], config["ops"]["metrics_port"]) == (
        8443,
        8081,
        8080,
    )
    assert container["readinessProbe"]["grpc"]["port"] == 8081
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "federation": 8443,
        "ops": 8081,
        "metrics": 8080,
    }
    test_pod = objects.one("Pod")
    assert test_pod["spec"]["containers"][0]["args"][:3] == [
        "health",
        "--address",
        f"{FULLNAME}-ops.{NAMESPACE}.svc:50052",
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_env_has_the_downward_api_names(scenario: str) -> None:
    env = {item["name"]: item for item in rendered(scenario).container["env"]}

    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_termination_grace_exceeds_fedagg_shutdown_budget(scenario: str) -> None:
    objects = rendered(scenario)

    assert objects.pod_spec["terminationGracePeriodSeconds"] > objects.config()["ops"]["grace_seconds"]


def test_a_grace_period_below_fedagg_budget_is_refused() -> None:
    values = with_federation(terminationGracePeriodSeconds=20)

    with pytest.raises(chart.helm().HelmError, match=r"must be larger than config\.ops\.grace_seconds"):
        chart.render_manifests(values)


# --- test hook, notes, README -------------------------------------------------------------------------------------


def test_the_test_hook_checks_readiness_through_the_service() -> None:
    objects = rendered("default")

    pod = objects.one("Pod", f"{FULLNAME}-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
    assert pod["spec"]["containers"][0]["args"] == [
        "health",
        "--address",
        f"{FULLNAME}-ops.{NAMESPACE}.svc:50052",
        "--service",
        "openfl.aggregator.Aggregator",
        "--timeout",
        "10",
    ]
    assert pod["spec"]["containers"][0]["image"] == objects.container["image"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_notes_tell_how_to_reach_and_watch_the_federation() -> None:
    notes = chart.scenario_manifests("default")["templates/NOTES.txt"]

    assert f"{FULLNAME}.{NAMESPACE}.svc:50051" in notes
    assert "kubectl -n federation wait --for=condition=complete" in notes
    assert "grpc.health.v1.Health/Check" in notes
    assert "/metrics" in notes
    assert "no TLS-terminating" in notes


def test_readme_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    missing = [path for path in chart.leaf_paths(values) if f"`{path}`" not in readme]
    assert missing == []
