"""The chart's monitoring objects: the monitors, the PrometheusRule with its alert values, the dashboard."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import chart
from tests.deploy.chart import CHART, FULLNAME, NAMESPACE, ROOT, render, rendered, with_federation

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- monitoring objects -------------------------------------------------------------------------------------------


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
