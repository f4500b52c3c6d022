"""High availability in the Helm chart (ha.enabled), rendered by the real Helm SDK: a leader and standbys of one
Deployment on a ReadWriteMany state volume; what cannot work is refused at render time; without HA nothing changes.
What the replicas get from the cluster (Service, Lease RBAC, spreading, alerts) is in test_chart_ha_cluster.py.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedagg.config.loading import parse_config
from fedagg.config.schema import Config
from tests.conftest import require
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    FULLNAME,
    LEASE,
    NAMESPACE,
    SCENARIOS,
    ha_values,
    invalid_object,
    kubernetes_validator,
    render,
    rendered,
    scenario_values,
)

pytestmark = pytest.mark.usefixtures("helm_sdk")


def refusal(values: dict[str, Any]) -> str:
    """The message Helm fails the rendering with."""
    with pytest.raises(chart.helm().HelmError) as refused:
        chart.render_manifests(values)
    return str(refused.value)


# --- the workload -------------------------------------------------------------------------------------------------


def test_the_ha_scenario_runs_a_leader_and_standbys_of_one_deployment() -> None:
    objects = rendered("ha")

    deployment = objects.one("Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    # Standbys are never Ready: a rollout that waits for available new pods would stall (README.md).
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "100%"},
    }
    env = {item["name"]: item for item in objects.container["env"]}
    assert env["FEDAGG__HA__IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert objects.pod_spec["automountServiceAccountToken"] is True
    assert objects.config()["ha"] == {
        "enabled": True,
        "backend": "kubernetes",
        "lease_name": LEASE,
        "namespace": NAMESPACE,
        "lease_seconds": 15,
        "renew_deadline_seconds": 10,
        "retry_seconds": 2,
    }
    claim = objects.one("PersistentVolumeClaim", f"{FULLNAME}-state")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert objects.volume("state") == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }


def test_the_rendered_ha_config_is_a_valid_fedagg_config(tmp_path: Path) -> None:
    """fedagg reads the chart's ha section and the identity the pod's environment gives it."""
    require(
        "ha" in typing.get_type_hints(Config),
        "this fedagg has no ha configuration section yet (issue 21's election)",
    )
    objects = rendered("ha")

    config: Any = parse_config(
        objects.config(), tmp_path, environ={"FEDAGG__HA__IDENTITY": f"{FULLNAME}-7d9-x"}
    )

    assert (config.ha.enabled, str(config.ha.backend), config.ha.identity) == (
        True,
        "kubernetes",
        f"{FULLNAME}-7d9-x",
    )
    assert (config.ha.lease_name, config.ha.namespace) == (LEASE, NAMESPACE)
    assert (config.ha.lease_seconds, config.ha.renew_deadline_seconds, config.ha.retry_seconds) == (15, 10, 2)


def test_lease_settings_and_replicas_are_values() -> None:
    objects = render(
        ha_values(
            {"replicas": 3, "leaseName": "mnist-election", "leaseSeconds": 30, "renewDeadlineSeconds": 20},
        )
    )

    assert objects.one("Deployment")["spec"]["replicas"] == 3
    ha = objects.config()["ha"]
    assert (ha["lease_name"], ha["lease_seconds"], ha["renew_deadline_seconds"]) == ("mnist-election", 30, 20)
    assert objects.one("Role", f"{FULLNAME}-election")["rules"][0]["resourceNames"] == ["mnist-election"]
    assert (
        "mnist-election"
        in chart.render_manifests(ha_values({"leaseName": "mnist-election"}))["templates/NOTES.txt"]
    )


@pytest.mark.parametrize("version", ["1.27", "1.37"])
@pytest.mark.parametrize(
    "values",
    [
        ha_values(),
        ha_values({"replicas": 3, "podAntiAffinity": "none"}, persistence={"existingClaim": "shared-state"}),
        ha_values(
            {"topologyKey": "topology.kubernetes.io/zone"},
            config={"hooks": {"kubernetes": {"enabled": "false"}}},
            networkPolicy={"enabled": True},
            podDisruptionBudget={"enabled": False},
        ),
    ],
    ids=["defaults", "three replicas on an existing claim", "zones without the hook"],
)
def test_ha_renderings_are_valid_kubernetes(values: dict[str, Any], version: str) -> None:
    """Besides the ci/ha scenario (test_kubernetes_schemas.py checks every scenario at both versions)."""
    validator = kubernetes_validator()
    objects = render(values).objects

    problems = [invalid_object(document, version, validator) for document in objects]

    assert [problem for problem in problems if problem] == []
    assert {"Deployment", "Role", "RoleBinding", "Service"} <= {document["kind"] for document in objects}


# --- refused at render time -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteOncePod"])
def test_a_claim_that_attaches_to_one_node_is_refused_naming_the_values(mode: str) -> None:
    message = refusal(ha_values(persistence={"accessModes": [mode]}))

    assert "ha.enabled needs persistence.accessModes: [ReadWriteMany]" in message
    assert f"(got [{mode}])" in message


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (ha_values(workload="Job"), "ha.enabled needs workload: Deployment (got Job)"),
        (ha_values(persistence={"enabled": False}), "ha.enabled needs persistence.enabled: true"),
        (
            ha_values(probes={"readiness": {"enabled": False}}),
            "ha.enabled needs probes.readiness.enabled: true",
        ),
        (
            ha_values({"leaseSeconds": 10, "renewDeadlineSeconds": 10}),
            "ha.leaseSeconds (10) > ha.renewDeadlineSeconds (10) > ha.retrySeconds (2) is needed",
        ),
        (
            ha_values({"retrySeconds": 12}),
            "ha.leaseSeconds (15) > ha.renewDeadlineSeconds (10) > ha.retrySeconds (12) is needed",
        ),
    ],
    ids=[
        "a job",
        "no persistence",
        "no readiness probe",
        "deadline not before expiry",
        "retry after deadline",
    ],
)
def test_what_cannot_elect_safely_is_refused(values: dict[str, Any], needle: str) -> None:
    assert needle in refusal(values)


def test_the_schema_wants_two_replicas_at_least() -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded, pytest.raises(sdk.HelmValuesError, match="/ha/replicas"):
        loaded.validate_schema(ha_values({"replicas": 1}))


def test_an_existing_claim_is_used_as_given() -> None:
    """Its access mode is not the chart's to see: README.md says it must be ReadWriteMany."""
    objects = render(
        ha_values(persistence={"existingClaim": "shared-state", "accessModes": ["ReadWriteOnce"]})
    )

    assert not objects.has("PersistentVolumeClaim")
    assert objects.volume("state")["persistentVolumeClaim"] == {"claimName": "shared-state"}


