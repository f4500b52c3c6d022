"""The chart's conventions (real Helm rendering): namespaceOverride, commonAnnotations, clusterDomain, the image
registry (image.registry, global.imageRegistry) and the storage class (global.storageClass)."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from tests.conftest import require
from tests.deploy import chart
from tests.deploy.chart import CHART, FULLNAME, NAMESPACE, rendered, scenario_values

#: Objects every resource of a Helm release has, whichever options are on (the ci/conventions scenario turns on
#: every optional resource but the TLSRoute and extra manifests, which have their own scenario).
KINDS = {
    "Certificate",
    "ConfigMap",
    "Job",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Pod",
    "PodDisruptionBudget",
    "PodMonitor",
    "PrometheusRule",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
}


@pytest.fixture(autouse=True)
def _helm_sdk() -> None:
    require(importlib.util.find_spec("helm_python") is not None, "helm-python-sdk is not installed")


def render(**values: Any) -> chart.Rendered:
    merged = {**scenario_values("default"), **values}
    return chart.Rendered(chart.objects_of(chart.render_manifests(merged)))


def image(**values: Any) -> str:
    return str(render(**values).container["image"])


def test_every_resource_goes_to_the_namespace_override_with_the_common_annotations() -> None:
    objects = rendered("conventions")

    assert {document["kind"] for document in objects.objects} == KINDS
    for document in objects.objects:
        metadata = document["metadata"]
        assert metadata["namespace"] == "fl-aggregators", document["kind"]
        assert metadata["annotations"]["example.org/owner"] in ("federated-learning", "the-service-own")
    assert objects.one("Service", FULLNAME)["metadata"]["annotations"] == {
        "example.org/owner": "the-service-own"
    }
    assert objects.one("Pod")["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert objects.one("RoleBinding")["subjects"][0]["namespace"] == "fl-aggregators"
    assert objects.one("ServiceMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["fl-aggregators"]}


def test_without_the_conventions_resources_are_in_the_release_namespace_and_unannotated() -> None:
    objects = rendered("default")

    for document in objects.objects:
        assert document["metadata"]["namespace"] == NAMESPACE, document["kind"]
        if document["kind"] != "Pod":  # the helm test pod's hook annotations
            assert "annotations" not in document["metadata"], document["kind"]


def test_the_notes_name_the_namespace_override() -> None:
    notes = chart.render_manifests(scenario_values("conventions"))["templates/NOTES.txt"]

    assert f"{FULLNAME}.fl-aggregators.svc:50051" in notes
    assert "kubectl -n fl-aggregators " in notes
    assert f"-n {NAMESPACE} " not in notes
    assert f".{NAMESPACE}.svc" not in notes


def test_the_certificate_names_the_cluster_domain() -> None:
    names = rendered("conventions").one("Certificate")["spec"]["dnsNames"]
    default = rendered("cert-manager").one("Certificate")["spec"]["dnsNames"]

    assert f"{FULLNAME}.fl-aggregators.svc.corp.internal" in names
    assert not any("cluster.local" in name for name in names)
    assert f"{FULLNAME}.{NAMESPACE}.svc.cluster.local" in default


def test_the_image_registry_is_global_then_image_registry_then_none() -> None:
    assert image() == "localhost/fedagg:0.1.0"
    assert image(image={"repository": "fedagg", "registry": "registry.example.org"}) == (
        "registry.example.org/fedagg:0.1.0"
    )
    with pytest.raises(chart.helm().HelmValuesError, match="/image/registry"):
        image(image={"repository": "fedagg", "registry": "registry.example.org/library"})
    assert image(
        image={"repository": "fedagg", "registry": "registry.example.org", "digest": "sha256:" + "a" * 64},
        **{"global": {"imageRegistry": "mirror.example.org:5000"}},
    ) == ("mirror.example.org:5000/fedagg@sha256:" + "a" * 64)
    assert rendered("conventions").container["image"] == "mirror.example.org:5000/localhost/fedagg:0.1.0"


@pytest.mark.parametrize(
    ("persistence", "global_class", "expected"),
    [
        ({}, None, None),
        ({"storageClassName": "standard"}, None, "standard"),
        ({"storageClassName": ""}, None, ""),
        ({"storageClassName": "-"}, None, ""),
        ({"storageClassName": "standard"}, "fast-ssd", "fast-ssd"),
        ({}, "-", ""),
    ],
)
def test_the_storage_class_is_global_then_persistence(
    persistence: dict[str, str], global_class: str | None, expected: str | None
) -> None:
    values: dict[str, Any] = {"persistence": {"size": "2Gi", **persistence}}
    if global_class is not None:
        values["global"] = {"storageClass": global_class}
    claim = render(**values).one("PersistentVolumeClaim")

    assert claim["spec"].get("storageClassName") == expected


def schema_properties(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every value an operator sets: the properties of the schema, depth first."""
    found: list[tuple[str, dict[str, Any]]] = []
    for key, child in node.get("properties", {}).items():
        found.append((f"{path}{key}", child))
        found.extend(schema_properties(child, f"{path}{key}."))
    return found


def test_every_value_in_the_schema_has_a_description() -> None:
    properties = schema_properties(json.loads((CHART / "values.schema.json").read_text()))
    undescribed = [path for path, node in properties if len(node.get("description", "")) < 10]
    unfinished = [path for path, node in properties if not node.get("description", ".").endswith((".", ".)"))]

    assert len(properties) > 280
    assert undescribed == []
    assert unfinished == []
    described = {path: node["description"] for path, node in properties}
    assert described["image.registry"].startswith("Registry host (and port) prefixed to the repository")
    assert described["config.federation.rounds_kept"].startswith("Global models kept for serving")


# --- results out of a finished Job --------------------------------------------------------------------------------


def test_a_job_keeps_serving_its_models_after_the_experiment_when_asked() -> None:
    """fedagg's side, that a finished aggregator with ops.after_finish: stay keeps answering GetTrainedModel to an
    observer, is tests/integration/test_cli_outputs.py (model pull after the experiment) and test_shutdown.py."""
    exits = render()
    stays = render(results={"keepServing": True})
    notes = chart.render_manifests({**scenario_values("default"), "results": {"keepServing": True}})[
        "templates/NOTES.txt"
    ]
    default_notes = chart.render_manifests(scenario_values("default"))["templates/NOTES.txt"]

    assert exits.config()["ops"]["after_finish"] == "exit"
    assert stays.config()["ops"]["after_finish"] == "stay"
    assert stays.workload["kind"] == "Job"
    assert (
        f"fedagg model pull --best --out best.pbuf --address localhost:50051 --server-name {FULLNAME}."
        in notes
    )
    assert f"delete job/{FULLNAME}" in notes
    assert "annotations.fedagg\\.io/state}'=finished" in notes
    assert "--for=condition=complete" not in notes
    assert "--for=condition=complete" in default_notes
    assert "results.keepServing=true" in default_notes
    assert render(workload="Deployment").config()["ops"]["after_finish"] == "stay"


@pytest.mark.parametrize("uuid", [12345, 1e3])
def test_a_numeric_federation_uuid_is_refused_with_the_way_to_quote_it(uuid: float) -> None:
    """``--set config.federation.federation_uuid=12345`` gives Helm a number (values files too, unquoted)."""
    values = scenario_values("default")
    values["config"]["federation"]["federation_uuid"] = uuid

    with pytest.raises(chart.helm().HelmError, match=r"--set-string config\.federation\.federation_uuid="):
        chart.render_manifests(values)
