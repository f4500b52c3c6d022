"""The Gateway API TLSRoute CRD's schema (a vendored fixture), as a JSON schema for offline validation.

A CRD's ``openAPIV3Schema`` is a JSON schema (draft 4 with Kubernetes extensions, which a validator ignores). The API
server prunes or, with strict field validation, refuses fields the schema does not declare; :func:`schema` makes
that explicit (``additionalProperties: false`` on every object that declares properties and does not keep unknown
fields), so that a misspelt field fails here as it would in a cluster.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

CRD = Path(__file__).with_name("fixtures") / "gateway-api-tlsroute-crd.yaml"
GROUP = "gateway.networking.k8s.io"


@functools.cache
def crd() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return document


def versions() -> list[str]:
    """The served versions, as apiVersion values (gateway.networking.k8s.io/v1, ...)."""
    return [f"{GROUP}/{version['name']}" for version in crd()["spec"]["versions"] if version["served"]]


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def schema(api_version: str) -> dict[str, Any]:
    """The JSON schema of a TLSRoute of ``api_version``, with apiVersion and kind pinned."""
    group, _, name = api_version.partition("/")
    assert group == GROUP, api_version
    (version,) = [v for v in crd()["spec"]["versions"] if v["name"] == name]
    found: dict[str, Any] = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    found["properties"]["apiVersion"] = {"const": api_version}
    found["properties"]["kind"] = {"const": crd()["spec"]["names"]["kind"]}
    found["required"] = sorted({*found.get("required", []), "apiVersion", "kind", "metadata"})
    return found


def validate(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when ``document`` is not a valid TLSRoute."""
    import jsonschema  # noqa: PLC0415

    jsonschema.validate(document, schema(document["apiVersion"]))
