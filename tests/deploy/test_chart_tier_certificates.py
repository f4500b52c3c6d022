"""The tier's certificates in the Helm chart (topology.ingest.replicas = K > 0), rendered by the real Helm SDK: the
root's server certificate for the address the ingest replicas dial and a client certificate per replica (CN = its
pod name) from a CA of the tier's own or a named issuer, mounted where fedagg reads them; without cert-manager, the
secrets the NOTES name."""

from __future__ import annotations

import pytest

from tests.deploy import chart
from tests.deploy.chart import FULLNAME, render
from tests.deploy.tier_chart import INGEST_NAME, ROOT_NAME, tier, tier_scenario, tier_values

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- certificates ---------------------------------------------------------------------------------------------------


def test_cert_manager_issues_the_tier_certificates_from_a_ca_of_its_own() -> None:
    rendering = tier_scenario()
    objects = rendering.objects
    certificates = {c["metadata"]["name"]: c["spec"] for c in objects.all("Certificate")}
    issuers = {i["metadata"]["name"]: i["spec"] for i in objects.all("Issuer")}
    replicas = rendering.config(rendering.root)["topology"]["replicas"]
    host = rendering.config(rendering.ingest)["topology"]["root_address"].rsplit(":", 1)[0]

    # The tier CA: self-signed, a CA Issuer over its secret; the collaborators' CA (fedagg-ca) signs nothing here.
    ca = certificates[f"{FULLNAME}-tier-ca"]
    assert ca["isCA"] is True
    assert issuers[f"{FULLNAME}-tier-ca"] == {"ca": {"secretName": ca["secretName"]}}
    assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
    tier_certificates = {name: spec for name, spec in certificates.items() if name.endswith("-tier")}
    assert {spec["issuerRef"]["name"] for spec in tier_certificates.values()} == {f"{FULLNAME}-tier-ca"}
    assert certificates[FULLNAME]["issuerRef"]["name"] == "fedagg-ca"
    # The root: a server certificate for the address the ingest replicas dial, in the secret the root mounts.
    server = tier_certificates[f"{ROOT_NAME}-tier"]
    assert host in server["dnsNames"]
    assert "server auth" in server["usages"]
    assert rendering.volume(rendering.root, "tier")["secret"]["secretName"] == server["secretName"]
    # Each replica: a client certificate whose CN is its pod name, mounted in the directory of that name.
    sources = rendering.volume(rendering.ingest, "tier")["projected"]["sources"]
    mounted = {s["secret"]["name"]: {item["path"] for item in s["secret"]["items"]} for s in sources}
    for replica in replicas:
        client = tier_certificates[f"{replica}-tier"]
        assert client["commonName"] == replica
        assert "client auth" in client["usages"]
        assert "server auth" not in client["usages"]
        assert mounted[client["secretName"]] == {
            f"{replica}/tls.crt",
            f"{replica}/tls.key",
            f"{replica}/ca.crt",
        }
    assert len(mounted) == len(replicas)
    (mount,) = [m for m in rendering.container(rendering.ingest)["volumeMounts"] if m["name"] == "tier"]
    assert (mount["mountPath"], mount["readOnly"], "subPath" in mount) == ("/etc/fedagg/tier", True, False)


def test_a_named_issuer_signs_the_tier_instead_of_the_charts_ca() -> None:
    objects = render(
        tier_values(
            2,
            tls={"certManager": {"enabled": True, "issuerRef": {"name": "fedagg-ca"}}},
            topology={"tls": {"issuerRef": {"name": "tier-ca", "kind": "ClusterIssuer"}}},
        )
    )

    assert not objects.has("Issuer")
    refs = {c["metadata"]["name"]: c["spec"]["issuerRef"] for c in objects.all("Certificate")}
    assert set(refs) == {FULLNAME, f"{ROOT_NAME}-tier", f"{INGEST_NAME}-0-tier", f"{INGEST_NAME}-1-tier"}
    for name, ref in refs.items():
        if name != FULLNAME:
            assert ref == {"name": "tier-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_without_cert_manager_the_pods_mount_the_tier_secrets_the_notes_name() -> None:
    values = tier_values(2)
    rendering = tier(values)
    notes = chart.render_manifests(values)["templates/NOTES.txt"]

    assert not rendering.objects.has("Certificate")
    secrets = [rendering.volume(rendering.root, "tier")["secret"]["secretName"]] + [
        source["secret"]["name"]
        for source in rendering.volume(rendering.ingest, "tier")["projected"]["sources"]
    ]
    assert secrets == [f"{ROOT_NAME}-tier", f"{INGEST_NAME}-0-tier", f"{INGEST_NAME}-1-tier"]
    for secret in secrets:
        assert secret in notes
    assert f"CN {INGEST_NAME}-1" in notes
