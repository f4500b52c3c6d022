"""High availability in the Helm chart (ha.enabled), rendered by the real Helm SDK: a leader and standbys of one
Deployment on a ReadWriteMany state volume, the Lease's RBAC, the Service that reaches the ready leader only, the
anti-affinity and the disruption budget; what cannot work is refused at render time."""

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
    NAMESPACE,
    SCENARIOS,
    invalid_object,
    kubernetes_validator,
    render,
    rendered,
    scenario_values,
    with_federation,
)

LEASE = f"{FULLNAME}-leader"
ELECTION_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [LEASE],
        "verbs": ["get", "update"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
SHARED = {"accessModes": ["ReadWriteMany"]}


@pytest.fixture(autouse=True)
def _helm_sdk() -> None:
    chart.require_helm_sdk()


def ha_values(ha: dict[str, Any] | None = None, **values: Any) -> dict[str, Any]:
    """A minimal HA release: a Deployment, ha.enabled (plus ``ha``) and a ReadWriteMany claim, plus ``values``."""
    return with_federation(
        **{"workload": "Deployment", "persistence": SHARED, "ha": {"enabled": True, **(ha or {})}, **values}
    )


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


# --- the Service reaches the ready leader only ----------------------------------------------------------------------


def test_the_federation_service_selects_only_ready_pods() -> None:
    objects = rendered("ha")
    service = objects.one("Service", FULLNAME)["spec"]
    readiness = objects.container["readinessProbe"]["grpc"]
    ports = {port["name"]: port["containerPort"] for port in objects.container["ports"]}

    # Endpoints are the ready pods only; the readiness service is the one standbys answer NOT_SERVING.
    assert service["publishNotReadyAddresses"] is False
    assert readiness == {"port": ports["ops"], "service": "openfl.aggregator.Aggregator"}
    assert objects.config()["ops"]["port"] == ports["ops"]
    assert objects.container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert service["selector"].items() <= objects.workload["spec"]["template"]["metadata"]["labels"].items()
    assert [port["targetPort"] for port in service["ports"]] == ["federation"]


# --- RBAC -----------------------------------------------------------------------------------------------------------


def test_rbac_grants_exactly_the_lease_verbs_on_the_one_lease() -> None:
    objects = rendered("ha")

    role = objects.one("Role", f"{FULLNAME}-election")
    binding = objects.one("RoleBinding", f"{FULLNAME}-election")
    assert role["rules"] == ELECTION_RULES
    assert role["rules"][0]["resourceNames"] == [objects.config()["ha"]["lease_name"]]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{FULLNAME}-election",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert objects.pod_spec["serviceAccountName"] == FULLNAME
    assert not objects.has("ClusterRole")
    assert not objects.has("ClusterRoleBinding")
    # The hook's Role is as without HA.
    assert objects.one("Role", FULLNAME)["rules"] == rendered("deployment").one("Role", FULLNAME)["rules"]


def test_without_the_hook_the_election_still_reaches_the_api() -> None:
    objects = render(
        ha_values(config={"hooks": {"kubernetes": {"enabled": "false"}}}, networkPolicy={"enabled": True})
    )

    assert [role["metadata"]["name"] for role in objects.all("Role")] == [f"{FULLNAME}-election"]
    assert objects.pod_spec["automountServiceAccountToken"] is True
    egress_ports = [
        port["port"] for rule in objects.one("NetworkPolicy")["spec"]["egress"] for port in rule["ports"]
    ]
    assert {443, 6443} <= set(egress_ports)


def test_rbac_create_false_leaves_the_roles_to_the_operator() -> None:
    objects = render(ha_values(rbac={"create": False}))

    assert not objects.has("Role")
    assert not objects.has("RoleBinding")
    assert objects.pod_spec["automountServiceAccountToken"] is True


# --- spreading and disruptions --------------------------------------------------------------------------------------


def anti_affinity(**ha: Any) -> Any:
    return render(ha_values(ha)).pod_spec.get("affinity", {}).get("podAntiAffinity")


def test_the_replicas_are_spread_across_nodes() -> None:
    term = {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": rendered("ha").one("Deployment")["spec"]["selector"]["matchLabels"]},
    }

    assert rendered("ha").pod_spec["affinity"]["podAntiAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [term]
    }
    assert anti_affinity() == {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
    }
    assert anti_affinity(podAntiAffinity="none") is None
    zones = anti_affinity(topologyKey="topology.kubernetes.io/zone")
    assert zones["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "topology.kubernetes.io/zone"
    )


def test_the_operators_affinity_is_kept_and_its_anti_affinity_wins() -> None:
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["fl"]}]}]
        }
    }
    own = {"preferredDuringSchedulingIgnoredDuringExecution": []}

    merged = render(ha_values(affinity={"nodeAffinity": node_affinity})).pod_spec["affinity"]
    replaced = render(ha_values(affinity={"podAntiAffinity": own})).pod_spec["affinity"]

    assert merged["nodeAffinity"] == node_affinity
    assert "preferredDuringSchedulingIgnoredDuringExecution" in merged["podAntiAffinity"]
    assert replaced == {"podAntiAffinity": own}


def test_the_disruption_budget_is_on_with_ha_and_can_only_hold_the_leader() -> None:
    budget = rendered("ha").one("PodDisruptionBudget", FULLNAME)["spec"]
    readme = (CHART / "README.md").read_text()

    assert budget["minAvailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not render(ha_values(podDisruptionBudget={"enabled": False})).has("PodDisruptionBudget")
    assert not render(with_federation(workload="Deployment")).has("PodDisruptionBudget")
    assert "only the leader is Ready" in readme


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


# --- alerts -----------------------------------------------------------------------------------------------------------


def test_the_leadership_alerts_take_their_settings_from_the_values() -> None:
    alerts = {"FedaggNoLeader": {"for": "3m"}, "FedaggLeaderFlapping": {"for": "10m", "transitions": 6}}

    spec = render(ha_values(prometheusRule={"enabled": True, "alerts": alerts})).one("PrometheusRule")["spec"]
    rules = {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}

    assert rules["FedaggNoLeader"]["for"] == "3m"
    assert rules["FedaggLeaderFlapping"]["for"] == "10m"
    assert "(increase(fedagg_leader_transitions_total[1h])) > 6" in rules["FedaggLeaderFlapping"]["expr"]
    assert "for" not in rendered("ha").one("PrometheusRule")["spec"]["groups"][0]["rules"][-1]
