"""The Helm chart, linted and rendered by the real Helm SDK, then checked object by object."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedagg.config.loading import load_config, parse_config
from fedagg.config.schema import Config
from fedagg.openfl_workspace import load_openfl_workspace
from fedagg.settings import Range
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    FEDERATION,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    render,
    rendered,
    scenario_values,
    with_federation,
)
from tests.support.settings import leaf_settings, numeric_settings

HOOK_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


@pytest.fixture(autouse=True)
def _helm_sdk() -> None:
    chart.require_helm_sdk()


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


# openfl: with its plan (below); ha: with the pod's identity, in test_chart_ha.py.
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("openfl", "ha")])
def test_the_rendered_config_is_a_valid_fedagg_config(scenario: str) -> None:
    config = rendered(scenario).config()

    parsed = parse_config(config, Path("/etc/fedagg/config"), environ={})

    assert str(parsed.storage.state_dir) == "/var/lib/fedagg"
    assert parsed.server.port == 50051


def test_the_rendered_openfl_config_is_valid_with_the_plan(tmp_path: Path) -> None:
    objects = rendered("openfl")
    data = objects.one("ConfigMap", f"{FULLNAME}-config")["data"]
    mount = tmp_path / "openfl"  # as /etc/fedagg/openfl: plan.yaml and cols.yaml from the ConfigMap
    mount.mkdir()
    for name in ("fedagg.yaml", "plan.yaml", "cols.yaml"):
        (mount / name).write_text(data[name])

    overlay = load_openfl_workspace(mount / "plan.yaml", mount / "cols.yaml").overlay
    config = load_config(mount / "fedagg.yaml", environ={}, overlay=overlay)

    assert config.federation.collaborators == ("collaborator1", "collaborator2")
    assert config.federation.rounds_to_train == 2
    assert config.federation.federation_uuid.startswith("plan.yaml_")
    # The chart's paths win over the plan's workspace-relative ones (which would be inside the read-only mount).
    assert str(config.federation.initial_model) == "/etc/fedagg/model/init.pbuf"
    assert str(config.best_model_path) == "/var/lib/fedagg/best.pbuf"
    assert str(config.storage.state_dir) == "/var/lib/fedagg", "the chart keeps its state volume"
    assert str(config.last_model_path) == "/var/lib/fedagg/last.pbuf"
    assert str(config.server.tls.certificate_dir) == "/etc/fedagg/tls"
    assert (config.server.tls.certificate, config.server.tls.root_certificate) == ("tls.crt", "ca.crt")
    assert config.server.port == 50051


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


# --- workload modes -----------------------------------------------------------------------------------------------


def test_job_mode_completes_with_the_experiment() -> None:
    objects = rendered("default")

    job = objects.one("Job", FULLNAME)
    assert job["spec"]["completions"] == 1
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert objects.config()["ops"]["after_finish"] == "exit"
    assert objects.config()["ops"]["exit_code"] == 0
    assert not objects.has("Deployment")


def test_deployment_mode_is_one_replica_recreated_and_stays_up() -> None:
    objects = rendered("deployment")

    deployment = objects.one("Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert objects.config()["ops"]["after_finish"] == "stay"
    assert objects.one("Service", FULLNAME)["spec"]["type"] == "LoadBalancer"
    assert objects.one("Service", f"{FULLNAME}-ops")["spec"]["type"] == "ClusterIP"
    assert objects.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_config_changes_roll_the_pod() -> None:
    first = render(with_federation()).workload["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]
    second = render(with_federation(config={"logging": {"level": "debug", "format": "json"}})).workload[
        "spec"
    ]["template"]["metadata"]["annotations"]["checksum/config"]

    assert first != second


# --- TLS ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "secret"),
    [
        ("default", f"{FULLNAME}-tls"),
        ("existing-secret", "aggregator-tls"),
        ("cert-manager", f"{FULLNAME}-tls"),
    ],
)
def test_the_tls_secret_is_mounted_as_a_whole_directory(scenario: str, secret: str) -> None:
    objects = rendered(scenario)

    volume = objects.volume("tls")
    mount = objects.mount("tls")
    tls = objects.config()["server"]["tls"]
    assert volume["secret"]["secretName"] == secret
    assert "items" not in volume["secret"]
    assert mount == {"name": "tls", "mountPath": "/etc/fedagg/tls", "readOnly": True}
    assert tls == {
        "mode": "mtls",
        "certificate_dir": "/etc/fedagg/tls",
        "certificate": "tls.crt",
        "private_key": "tls.key",
        "root_certificate": "ca.crt",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_volume_is_mounted_with_subpath(scenario: str) -> None:
    objects = rendered(scenario)

    for pod_spec in [objects.pod_spec] + [pod["spec"] for pod in objects.all("Pod")]:
        for container in pod_spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount, mount
                assert "subPathExpr" not in mount, mount


def test_cert_manager_certificate_fills_the_mounted_secret() -> None:
    objects = rendered("cert-manager")

    certificate = objects.one("Certificate", FULLNAME)["spec"]
    assert certificate["secretName"] == objects.volume("tls")["secret"]["secretName"]
    assert certificate["issuerRef"] == {"name": "fedagg-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert certificate["dnsNames"] == [
        FULLNAME,
        f"{FULLNAME}.{NAMESPACE}",
        f"{FULLNAME}.{NAMESPACE}.svc",
        f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "aggregator.example.org",
    ]
    assert "server auth" in certificate["usages"]
    assert certificate["privateKey"]["rotationPolicy"] == "Always"


def test_insecure_mode_mounts_no_certificate() -> None:
    objects = render(with_federation(config={"server": {"tls": {"mode": "insecure"}}}))

    assert "tls" not in {volume["name"] for volume in objects.pod_spec["volumes"]}
    assert objects.config()["server"]["tls"] == {"mode": "insecure"}


# --- RBAC and service account -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "persistence-off"])
def test_rbac_grants_exactly_the_hook_verbs(scenario: str) -> None:
    objects = rendered(scenario)

    role = objects.one("Role", FULLNAME)
    binding = objects.one("RoleBinding", FULLNAME)
    assert role["rules"] == HOOK_RULES
    assert not objects.has("ClusterRole")
    assert not objects.has("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": chart.scenario_namespace(scenario)}
    ]
    assert objects.pod_spec["serviceAccountName"] == FULLNAME
    assert objects.pod_spec["automountServiceAccountToken"] is True
    assert objects.one("ServiceAccount", FULLNAME)["automountServiceAccountToken"] is False


def test_without_the_kubernetes_hook_there_is_no_role_and_no_token() -> None:
    objects = rendered("persistence-off")

    assert objects.config()["hooks"]["kubernetes"]["enabled"] == "false"
    assert not objects.has("Role")
    assert not objects.has("RoleBinding")
    assert objects.pod_spec["automountServiceAccountToken"] is False


def test_a_boolean_hook_switch_is_written_as_fedagg_expects() -> None:
    objects = render(with_federation(config={"hooks": {"kubernetes": {"enabled": False}}}))

    assert objects.config()["hooks"]["kubernetes"]["enabled"] == "false"
    assert not objects.has("Role")


# --- security -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context_is_hardened(scenario: str) -> None:
    objects = rendered(scenario)

    for pod_spec in [objects.pod_spec] + [pod["spec"] for pod in objects.all("Pod")]:
        pod_context = pod_spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == 10001
        assert pod_context["fsGroup"] == 10001
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod_spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == 10001
            assert container["resources"]["limits"]["memory"]
            assert container["resources"]["requests"]["cpu"]
        assert pod_spec["enableServiceLinks"] is False


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_writable_paths_are_only_the_state_volume_and_tmp(scenario: str) -> None:
    objects = rendered(scenario)

    writable = {m["mountPath"] for m in objects.container["volumeMounts"] if not m.get("readOnly")}
    extra = {
        m["mountPath"]
        for m in scenario_values(scenario).get("extraVolumeMounts", [])
        if not m.get("readOnly")
    }
    assert writable - extra == {"/var/lib/fedagg", "/tmp"}
    assert objects.config()["storage"]["state_dir"] == "/var/lib/fedagg"


# --- storage ------------------------------------------------------------------------------------------------------


def test_state_is_on_a_claim_by_default_and_on_an_emptydir_without_persistence() -> None:
    default = rendered("default")
    ephemeral = rendered("persistence-off")

    claim = default.one("PersistentVolumeClaim", f"{FULLNAME}-state")
    assert default.volume("state")["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-state"}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]
    assert not ephemeral.has("PersistentVolumeClaim")
    assert ephemeral.volume("state")["emptyDir"] == {"sizeLimit": "1Gi"}


def test_an_existing_claim_is_used_as_is() -> None:
    objects = render(with_federation(persistence={"existingClaim": "models", "storageClassName": ""}))

    assert not objects.has("PersistentVolumeClaim")
    assert objects.volume("state")["persistentVolumeClaim"] == {"claimName": "models"}


def test_the_initial_model_configmap_is_mounted_and_configured() -> None:
    objects = rendered("default")

    assert objects.volume("initial-model")["configMap"]["name"] == "mnist-init-model"
    assert objects.mount("initial-model")["mountPath"] == "/etc/fedagg/model"
    assert objects.config()["federation"]["initial_model"] == "/etc/fedagg/model/init.pbuf"


# --- OpenFL plan ----------------------------------------------------------------------------------------------------


def test_openfl_mode_serves_the_workspace_plan() -> None:
    objects = rendered("openfl")
    values = scenario_values("openfl")

    data = objects.one("ConfigMap", f"{FULLNAME}-config")["data"]
    assert data["plan.yaml"] == values["openfl"]["plan"]
    assert data["cols.yaml"] == values["openfl"]["cols"]
    assert objects.container["args"] == [
        "serve",
        "--config",
        "/etc/fedagg/config/fedagg.yaml",
        "--openfl-plan",
        "/etc/fedagg/openfl/plan.yaml",
        "--openfl-cols",
        "/etc/fedagg/openfl/cols.yaml",
    ]
    assert objects.mount("openfl") == {"name": "openfl", "mountPath": "/etc/fedagg/openfl", "readOnly": True}
    assert [item["path"] for item in objects.volume("openfl")["configMap"]["items"]] == [
        "plan.yaml",
        "cols.yaml",
    ]
    # The plan supplies the federation; the config names only the mounted initial model.
    assert objects.config()["federation"] == {"initial_model": "/etc/fedagg/model/init.pbuf"}


def test_openfl_mode_refuses_a_federation_section_and_an_empty_plan() -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded:
        with pytest.raises(sdk.HelmValuesError):
            loaded.validate_schema(
                {"openfl": {"enabled": True, "plan": "a: 1", "cols": "b: 2"}, **with_federation()}
            )
        with pytest.raises(sdk.HelmValuesError):
            loaded.validate_schema({"openfl": {"enabled": True, "plan": "", "cols": ""}})
        loaded.validate_schema({"openfl": {"enabled": True, "plan": "a: 1", "cols": "b: 2"}})


# --- schema -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            with_federation(containerPorts={"federation": 50051, "ops": "fifty", "metrics": 50053}),
            "/containerPorts/ops",
        ),
        (with_federation(workload="StatefulSet"), "/workload"),
        (with_federation(config={"federation": {**FEDERATION, "rounds_to_train": "ten"}}), "rounds_to_train"),
        (with_federation(persistence={"enabled": "yes"}), "/persistence/enabled"),
    ],
    ids=["port is a string", "unknown workload", "rounds is a string", "flag is a string"],
)
def test_the_schema_rejects_wrong_types(values: dict[str, Any], complaint: str) -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded, pytest.raises(sdk.HelmValuesError) as refused:
        loaded.validate_schema(values)

    assert complaint in str(refused.value)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (with_federation(replicas=2), "replicas"),
        (with_federation(image={"repository": "x", "tags": "1"}), "tags"),
        (with_federation(config={"server": {"tls": {"mode": "mtls"}, "port": 443}}), "port"),
        (with_federation(config={"federation": {**FEDERATION, "round_to_train": 3}}), "round_to_train"),
    ],
    ids=["top level", "typo in image", "a key the chart owns", "typo in the federation"],
)
def test_the_schema_rejects_unknown_keys(values: dict[str, Any], key: str) -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded, pytest.raises(sdk.HelmValuesError) as refused:
        loaded.validate_schema(values)

    assert key in str(refused.value)


def test_the_default_values_plus_a_federation_pass_the_schema() -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded:
        loaded.validate_schema(with_federation())
        schema = loaded.schema

    assert schema is not None
    assert schema["additionalProperties"] is False


def test_every_object_in_the_schema_is_closed() -> None:
    """additionalProperties is false everywhere, except free-form Kubernetes objects, maps of strings and `global`
    (an umbrella chart's values for all its subcharts: fedagg reads two of them and accepts the others)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[]")

    walk(schema, "")
    assert open_objects == [".global"]


#: fedagg settings the chart fills in itself (ports, listen addresses, mounted paths, the pod's identity).
CHART_MANAGED_SETTINGS = {
    "server.bind_address",
    "server.port",
    "server.tls.certificate_dir",
    "server.tls.certificate",
    "server.tls.private_key",
    "server.tls.root_certificate",
    "ops.bind_address",
    "ops.port",
    "ops.metrics_bind_address",
    "ops.metrics_port",
    "ops.after_finish",
    "hooks.kubernetes.pod_name",
    "hooks.kubernetes.namespace",
    "storage.state_dir",
}


def fedagg_settings(settings: type[Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """Every leaf setting of a fedagg config section, with its default."""
    for path, field, _ in leaf_settings(settings, f"{prefix}."):
        yield path, field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]


def test_every_fedagg_setting_is_a_chart_value_with_fedaggs_default() -> None:
    """An operator can set every fedagg setting through the chart, and the chart's defaults are fedagg's."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    sections = typing.get_type_hints(Config)
    missing, different = [], []
    for section in ("server", "limits", "ops", "hooks", "storage", "logging"):
        for path, default in fedagg_settings(sections[section], section):
            if path in CHART_MANAGED_SETTINGS:
                continue
            node, value = schema, values
            for key in path.split("."):
                node = node["properties"].get(key, {"properties": {}})
                value = (
                    value.get(key, dataclasses.MISSING) if isinstance(value, dict) else dataclasses.MISSING
                )
            if not node.keys() & {"type", "enum"}:
                missing.append(path)
            elif value != (list(default) if isinstance(default, tuple) else default):
                different.append((path, value, default))

    assert missing == []
    assert different == []


def schema_node(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of fedagg setting ``key`` (as :func:`leaf_settings` names it) under ``config``, if the chart has it."""
    node: dict[str, Any] | None = schema["properties"]["config"]
    for part in key.split("."):
        if node is None:
            return None
        if part == "<name>":
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else None
            continue
        node = node.get("properties", {}).get(part.removesuffix("[]"))
        if node is not None and part.endswith("[]"):
            node = node.get("items")
    return node


def test_the_schema_bounds_every_number_as_fedagg_does() -> None:
    """The schema refuses at install what fedagg would refuse at start: its bounds are the settings' ranges."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    compared, different = [], []
    for key, field in numeric_settings(Config):
        node = schema_node(schema, key)
        if node is None:
            continue
        bounds: Range = field.metadata["check"]
        expected: dict[str, Any] = {
            "exclusiveMinimum" if bounds.exclusive_minimum else "minimum": bounds.minimum,
            **({} if math.isinf(bounds.maximum) else {"maximum": bounds.maximum}),
        }
        if bounds.zero:
            expected = {"anyOf": [{"const": 0}, expected]}
        found = {
            name: node[name] for name in ("minimum", "exclusiveMinimum", "maximum", "anyOf") if name in node
        }
        compared.append(key)
        if found != expected:
            different.append((key, found, expected))

    assert different == []
    assert {"federation.sleep_seconds", "server.max_connection_age_seconds", "ops.exit_code"} <= set(compared)


# --- monitoring, network policy, docs ----------------------------------------------------------------------------


def test_monitoring_objects_point_at_the_metrics_port() -> None:
    objects = rendered("monitoring")

    service = objects.one("Service", f"{FULLNAME}-ops")
    pod_labels = objects.workload["spec"]["template"]["metadata"]["labels"]
    service_monitor = objects.one("ServiceMonitor", FULLNAME)["spec"]
    pod_monitor = objects.one("PodMonitor", FULLNAME)["spec"]
    assert [e["port"] for e in service_monitor["endpoints"]] == ["metrics"]
    assert "metrics" in {port["name"] for port in service["spec"]["ports"]}
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in pod_monitor["podMetricsEndpoints"]] == ["metrics"]
    assert pod_monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects.one("ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_and_dashboard_ship_the_deploy_files() -> None:
    objects = rendered("monitoring")

    rules = yaml.safe_load((ROOT / "deploy/prometheus/fedagg-rules.yaml").read_text())
    dashboard = json.loads((ROOT / "deploy/grafana/fedagg-dashboard.json").read_text())
    assert objects.one("PrometheusRule", FULLNAME)["spec"] == rules
    config_map = objects.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert json.loads(config_map["data"]["fedagg-dashboard.json"]) == dashboard
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize(
    ("copy", "original"),
    [
        ("files/fedagg-rules.yaml", "deploy/prometheus/fedagg-rules.yaml"),
        ("files/fedagg-dashboard.json", "deploy/grafana/fedagg-dashboard.json"),
    ],
)
def test_the_chart_files_are_copies_of_deploy(copy: str, original: str) -> None:
    assert (CHART / copy).read_bytes() == (ROOT / original).read_bytes(), f"cp {original} helm/fedagg/{copy}"


def test_monitoring_is_off_by_default() -> None:
    objects = rendered("default")

    for kind in (
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Certificate",
    ):
        assert not objects.has(kind), kind


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


def test_the_openfl_workspace_example_values_install() -> None:
    """deploy/examples/openfl-workspace-values.yaml plus --set-file openfl.plan/openfl.cols."""
    values = yaml.safe_load((ROOT / "deploy/examples/openfl-workspace-values.yaml").read_text())
    workspace = scenario_values("openfl")["openfl"]
    values["openfl"].update(plan=workspace["plan"], cols=workspace["cols"])

    report = chart.helm().lint(CHART, values, strict=True, namespace=NAMESPACE)
    objects = render(values)

    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert objects.one("Service", FULLNAME)["spec"]["type"] == "LoadBalancer"
    assert objects.volume("tls")["secret"]["secretName"] == "mnist-fedagg-tls"
    assert "--openfl-plan" in objects.container["args"]
    assert objects.one("PersistentVolumeClaim")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }


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


# --- as a subchart ---------------------------------------------------------------------------------------------------


def umbrella(directory: Path) -> Path:
    """An umbrella chart that depends on helm/fedagg (copied into its charts/, as `helm dependency build` does)."""
    root = directory / "platform"
    (root / "charts").mkdir(parents=True)
    shutil.copytree(CHART, root / "charts" / "fedagg")
    (root / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "fedagg", "version": "0.1.0", "repository": f"file://{CHART}"}],
            }
        )
    )
    (root / "templates").mkdir()
    (root / "templates" / "settings.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  registry: {{ .Values.global.imageRegistry | quote }}\n"
    )
    (root / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "imageRegistry": "registry.example.org",
                    "storageClass": "fast",
                    "labels": {"a": "b"},
                },
                "fedagg": {
                    "config": {"federation": FEDERATION},
                    "initialModel": {"existingConfigMap": "model"},
                },
            }
        )
    )
    return root


def test_a_subchart_of_an_umbrella_chart_renders_with_globals(tmp_path: Path) -> None:
    sdk = chart.helm()
    root = umbrella(tmp_path)

    with sdk.Chart.load(root) as loaded:
        assert [dependency["name"] for dependency in loaded.dependencies] == ["fedagg"]
        manifests = loaded.render(name="platform", namespace=NAMESPACE, is_install=True)
        with pytest.raises(sdk.HelmValuesError, match="replicas"):
            loaded.render(
                values={"fedagg": {"replicas": 2}}, name="platform", namespace=NAMESPACE, is_install=True
            )
    report = sdk.lint(root, None, strict=True, namespace=NAMESPACE, with_subcharts=True)

    objects = chart.Rendered(
        [
            document
            for path, text in manifests.items()
            if path.endswith(".yaml")
            for document in yaml.safe_load_all(text)
            if document
        ]
    )
    assert objects.one("Job", "platform-fedagg")["metadata"]["namespace"] == NAMESPACE
    [container] = objects.one("Job", "platform-fedagg")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.org/localhost/fedagg:0.1.0", "global.imageRegistry"
    assert objects.one("PersistentVolumeClaim")["spec"]["storageClassName"] == "fast", "global.storageClass"
    assert objects.one("Service", "platform-fedagg-ops")["spec"]["type"] == "ClusterIP"
    assert objects.one("ConfigMap", "platform-settings")["data"] == {"registry": "registry.example.org"}
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert report["errors"] == []


def test_the_schema_accepts_any_global_values() -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded:
        loaded.validate_schema(with_federation(**{"global": {"imageRegistry": "r", "nested": {"x": [1, 2]}}}))


# --- extra containers and manifests ---------------------------------------------------------------------------------


def test_extra_containers_join_the_aggregator_pod() -> None:
    objects = rendered("gateway")

    names = [container["name"] for container in objects.pod_spec["containers"]]
    (sidecar,) = scenario_values("gateway")["extraContainers"]
    assert names == ["fedagg", sidecar["name"]]
    assert objects.pod_spec["containers"][1] == sidecar


def test_extra_manifests_are_rendered_with_tpl() -> None:
    values = with_federation(
        extraManifests=[
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": '{{ include "fedagg.fullname" . }}-extra'},
                "data": {"release": "{{ .Release.Name }}"},
            },
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-token\nstringData:\n  a: b\n",
        ]
    )

    objects = render(values)

    assert objects.one("ConfigMap", f"{FULLNAME}-extra")["data"] == {"release": RELEASE}
    assert objects.one("Secret", f"{RELEASE}-token")["stringData"] == {"a": "b"}


def test_the_gateway_scenario_releases_its_extra_configmap() -> None:
    assert rendered("gateway").one("ConfigMap", f"{FULLNAME}-collaborators")["data"]["agg_port"] == "443"


# --- monitors and alerts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key"), [("ServiceMonitor", "serviceMonitor"), ("PodMonitor", "podMonitor")]
)
def test_a_monitor_can_live_in_the_monitoring_namespace(kind: str, key: str) -> None:
    objects = render(
        with_federation(**{key: {"enabled": True, "namespace": "monitoring", "honorLabels": True}})
    )

    monitor = objects.one(kind, FULLNAME)
    endpoints = monitor["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [endpoint["honorLabels"] for endpoint in endpoints] == [True]


def test_the_service_monitor_selects_only_the_ops_service() -> None:
    objects = rendered("monitoring")

    selector = objects.one("ServiceMonitor", FULLNAME)["spec"]["selector"]["matchLabels"]
    selected = [
        service["metadata"]["name"]
        for service in objects.all("Service")
        if selector.items() <= service["metadata"]["labels"].items()
    ]
    assert selected == [f"{FULLNAME}-ops"]
    assert "honorLabels" not in objects.one("ServiceMonitor", FULLNAME)["spec"]["endpoints"][0]


def rules_of(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = render(values).one("PrometheusRule", FULLNAME)["spec"]
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def test_alert_thresholds_and_windows_are_values() -> None:
    defaults = rules_of(with_federation(prometheusRule={"enabled": True}))
    alerts = {
        "FedaggRoundStalled": {"for": "15m", "roundSeconds": 7200},
        "FedaggCollaboratorSilent": {"silentSeconds": 10800},
        "FedaggCertificateExpiringSoon": {"days": 14},
        "FedaggCertificateExpiryCritical": {"days": 2},
        "FedaggStateVolumeLow": {"availablePercent": 20},
        "FedaggStateVolumeFillingUp": {"trendWindow": "12h", "fullWithinHours": 72},
        "FedaggAuthenticationFailures": {"for": "10m"},
        "FedaggAggregatorDown": {"for": ""},
    }

    rules = rules_of(with_federation(prometheusRule={"enabled": True, "alerts": alerts}))

    assert "time() - fedagg_round_started_timestamp_seconds > 7200" in rules["FedaggRoundStalled"]["expr"]
    assert rules["FedaggRoundStalled"]["for"] == "15m"
    assert ") > 10800" in rules["FedaggCollaboratorSilent"]["expr"]
    assert "< 14 * 86400" in rules["FedaggCertificateExpiringSoon"]["expr"]
    assert "< 2 * 86400" in rules["FedaggCertificateExpiryCritical"]["expr"]
    assert "fedagg_state_volume_size_bytes < 20" in rules["FedaggStateVolumeLow"]["expr"]
    assert "[12h], 72 * 3600)" in rules["FedaggStateVolumeFillingUp"]["expr"]
    assert rules["FedaggAuthenticationFailures"]["for"] == "10m"
    assert "for" not in rules["FedaggAggregatorDown"]
    # Each threshold value changed its expression, and nothing else changed.
    for name, settings in alerts.items():
        if set(settings) - {"for"}:
            assert rules[name]["expr"] != defaults[name]["expr"], name
    for name, rule in rules.items():
        if name not in alerts:
            assert rule == defaults[name], name


def test_every_alert_and_threshold_has_a_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["alerts"]
    alerts = [
        rule["alert"]
        for rule in yaml.safe_load((ROOT / "deploy/prometheus/fedagg-rules.yaml").read_text())["groups"][0][
            "rules"
        ]
    ]
    thresholds = yaml.safe_load(
        (CHART / "templates" / "_helpers.tpl")
        .read_text()
        .split('define "fedagg.alertThresholds" -}}')[1]
        .split("{{- end }}")[0]
    )

    assert list(values) == alerts
    for name, parameters in thresholds.items():
        assert set(parameters) == set(values[name]) - {"for"}, name
    for name, settings in values.items():
        assert set(settings) - {"for"} <= set(thresholds.get(name, {})), name


def test_rendered_alerts_stay_valid_prometheus_rules(tmp_path: Path) -> None:
    from tests.support.prometheus import promtool  # noqa: PLC0415

    alerts = {
        "FedaggRoundStalled": {"for": "1h", "roundSeconds": 5400},
        "FedaggStateVolumeFillingUp": {"trendWindow": "1d", "fullWithinHours": 6},
    }
    spec = render(
        with_federation(
            prometheusRule={
                "enabled": True,
                "alerts": alerts,
                "alertLabels": {"team": "ml"},
                "runbookBaseUrl": "https://x/RUNBOOK.md/",
            }
        )
    ).one("PrometheusRule", FULLNAME)["spec"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))

    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for rule in spec["groups"][0]["rules"]:
        assert rule["labels"]["team"] == "ml"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["runbook_url"] == f"https://x/RUNBOOK.md#{rule['alert'].lower()}"
        assert rule["annotations"]["runbook"] == f"deploy/RUNBOOK.md#{rule['alert'].lower()}"


def test_alerts_can_be_left_out_and_labels_do_not_override_severity() -> None:
    rules = rules_of(
        with_federation(
            prometheusRule={
                "enabled": True,
                "disabledAlerts": ["FedaggAuthenticationFailures", "FedaggCollaboratorSilent"],
                "alertLabels": {"severity": "info", "team": "ml"},
            }
        )
    )

    assert "FedaggAuthenticationFailures" not in rules
    assert "FedaggCollaboratorSilent" not in rules
    assert rules["FedaggAggregatorDown"]["labels"] == {"severity": "critical", "team": "ml"}


def test_an_unknown_alert_name_is_refused() -> None:
    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded, pytest.raises(sdk.HelmValuesError, match="disabledAlerts"):
        loaded.validate_schema(with_federation(prometheusRule={"disabledAlerts": ["FedaggRoundStaled"]}))


# --- disruptions and upgrades ----------------------------------------------------------------------------------------


def test_the_disruption_budget_cannot_hold_a_drain_forever() -> None:
    budget = rendered("deployment").one("PodDisruptionBudget", FULLNAME)["spec"]
    readme = (CHART / "README.md").read_text()

    assert budget["minAvailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "### Disruptions" in readme
    assert "cannot hold a drain forever" in readme


def test_the_job_keeps_its_name_by_default() -> None:
    objects = rendered("default")

    assert objects.one("Job")["metadata"]["name"] == FULLNAME
    assert "annotations" not in objects.one("Job")["metadata"]


def job_name(**values: Any) -> str:
    values["job"] = {"nameWithChecksum": True, **values.get("job", {})}
    return str(render(with_federation(**values)).one("Job")["metadata"]["name"])


def test_a_job_named_after_its_pod_template_changes_name_with_it() -> None:
    first = job_name()

    assert first.startswith(f"{FULLNAME}-")
    assert len(first) == len(FULLNAME) + 11
    assert job_name() == first, "the same values give the same Job"
    assert job_name(config={"logging": {"level": "debug"}}) != first, "a config change is a new Job"
    assert job_name(image={"tag": "0.1.1"}) != first, "an image change is a new Job"
    assert job_name(job={"nameWithChecksum": True, "ttlSecondsAfterFinished": 60}) == first, (
        "mutable Job fields keep the name"
    )


def test_a_job_name_with_its_checksum_fits_the_job_name_label() -> None:
    name = job_name(fullnameOverride="f" * 80)

    assert len(name) == 63
    notes = chart.render_manifests(with_federation(job={"nameWithChecksum": True}))["templates/NOTES.txt"]
    assert f"job/{job_name()}" in notes


def test_gitops_replace_annotates_the_job() -> None:
    job = render(with_federation(job={"gitOpsReplace": True, "annotations": {"a": "b"}})).one("Job", FULLNAME)

    assert job["metadata"]["annotations"] == {
        "argocd.argoproj.io/sync-options": "Force=true,Replace=true",
        "kustomize.toolkit.fluxcd.io/force": "enabled",
        "a": "b",
    }


def test_the_upgrade_story_is_documented() -> None:
    readme = (CHART / "README.md").read_text()
    upgrades = readme.split("## Upgrades")[1].split("\n## ")[0]

    for needle in ("job.nameWithChecksum", "job.gitOpsReplace", "ReadWriteOncePod", "kubectl delete job"):
        assert needle in upgrades
