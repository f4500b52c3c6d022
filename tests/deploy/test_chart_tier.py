"""The scale-out tier in the Helm chart (topology.ingest.replicas = K > 0), rendered by the real Helm SDK: a root
StatefulSet of one that only the ingest replicas reach, K ingest replicas behind the federation Service, a claim
per pod, budgets and network policies; and K = 0 renders the chart exactly as main's standalone chart. The tier's
certificates: test_chart_tier_certificates.py; what each role's fedagg.yaml says, that fedagg accepts it, and what
is refused at render time: test_chart_tier_config.py."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    CRD_KINDS,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    TIER_SCENARIOS,
    invalid_object,
    kubernetes_validator,
    render,
    scenario_values,
    with_federation,
)
from tests.deploy.tier_chart import (
    INGEST_NAME,
    ROLE,
    ROOT_NAME,
    tier,
    tier_scenario,
    tier_values,
)

#: main's standalone chart: K = 0 must render every one of its scenarios byte for byte as it does. A deliberate
#: change of the standalone rendering later moves this commit forward.
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
STANDALONE_BASELINE = "4cee747dbbd3d659af89f5619a1620b20db49483"

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- the workloads ----------------------------------------------------------------------------------------------------


def test_the_tier_scenario_is_a_root_of_one_and_k_ingest_replicas_with_a_claim_each() -> None:
    rendering = tier_scenario()
    objects = rendering.objects

    assert rendering.root["spec"]["replicas"] == 1
    assert rendering.ingest["spec"]["replicas"] == 3
    assert not objects.has("Deployment")
    assert not objects.has("Job")
    # No shared claim: each pod gets its own from volumeClaimTemplates, sized per role.
    assert not objects.has("PersistentVolumeClaim")
    for statefulset, size in ((rendering.root, "10Gi"), (rendering.ingest, "20Gi")):
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "state"
        assert claim["spec"]["resources"]["requests"]["storage"] == size
        assert "state" not in {v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]}
        assert {"name": "state", "mountPath": "/var/lib/fedagg"} in rendering.container(statefulset)[
            "volumeMounts"
        ]
        assert (
            statefulset["spec"]["selector"]["matchLabels"].items()
            <= rendering.pod_labels(statefulset).items()
        )
    assert rendering.container(rendering.ingest)["resources"]["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert rendering.container(rendering.root)["resources"] == DEFAULTS["resources"]


def test_an_ingest_replica_knows_its_name_from_the_pod() -> None:
    rendering = tier(tier_values())

    env = {item["name"]: item for item in rendering.container(rendering.ingest)["env"]}
    assert env["FEDAGG__TOPOLOGY__REPLICA"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "FEDAGG__TOPOLOGY__REPLICA" not in {
        item["name"] for item in rendering.container(rendering.root)["env"]
    }


def test_readiness_is_the_grpc_readiness_service_on_the_ops_port() -> None:
    rendering = tier(tier_values())

    for statefulset in (rendering.root, rendering.ingest):
        container = rendering.container(statefulset)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert container["readinessProbe"]["grpc"] == {
            "port": ports["ops"],
            "service": "openfl.aggregator.Aggregator",
        }
        assert container["livenessProbe"]["grpc"]["service"] == "liveness"
        assert rendering.config(statefulset)["ops"]["port"] == ports["ops"]


@pytest.mark.parametrize("version", ["1.27", "1.37"])
@pytest.mark.parametrize(
    "values",
    [
        *(scenario_values(scenario) for scenario in TIER_SCENARIOS),
        tier_values(1),
        tier_values(
            2,
            tls={"certManager": {"enabled": True, "issuerRef": {"name": "fedagg-ca"}}},
            topology={"tls": {"issuerRef": {"name": "tier-ca", "kind": "ClusterIssuer"}}},
            networkPolicy={"enabled": True},
            config={"hooks": {"kubernetes": {"enabled": "false"}}},
        ),
    ],
    ids=[*TIER_SCENARIOS, "one replica, secrets", "two replicas, a cluster issuer, no hook"],
)
def test_the_tier_renders_valid_kubernetes(values: dict[str, Any], version: str) -> None:
    import jsonschema  # noqa: PLC0415

    from tests.deploy.test_kubernetes_schemas import CRD_SCHEMAS  # noqa: PLC0415

    validator = kubernetes_validator()
    objects = render(values).objects

    problems = [
        invalid_object(document, version, validator)
        for document in objects
        if (document["apiVersion"], document["kind"]) not in CRD_KINDS
    ]
    for document in objects:
        if (document["apiVersion"], document["kind"]) in CRD_KINDS:
            jsonschema.validate(document, CRD_SCHEMAS[(document["apiVersion"], document["kind"])])

    assert [problem for problem in problems if problem] == []
    assert [d["kind"] for d in objects].count("StatefulSet") == 2


@pytest.mark.parametrize("scenario", TIER_SCENARIOS)
@pytest.mark.parametrize("kube_version", ["v1.27.0", "v1.37.0"])
def test_the_tier_scenario_lints_strictly(scenario: str, kube_version: str) -> None:
    report = chart.helm().lint(
        CHART, scenario_values(scenario), strict=True, namespace=NAMESPACE, kube_version=kube_version
    )

    assert [message for message in report["messages"] if message["severity"] >= 2] == []
    assert report["errors"] == []


# --- one address for the collaborators, and the root behind it -------------------------------------------------------


@pytest.mark.parametrize("service_type", ["ClusterIP", "LoadBalancer", "NodePort"])
def test_the_federation_service_selects_the_ingest_pods_only(service_type: str) -> None:
    rendering = tier(tier_values(service={"type": service_type}))

    federation = rendering.objects.one("Service", FULLNAME)["spec"]
    assert rendering.selected_by(federation["selector"]) == [INGEST_NAME]
    assert federation["selector"][ROLE] == "ingest"
    assert rendering.pod_labels(rendering.root)[ROLE] == "root"
    assert [port["targetPort"] for port in federation["ports"]] == ["federation"]
    ingest_ports = {p["name"] for p in rendering.container(rendering.ingest)["ports"]}
    assert "federation" in ingest_ports
    assert rendering.ingest["spec"]["serviceName"] == FULLNAME


@pytest.mark.parametrize(
    "values",
    [
        tier_values(3),
        tier_values(
            2,
            service={"type": "LoadBalancer"},
            tls={"certManager": {"enabled": True, "issuerRef": {"name": "fedagg-ca"}}},
            tlsRoute={"enabled": True, "parentRefs": [{"name": "gateway"}], "hostnames": ["fl.example.org"]},
        ),
    ],
    ids=["cluster", "load balancer and a gateway"],
)
def test_the_root_is_not_exposed(values: dict[str, Any]) -> None:
    rendering = tier(values)
    objects = rendering.objects

    root_service = objects.one("Service", ROOT_NAME)["spec"]
    assert root_service["type"] == "ClusterIP"
    assert [(port["name"], port["targetPort"]) for port in root_service["ports"]] == [("tier", "tier")]
    assert rendering.selected_by(root_service["selector"]) == [ROOT_NAME]
    # Every Service that reaches the root is ClusterIP and has no federation port.
    for service in objects.all("Service"):
        if ROOT_NAME in rendering.selected_by(service["spec"]["selector"]):
            assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]
            assert "federation" not in {port["targetPort"] for port in service["spec"]["ports"]}
    # The root's container has no federation port; nothing routes to its Service from outside.
    assert "federation" not in {port["name"] for port in rendering.container(rendering.root)["ports"]}
    backends = [
        backend["name"]
        for route in objects.all("TLSRoute") + objects.all("Ingress") + objects.all("Route")
        for rule in route["spec"].get("rules", [])
        for backend in rule.get("backendRefs", [])
    ]
    assert ROOT_NAME not in backends
    assert set(backends) <= {FULLNAME}


def test_network_policies_let_only_the_ingest_replicas_reach_the_root() -> None:
    rendering = tier_scenario()
    policies = {p["metadata"]["name"]: p["spec"] for p in rendering.objects.all("NetworkPolicy")}
    ingest_labels = rendering.pod_labels(rendering.ingest)
    root_labels = rendering.pod_labels(rendering.root)
    tier_port = rendering.config(rendering.root)["topology"]["tier_port"]

    assert set(policies) == {ROOT_NAME, INGEST_NAME}
    root = policies[ROOT_NAME]
    assert root["podSelector"]["matchLabels"].items() <= root_labels.items()
    assert not root["podSelector"]["matchLabels"].items() <= ingest_labels.items()
    ports = [port["port"] for rule in root["ingress"] for port in rule["ports"]]
    assert "federation" not in ports
    (tier_rule,) = [rule for rule in root["ingress"] if rule["ports"][0]["port"] == "tier"]
    (source,) = tier_rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= ingest_labels.items()
    assert not source["podSelector"]["matchLabels"].items() <= root_labels.items()
    ingest = policies[INGEST_NAME]
    assert ingest["podSelector"]["matchLabels"].items() <= ingest_labels.items()
    assert "federation" in [port["port"] for rule in ingest["ingress"] for port in rule["ports"]]
    (to_root,) = [
        rule for rule in ingest["egress"] if rule.get("to") and rule["ports"][0]["port"] == tier_port
    ]
    assert to_root["to"][0]["podSelector"]["matchLabels"].items() <= root_labels.items()


def test_disruption_budgets_guard_the_ingest_replicas_and_optionally_the_root() -> None:
    rendering = tier(tier_values(4, topology={"ingest": {"maxUnavailable": 2}}))

    (budget,) = rendering.objects.all("PodDisruptionBudget")
    assert budget["metadata"]["name"] == INGEST_NAME
    assert budget["spec"]["maxUnavailable"] == 2
    assert rendering.selected_by(budget["spec"]["selector"]["matchLabels"]) == [INGEST_NAME]
    budgets = {b["metadata"]["name"]: b["spec"] for b in tier_scenario().objects.all("PodDisruptionBudget")}
    assert set(budgets) == {INGEST_NAME, ROOT_NAME}
    assert budgets[ROOT_NAME]["minAvailable"] == 1
    assert tier_scenario().selected_by(budgets[ROOT_NAME]["selector"]["matchLabels"]) == [ROOT_NAME]


# --- K = 0 is the chart before the tier -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart as it was before the tier (STANDALONE_BASELINE), extracted from Git, with today's ``files/``: the
    alert rules and the dashboard are deploy/prometheus's and deploy/grafana's copies (test_chart_monitoring.py),
    edited on their own; the tier never changed them, and K = 0 is about its templates and values."""
    git = shutil.which("git")
    require(git is not None and (ROOT / ".git").exists(), "needs git and the repository's history")
    assert git is not None
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", "--format=tar", STANDALONE_BASELINE, "helm/fedagg"],
        capture_output=True,
        check=False,
    )
    require(archive.returncode == 0, f"commit {STANDALONE_BASELINE} is not in this clone (a shallow clone?)")
    target = tmp_path_factory.mktemp("standalone")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    baseline = target / "helm" / "fedagg"
    shutil.rmtree(baseline / "files")
    shutil.copytree(CHART / "files", baseline / "files")
    return baseline


