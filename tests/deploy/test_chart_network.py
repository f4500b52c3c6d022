"""The chart's network exposure: only the federation port leaves the cluster; the network policy."""

from __future__ import annotations

import pytest

from tests.deploy.chart import FULLNAME, SCENARIOS, render, rendered, scenario_values, with_federation

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- services: only the federation port leaves the cluster --------------------------------------------------------


@pytest.mark.parametrize("service_type", ["ClusterIP", "LoadBalancer", "NodePort"])
def test_only_the_federation_port_is_ever_outside_cluster_ip(service_type: str) -> None:
    objects = render(with_federation(service={"type": service_type}))

    exposed = {
        port["name"]
        for service in objects.all("Service")
        if service["spec"]["type"] != "ClusterIP"
        for port in service["spec"]["ports"]
    }
    ports = {
        port["name"]: service["spec"]["type"]
        for service in objects.all("Service")
        for port in service["spec"]["ports"]
    }
    assert exposed == ({"federation"} if service_type != "ClusterIP" else set())
    assert ports == {"federation": service_type, "ops": "ClusterIP", "metrics": "ClusterIP"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_scenario_publishes_the_ops_or_metrics_port(scenario: str) -> None:
    for service in rendered(scenario).all("Service"):
        names = {port["name"] for port in service["spec"]["ports"]}
        if service["spec"]["type"] != "ClusterIP":
            assert names == {"federation"}, service["metadata"]["name"]
        assert "nodePort" not in str([p for p in service["spec"]["ports"] if p["name"] != "federation"])


def test_load_balancer_options_reach_the_federation_service_only() -> None:
    service = {
        "type": "LoadBalancer",
        "loadBalancerClass": "service.k8s.aws/nlb",
        "loadBalancerIP": "203.0.113.10",
        "loadBalancerSourceRanges": ["198.51.100.0/24"],
        "externalTrafficPolicy": "Local",
        "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"},
        "federationNodePort": 30051,
    }
    objects = render(with_federation(service=service, opsService={"annotations": {"team": "ml"}}))

    federation = objects.one("Service", FULLNAME)
    ops = objects.one("Service", f"{FULLNAME}-ops")
    assert federation["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
    assert federation["spec"]["loadBalancerIP"] == "203.0.113.10"
    assert federation["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert federation["spec"]["externalTrafficPolicy"] == "Local"
    assert federation["spec"]["ports"][0]["nodePort"] == 30051
    assert federation["metadata"]["annotations"] == service["annotations"]
    assert ops["metadata"]["annotations"] == {"team": "ml"}
    for key in ("loadBalancerClass", "loadBalancerIP", "loadBalancerSourceRanges", "externalTrafficPolicy"):
        assert key not in ops["spec"]


def test_load_balancer_options_are_left_out_of_other_types() -> None:
    spec = render(
        with_federation(
            service={"type": "NodePort", "loadBalancerClass": "x", "loadBalancerIP": "203.0.113.10"}
        )
    ).one("Service", FULLNAME)["spec"]

    assert "loadBalancerClass" not in spec
    assert "loadBalancerIP" not in spec


# --- network policy -----------------------------------------------------------------------------------------------


def test_network_policy_opens_only_the_three_ports_and_dns_and_the_api() -> None:
    objects = rendered("network-policy")

    policy = objects.one("NetworkPolicy", FULLNAME)["spec"]
    pod_labels = objects.workload["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [[p["port"] for p in rule["ports"]] for rule in policy["ingress"]] == [
        ["federation"],
        ["ops"],
        ["metrics"],
    ]
    assert (
        policy["ingress"][0]["from"] == scenario_values("network-policy")["networkPolicy"]["federationFrom"]
    )
    assert [[p["port"] for p in rule["ports"]] for rule in policy["egress"]] == [[53, 53], [443, 6443]]
