"""Rendering the Helm chart offline with the real Helm SDK (PyPI helm-python-sdk: Helm v4's Go code via ctypes)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fedagg"
ALL_SCENARIOS = tuple(
    sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml"))
)
RELEASE = "mnist"
NAMESPACE = "federation"
FULLNAME = "mnist-fedagg"
#: Kinds served by CRDs (cert-manager, prometheus-operator, Gateway API): no schema in kubernetes-validate.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "TLSRoute"),
    ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
}


#: The smallest federation the chart accepts.
FEDERATION = {"federation_uuid": "mnist_0123abcd", "collaborators": ["one", "two"], "rounds_to_train": 3}


def helm() -> Any:
    """The helm_python module (imported lazily, so that collection works where it is not installed)."""
    import helm_python  # noqa: PLC0415

    return helm_python


def require_helm_sdk() -> None:
    """Skip (fail in CI) where helm-python-sdk is not installed."""
    require(
        importlib.util.find_spec("helm_python") is not None,
        "helm-python-sdk is not installed (pip install helm-python-sdk; make test installs the dev extras)",
    )


def kubernetes_validator() -> Any:
    """kubernetes-validate's utils (skipped, failed in CI, where it is not installed)."""
    require(
        importlib.util.find_spec("kubernetes_validate") is not None,
        "kubernetes-validate is not installed (pip install kubernetes-validate; a dev extra)",
    )
    require_helm_sdk()
    from kubernetes_validate import utils  # noqa: PLC0415

    return utils


def invalid_object(document: dict[str, Any], version: str, validator: Any) -> str | None:
    """Why a built-in object is not valid Kubernetes ``version`` (strict: unknown fields too), or None."""
    try:
        validator.validate(document, version, strict=True)
    except validator.ValidationError as error:
        location = "/".join(str(p) for p in error.path)
        return f"{document['kind']}/{document['metadata']['name']} at {location}: {error.message}"
    return None


def scenario_values(scenario: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    return values


def is_tier(values: dict[str, Any]) -> bool:
    """Whether values render the scale-out tier (topology.ingest.replicas > 0) instead of one aggregator."""
    return int(values.get("topology", {}).get("ingest", {}).get("replicas", 0)) > 0


#: The scenarios of one standalone aggregator (a Job or a Deployment), and those of the tier (test_chart_tier.py).
SCENARIOS = tuple(scenario for scenario in ALL_SCENARIOS if not is_tier(scenario_values(scenario)))
TIER_SCENARIOS = tuple(scenario for scenario in ALL_SCENARIOS if is_tier(scenario_values(scenario)))


def with_federation(**values: Any) -> dict[str, Any]:
    """Values with a minimal federation, plus ``values``."""
    merged: dict[str, Any] = {"config": {"federation": dict(FEDERATION)}}
    for key, value in values.items():
        if key == "config":
            merged["config"].update(value)
        else:
            merged[key] = value
    return merged


def render_manifests(values: dict[str, Any] | None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as `helm template` with these values."""
    with helm().Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(
            values=values, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return {path.split("/", 1)[1]: text for path, text in rendered.items() if text.strip()}


def objects_of(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of the rendered YAML templates."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            found.extend(document for document in yaml.safe_load_all(text) if document)
    return found


@functools.cache
def _render_scenario(scenario: str) -> tuple[dict[str, str], str]:
    manifests = render_manifests(scenario_values(scenario))
    return manifests, yaml.safe_dump_all(objects_of(manifests))


def scenario_namespace(scenario: str) -> str:
    """Where a ci/ scenario's resources go: its namespaceOverride, or the release's namespace."""
    return str(scenario_values(scenario).get("namespaceOverride", NAMESPACE))


def scenario_manifests(scenario: str) -> dict[str, str]:
    return dict(_render_scenario(scenario)[0])


def scenario_objects(scenario: str) -> list[dict[str, Any]]:
    """The objects of a ci/ scenario (a fresh copy each call: tests may modify them)."""
    return [document for document in yaml.safe_load_all(_render_scenario(scenario)[1]) if document]


class Rendered:
    """Convenient lookups in one rendering."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [document for document in self.objects if document["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        matches = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
        return matches[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    @property
    def workload(self) -> dict[str, Any]:
        workloads = self.all("Job") + self.all("Deployment")
        assert len(workloads) == 1, workloads
        return workloads[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod_spec["containers"] if c["name"] == "fedagg"]
        return container

    def config(self) -> dict[str, Any]:
        """The fedagg.yaml the chart writes."""
        data = self.one("ConfigMap", f"{FULLNAME}-config")["data"]
        config: dict[str, Any] = yaml.safe_load(data["fedagg.yaml"])
        return config

    def mount(self, volume: str) -> dict[str, Any]:
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == volume]
        return mount

    def volume(self, volume: str) -> dict[str, Any]:
        (found,) = [v for v in self.pod_spec["volumes"] if v["name"] == volume]
        return found


def rendered(scenario: str) -> Rendered:
    return Rendered(scenario_objects(scenario))


def render(values: dict[str, Any]) -> Rendered:
    """The objects of a rendering with these values."""
    return Rendered(objects_of(render_manifests(values)))


def leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of a values tree; lists and empty maps are leaves."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


#: The Lease the HA replicas elect their leader with, by default.
LEASE = f"{FULLNAME}-leader"
_SHARED_STATE = {"accessModes": ["ReadWriteMany"]}


def ha_values(ha: dict[str, Any] | None = None, **values: Any) -> dict[str, Any]:
    """A minimal HA release: a Deployment, ha.enabled (plus ``ha``) and a ReadWriteMany claim, plus ``values``."""
    return with_federation(
        **{
            "workload": "Deployment",
            "persistence": _SHARED_STATE,
            "ha": {"enabled": True, **(ha or {})},
            **values,
        }
    )