def render_chart(path: Path, values: dict[str, Any]) -> dict[str, str]:
    with chart.helm().Chart.load(path) as loaded:
        manifests: dict[str, str] = loaded.render(
            values=values, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return {name.split("/", 1)[1]: text for name, text in manifests.items() if text.strip()}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_tier_renders_byte_identical_to_the_chart_before_it(scenario: str, standalone_chart: Path) -> None:
    baseline_values = standalone_chart / "ci" / f"{scenario}-values.yaml"
    if not baseline_values.exists():
        pytest.skip(f"scenario {scenario} is newer than the chart before the tier")
    values = yaml.safe_load(baseline_values.read_text()) or {}
    explicit = {**values, "topology": {"ingest": {"replicas": 0}}}

    before = render_chart(standalone_chart, values)

    assert chart.render_manifests(values) == before
    assert chart.render_manifests(explicit) == before


# --- documentation --------------------------------------------------------------------------------------------------


def test_the_readme_example_renders_the_tier_it_describes() -> None:
    section = (CHART / "README.md").read_text().split("### Scale out")[1].split("\n### ")[0]
    example = yaml.safe_load(section.split("```yaml")[1].split("```")[0])

    rendering = tier(with_federation(**example))

    assert rendering.ingest["spec"]["replicas"] == example["topology"]["ingest"]["replicas"]
    for needle in ("fedagg.io/role: ingest", "ClusterIP", "CN is its pod name", "no spool", "ha.enabled"):
        assert needle in section, needle


# --- policies ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", TIER_SCENARIOS)
def test_checkov_finds_nothing_beyond_the_aggregators_justified_findings(
    scenario: str, tmp_path: Path
) -> None:
    """The tier's StatefulSets are held to test_checkov.py's justifications for the aggregator's workload."""
    from tests.deploy import tools  # noqa: PLC0415
    from tests.deploy.test_checkov import JUSTIFIED  # noqa: PLC0415

    binary = tools.checkov()
    for index, document in enumerate(chart.scenario_objects(scenario)):
        (tmp_path / f"{index:02d}-{document['kind'].lower()}.yaml").write_text(yaml.safe_dump(document))
    command = [
        binary,
        "--directory",
        str(tmp_path),
        "--framework",
        "kubernetes",
        "--skip-download",
    ]
    result = subprocess.run(
        [*command, "--compact", "--output", "json"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    (report,) = report if isinstance(report, list) else [report]
    assert report["summary"]["parsing_errors"] == 0
    findings = [
        (check["check_id"], check["resource"]) for check in report["results"].get("failed_checks", [])
    ]
    statefulset = re.compile(rf"StatefulSet\.{NAMESPACE}\.({ROOT_NAME}|{INGEST_NAME})")

    unjustified = [
        (check, resource)
        for check, resource in findings
        if not any(
            check == allowed
            and re.fullmatch(pattern, statefulset.sub(f"Deployment.{NAMESPACE}.{FULLNAME}", resource))
            for allowed, pattern in JUSTIFIED
        )
    ]

    assert unjustified == []
    # Both StatefulSets were scanned.
    scanned = {check["resource"] for check in report["results"].get("passed_checks", [])}
    assert {f"StatefulSet.{NAMESPACE}.{ROOT_NAME}", f"StatefulSet.{NAMESPACE}.{INGEST_NAME}"} <= scanned