# --- without HA nothing changes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "ha"])
def test_ha_values_change_nothing_while_ha_is_disabled(scenario: str) -> None:
    values = scenario_values(scenario)
    values["ha"] = {
        "enabled": False,
        "replicas": 5,
        "leaseName": "unused",
        "podAntiAffinity": "required",
        "topologyKey": "topology.kubernetes.io/zone",
    }

    assert chart.render_manifests(values) == chart.scenario_manifests(scenario)


def test_without_ha_there_is_no_election() -> None:
    objects = rendered("deployment")

    assert objects.one("Deployment")["spec"]["replicas"] == 1
    assert "ha" not in objects.config()
    assert "FEDAGG__HA__IDENTITY" not in {item["name"] for item in objects.container["env"]}
    assert [role["metadata"]["name"] for role in objects.all("Role")] == [FULLNAME]
    assert "publishNotReadyAddresses" not in objects.one("Service", FULLNAME)["spec"]


# --- documentation --------------------------------------------------------------------------------------------------


def test_the_readme_says_how_to_run_ha_and_on_which_storage() -> None:
    section = (CHART / "README.md").read_text().split("## High availability")[1].split("\n## ")[0]

    for needle in (
        "ReadWriteMany",
        "NFSv4",
        "CephFS",
        "EFS",
        "resourceNames",
        "maxUnavailable: 100%",
        "publishNotReadyAddresses",
        "fedagg_leader",
        "FedaggNoLeader",
    ):
        assert needle in section, needle
    assert yaml.safe_load(section.split("```yaml")[1].split("```")[0])["ha"]["enabled"] is True
