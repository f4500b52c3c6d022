"""The chart in OpenFL mode: it serves an OpenFL workspace's plan and cols to fedagg."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedagg.config.loading import load_config
from fedagg.openfl_workspace import load_openfl_workspace
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    ROOT,
    render,
    rendered,
    scenario_values,
    with_federation,
)

pytestmark = pytest.mark.usefixtures("helm_sdk")


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
