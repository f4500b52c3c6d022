"""Renderings of the chart's scale-out tier (topology.ingest.replicas = K > 0) and lookups in them, shared by the
tier's chart tests."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy import chart
from tests.deploy.chart import FULLNAME, TIER_SCENARIOS, Rendered, render, with_federation

ROOT_NAME = f"{FULLNAME}-root"
INGEST_NAME = f"{FULLNAME}-ingest"
ROLE = "fedagg.io/role"


def tier_values(replicas: int = 2, **values: Any) -> dict[str, Any]:
    """A minimal tier release: a Deployment-mode federation with ``replicas`` ingest replicas, plus ``values``."""
    topology = dict(values.pop("topology", {}))
    topology["ingest"] = {"replicas": replicas, **topology.get("ingest", {})}
    return with_federation(**{"workload": "Deployment", **values, "topology": topology})


def refusal(values: dict[str, Any]) -> str:
    """The message Helm fails the rendering with."""
    with pytest.raises(chart.helm().HelmError) as refused:
        chart.render_manifests(values)
    return str(refused.value)


class Tier:
    """Lookups in one tier rendering: the two StatefulSets, their pods, their configs."""

    def __init__(self, objects: Rendered) -> None:
        self.objects = objects
        self.root = objects.one("StatefulSet", ROOT_NAME)
        self.ingest = objects.one("StatefulSet", INGEST_NAME)

    @staticmethod
    def pod_labels(statefulset: dict[str, Any]) -> dict[str, str]:
        labels: dict[str, str] = statefulset["spec"]["template"]["metadata"]["labels"]
        return labels

    @staticmethod
    def container(statefulset: dict[str, Any]) -> dict[str, Any]:
        (found,) = [c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "fedagg"]
        return found

    @staticmethod
    def volume(statefulset: dict[str, Any], name: str) -> dict[str, Any]:
        (found,) = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
        return found

    def config(self, statefulset: dict[str, Any]) -> dict[str, Any]:
        """The fedagg.yaml this StatefulSet's pods read (the ConfigMap key their config volume maps)."""
        volume = self.volume(statefulset, "config")["configMap"]
        (item,) = volume["items"]
        assert item["path"] == "fedagg.yaml"
        data = self.objects.one("ConfigMap", volume["name"])["data"]
        config: dict[str, Any] = yaml.safe_load(data[item["key"]])
        return config

    def selected_by(self, selector: dict[str, str]) -> list[str]:
        """The StatefulSets whose pods a Service selector matches."""
        return [
            statefulset["metadata"]["name"]
            for statefulset in (self.root, self.ingest)
            if selector.items() <= self.pod_labels(statefulset).items()
        ]


def tier(values: dict[str, Any]) -> Tier:
    return Tier(render(values))


def tier_scenario() -> Tier:
    (scenario,) = TIER_SCENARIOS
    return Tier(chart.rendered(scenario))
