"""What the HA replicas get from the cluster, rendered by the real Helm SDK: the Service that reaches the ready
leader only, the Lease's RBAC, the anti-affinity and the disruption budget, the leadership alerts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import (
    CHART,
    FULLNAME,
    LEASE,
    NAMESPACE,
    ha_values,
    render,
    rendered,
    with_federation,
)

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

pytestmark = pytest.mark.usefixtures("helm_sdk")


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


# --- alerts -----------------------------------------------------------------------------------------------------------


def test_the_leadership_alerts_take_their_settings_from_the_values() -> None:
    alerts = {"FedaggNoLeader": {"for": "3m"}, "FedaggLeaderFlapping": {"for": "10m", "transitions": 6}}

    spec = render(ha_values(prometheusRule={"enabled": True, "alerts": alerts})).one("PrometheusRule")["spec"]
    rules = {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}

    assert rules["FedaggNoLeader"]["for"] == "3m"
    assert rules["FedaggLeaderFlapping"]["for"] == "10m"
    assert "(increase(fedagg_leader_transitions_total[1h])) > 6" in rules["FedaggLeaderFlapping"]["expr"]
    assert "for" not in rendered("ha").one("PrometheusRule")["spec"]["groups"][0]["rules"][-1]
