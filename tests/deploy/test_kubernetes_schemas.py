"""Every rendered object against the real Kubernetes OpenAPI schemas (kubernetes-validate --strict).

kubernetes-validate 1.37 ships the schemas of Kubernetes 1.25 to 1.37; the chart supports 1.27 (native gRPC probes)
and later, so it is checked against the oldest and the newest supported version. Strict mode rejects unknown
fields, the way the API server's strict field validation does. Objects of CRDs (cert-manager, prometheus-operator)
have no schema there; they are checked against the fields of their CRDs that the chart may use, and the Gateway
API's TLSRoute against its CRD's openAPIV3Schema (a vendored fixture, see tests/deploy/gateway_api.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy import gateway_api
from tests.deploy.chart import (
    CRD_KINDS,
    ROOT,
    SCENARIOS,
    invalid_object,
    kubernetes_validator,
    scenario_objects,
)

KUBERNETES_VERSIONS = ("1.27", "1.37")

_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_LABELS = {"type": "object", "additionalProperties": _STRING}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STRING, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STRING},
    "additionalProperties": False,
}
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": _STRING,
        "path": _STRING,
        "scheme": {"enum": ["http", "https"]},
        "interval": _STRING,
        "scrapeTimeout": _STRING,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array"},
        "metricRelabelings": {"type": "array"},
    },
    "additionalProperties": False,
}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _LABELS}, "additionalProperties": False}
_NAMESPACES = {"type": "object", "properties": {"matchNames": _STRINGS}, "additionalProperties": False}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


#: The fields of cert-manager v1 and prometheus-operator v1 CRDs that the chart and deploy/ use.
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): _crd(
        "cert-manager.io/v1",
        "Certificate",
        {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": _STRING,
                "secretTemplate": {
                    "type": "object",
                    "properties": {"labels": _LABELS, "annotations": _LABELS},
                },
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS,
                "ipAddresses": _STRINGS,
                "duration": _STRING,
                "renewBefore": _STRING,
                "isCA": {"type": "boolean"},
                "usages": {
                    "type": "array",
                    "items": {
                        "enum": [
                            "server auth",
                            "client auth",
                            "digital signature",
                            "key encipherment",
                            "cert sign",
                        ]
                    },
                },
                "privateKey": {
                    "type": "object",
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Always", "Never"]},
                    },
                    "additionalProperties": False,
                },
                "issuerRef": _ISSUER_REF,
            },
            "additionalProperties": False,
        },
    ),
    ("cert-manager.io/v1", "Issuer"): _crd(
        "cert-manager.io/v1",
        "Issuer",
        {
            "type": "object",
            "properties": {
                "selfSigned": {"type": "object"},
                "ca": {
                    "type": "object",
                    "required": ["secretName"],
                    "properties": {"secretName": _STRING},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACES,
                "endpoints": {"type": "array", "items": _ENDPOINT},
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _crd(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACES,
                "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT},
            },
            "additionalProperties": False,
        },
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": _STRING,
                            "interval": _STRING,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": _STRING,
                                        "record": _STRING,
                                        "expr": _STRING,
                                        "for": _STRING,
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    ),
}


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return kubernetes_validator()


def test_the_installed_schemas_cover_both_versions(kubernetes_validate: Any) -> None:
    versions = kubernetes_validate.all_versions()

    for version in KUBERNETES_VERSIONS:
        assert any(v.startswith(f"{version}.") for v in versions), versions


def _validate_crd(document: dict[str, Any]) -> None:
    import jsonschema  # noqa: PLC0415

    key = (document["apiVersion"], document["kind"])
    if document["kind"] == "TLSRoute":
        gateway_api.validate(document)
        return
    assert key in CRD_SCHEMAS, f"no schema for {key}"
    jsonschema.validate(document, CRD_SCHEMAS[key])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_kubernetes(
    scenario: str, version: str, kubernetes_validate: Any
) -> None:
    objects = scenario_objects(scenario)
    checked = 0

    for document in objects:
        if (document["apiVersion"], document["kind"]) in CRD_KINDS:
            _validate_crd(document)
            continue
        problem = invalid_object(document, version, kubernetes_validate)
        if problem:
            pytest.fail(problem)
        checked += 1

    assert checked >= 5


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_a_mistyped_field_would_be_caught(version: str, kubernetes_validate: Any) -> None:
    """The validation is real: an unknown field in a rendered Job fails strict validation."""
    (job,) = [d for d in scenario_objects("default") if d["kind"] == "Job"]
    job["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, version, strict=True)


def test_the_cert_manager_example_is_a_consistent_pki() -> None:
    documents = [
        d for d in yaml.safe_load_all((ROOT / "deploy/cert-manager/fedagg-pki.yaml").read_text()) if d
    ]
    for document in documents:
        _validate_crd(document)

    issuers = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Issuer"}
    certificates = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Certificate"}
    for certificate in certificates.values():
        assert certificate["issuerRef"]["name"] in issuers
    assert issuers["fedagg-ca"]["ca"]["secretName"] == certificates["fedagg-ca"]["secretName"]
    assert certificates["fedagg-ca"]["isCA"] is True
    aggregator = certificates["mnist-fedagg"]
    assert aggregator["secretName"] == "mnist-fedagg-tls"
    assert "server auth" in aggregator["usages"]
    assert aggregator["issuerRef"]["name"] == "fedagg-ca"
    collaborators = {
        name: spec for name, spec in certificates.items() if "client auth" in spec.get("usages", [])
    }
    assert set(collaborators) == {"collaborator1", "collaborator2"}
    for name, spec in collaborators.items():
        assert spec["commonName"] == name
        assert spec["issuerRef"]["name"] == "fedagg-ca"
