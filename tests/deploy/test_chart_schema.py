"""The chart's values schema: closed, typed, and bounding every fedagg setting as fedagg does."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fedagg.config.schema import Config
from fedagg.settings import Range
from tests.deploy import chart
from tests.deploy.chart import CHART, FEDERATION, with_federation
from tests.support.settings import leaf_settings, numeric_settings

pytestmark = pytest.mark.usefixtures("helm_sdk")


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
