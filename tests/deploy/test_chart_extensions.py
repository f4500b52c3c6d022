"""The chart as a building block: a subchart of an umbrella chart, extra containers and extra manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    FEDERATION,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    render,
    rendered,
    scenario_values,
    with_federation,
)

pytestmark = pytest.mark.usefixtures("helm_sdk")


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
