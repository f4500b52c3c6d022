"""The optional Gateway API TLSRoute: TLS passthrough by SNI from a shared Gateway to the federation port, validated
offline against the TLSRoute CRD's openAPIV3Schema (tests/deploy/fixtures/gateway-api-tlsroute-crd.yaml)."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import jsonschema
import pytest

from tests.conftest import require
from tests.deploy import chart, gateway_api
from tests.deploy.chart import CHART, FULLNAME, NAMESPACE, render, with_federation

PARENTS = [{"name": "federations", "namespace": "gateways", "sectionName": "tls"}]
HOSTS = ["mnist.fl.example.org"]


@pytest.fixture(autouse=True)
def _helm_sdk() -> None:
    require(
        importlib.util.find_spec("helm_python") is not None, "helm-python-sdk is not installed (a dev extra)"
    )


def route_values(api_version: str, **values: Any) -> dict[str, Any]:
    return with_federation(
        tlsRoute={"enabled": True, "apiVersion": api_version, "parentRefs": PARENTS, "hostnames": HOSTS},
        **values,
    )


def test_the_fixture_is_a_custom_resource_definition_serving_both_versions() -> None:
    require(
        importlib.util.find_spec("kubernetes_validate") is not None, "kubernetes-validate is not installed"
    )
    from kubernetes_validate import utils  # noqa: PLC0415

    crd = gateway_api.crd()
    utils.validate(crd, "1.37", strict=True)
    assert crd["metadata"]["name"] == "tlsroutes.gateway.networking.k8s.io"
    assert gateway_api.versions() == ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"]
    with chart.helm().Chart.load(CHART) as loaded:
        enum = loaded.schema["properties"]["tlsRoute"]["properties"]["apiVersion"]["enum"]
    assert set(enum) == set(gateway_api.versions())


@pytest.mark.parametrize(
    "api_version", ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"]
)
def test_the_route_passes_tls_through_to_the_federation_port(api_version: str) -> None:
    objects = render(route_values(api_version))

    route = objects.one("TLSRoute", FULLNAME)
    gateway_api.validate(route)
    assert route["apiVersion"] == api_version
    assert route["metadata"]["namespace"] == NAMESPACE
    assert route["spec"]["parentRefs"] == PARENTS
    assert route["spec"]["hostnames"] == HOSTS
    (rule,) = route["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    service = objects.one("Service", backend["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == backend["port"]]
    assert port["name"] == "federation"
    assert service["spec"]["type"] == "ClusterIP", "a Gateway needs no LoadBalancer of its own"
    assert {p["name"] for p in service["spec"]["ports"]} == {"federation"}, (
        "only the federation port is routed"
    )


@pytest.mark.parametrize(
    ("api_version", "change"),
    [
        ("gateway.networking.k8s.io/v1", lambda spec: spec.pop("hostnames")),
        ("gateway.networking.k8s.io/v1", lambda spec: spec["rules"].append(copy.deepcopy(spec["rules"][0]))),
        ("gateway.networking.k8s.io/v1alpha2", lambda spec: spec.update(hostnames=["Mnist.example.org"])),
        (
            "gateway.networking.k8s.io/v1alpha2",
            lambda spec: spec["rules"][0]["backendRefs"][0].update(port=0),
        ),
        ("gateway.networking.k8s.io/v1alpha2", lambda spec: spec["parentRefs"][0].update(listener="tls")),
        ("gateway.networking.k8s.io/v1alpha2", lambda spec: spec.update(tls={"mode": "Passthrough"})),
    ],
    ids=[
        "v1 without hostnames",
        "v1 with two rules",
        "upper-case host",
        "port 0",
        "unknown parentRef field",
        "unknown spec field",
    ],
)
def test_the_crd_schema_catches_an_invalid_route(api_version: str, change: Any) -> None:
    """The validation is real: the CRD's constraints (and strict field validation) reject broken routes."""
    route = render(route_values(api_version)).one("TLSRoute", FULLNAME)
    change(route["spec"])

    with pytest.raises(jsonschema.ValidationError):
        gateway_api.validate(route)


def test_the_route_is_off_by_default() -> None:
    assert not render(with_federation()).has("TLSRoute")


def test_the_route_host_names_are_in_the_certificate() -> None:
    values = route_values(
        "gateway.networking.k8s.io/v1alpha2",
        tls={
            "certManager": {"enabled": True, "issuerRef": {"name": "ca"}, "dnsNames": [HOSTS[0], "other.org"]}
        },
    )

    certificate = render(values).one("Certificate", FULLNAME)

    assert certificate["spec"]["dnsNames"][-2:] == [HOSTS[0], "other.org"]
    assert certificate["spec"]["dnsNames"].count(HOSTS[0]) == 1


@pytest.mark.parametrize("missing", ["parentRefs", "hostnames"])
def test_a_route_needs_a_gateway_and_host_names(missing: str) -> None:
    values = route_values("gateway.networking.k8s.io/v1")
    values["tlsRoute"][missing] = []

    sdk = chart.helm()
    with sdk.Chart.load(CHART) as loaded, pytest.raises(sdk.HelmValuesError) as refused:
        loaded.validate_schema(values)
    assert missing in str(refused.value)


def test_a_route_needs_tls_at_the_pod() -> None:
    values = route_values("gateway.networking.k8s.io/v1", config={"server": {"tls": {"mode": "insecure"}}})

    with pytest.raises(chart.helm().HelmError, match="routes TLS by SNI"):
        chart.render_manifests(values)


def test_notes_name_the_gateway_and_the_host_names() -> None:
    notes = chart.render_manifests(route_values("gateway.networking.k8s.io/v1"))["templates/NOTES.txt"]

    assert "mnist.fl.example.org on the Gateway gateways/federations" in notes
    assert "Passthrough" in notes
