"""The fedagg.yaml each role of the chart's scale-out tier reads, and what is refused at render time. Each role's
rendered file passes ``fedagg config check`` in a copy of its pod's file system: the ConfigMap, the secrets (real
certificates, issued as the rendered cert-manager Certificates ask) and the initial model placed where the pod
template mounts them, the mount paths moved under a temporary directory, the pod's environment set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedagg.config.topology import PARTIAL_SUM_METHODS, WHY_NOT_PARTIAL
from fedagg.pki.authority import CertificateAuthority
from tests.deploy import chart
from tests.deploy.chart import CHART, NAMESPACE
from tests.deploy.tier_chart import INGEST_NAME, ROOT_NAME, Tier, refusal, tier, tier_scenario, tier_values
from tests.support.models import write_zero_model

pytestmark = pytest.mark.usefixtures("helm_sdk")

TIER_DIR = "/etc/fedagg/tier"


# --- the configuration each role reads ------------------------------------------------------------------------------


def test_each_role_reads_its_topology() -> None:
    rendering = tier_scenario()
    root, ingest = rendering.config(rendering.root), rendering.config(rendering.ingest)
    tier_port = rendering.objects.one("Service", ROOT_NAME)["spec"]["ports"][0]["port"]
    root_ports = {p["name"]: p["containerPort"] for p in rendering.container(rendering.root)["ports"]}

    assert root["topology"] == {
        "role": "root",
        "tier_port": tier_port,
        "tier_bind_address": "[::]",
        "tier_certificate_dir": TIER_DIR,
        "replicas": [f"{INGEST_NAME}-{ordinal}" for ordinal in range(rendering.ingest["spec"]["replicas"])],
        "lost_replica_seconds": 300,
    }
    assert root_ports["tier"] == tier_port
    assert ingest["topology"] == {
        "role": "ingest",
        "root_address": f"{ROOT_NAME}.{NAMESPACE}.svc:{tier_port}",
        "tier_certificate_dir": TIER_DIR,
    }
    for statefulset in (rendering.root, rendering.ingest):
        (mount,) = [m for m in rendering.container(statefulset)["volumeMounts"] if m["name"] == "tier"]
        assert mount["mountPath"] == TIER_DIR
    # The ingest replicas serve the collaborators with the federation certificates; the root opens no federation
    # port and does not mount them: its server presents the tier's.
    assert ingest["server"]["port"] == 50051
    assert ingest["server"]["tls"]["mode"] == "mtls"
    assert ingest["server"]["tls"]["certificate_dir"] == "/etc/fedagg/tls"
    assert {"port", "bind_address"}.isdisjoint(root["server"])
    assert root["server"]["tls"]["certificate_dir"] == TIER_DIR
    assert "tls" not in {v["name"] for v in rendering.root["spec"]["template"]["spec"]["volumes"]}
    # The rest of the configuration is the same for both roles.
    assert {k: v for k, v in root.items() if k not in ("topology", "server")} == {
        k: v for k, v in ingest.items() if k not in ("topology", "server")
    }


def test_the_tier_settings_are_values() -> None:
    rendering = tier(tier_values(2, containerPorts={"tier": 6000}, topology={"lostReplicaSeconds": 45}))

    topology = rendering.config(rendering.root)["topology"]
    assert (topology["tier_port"], topology["lost_replica_seconds"]) == (6000, 45)
    assert rendering.config(rendering.ingest)["topology"]["root_address"].endswith(":6000")
    assert rendering.objects.one("Service", ROOT_NAME)["spec"]["ports"][0]["port"] == 6000


def test_only_the_root_gets_a_service_account_token() -> None:
    rendering = tier_scenario()

    assert rendering.root["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert rendering.ingest["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --- fedagg config check on each role's files, where its pod mounts them --------------------------------------------


class Secrets:
    """The secrets the rendered Certificates ask for, issued by one real CA per issuer (the collaborators' CA and
    the tier's), as cert-manager writes them: tls.crt, tls.key and the issuer's ca.crt."""

    def __init__(self, rendering: Tier) -> None:
        self.data: dict[str, dict[str, bytes]] = {}
        authorities: dict[str, CertificateAuthority] = {}
        for certificate in rendering.objects.all("Certificate"):
            spec = certificate["spec"]
            if spec.get("isCA"):
                continue
            issuer = spec["issuerRef"]["name"]
            authority = authorities.setdefault(issuer, CertificateAuthority(issuer))
            if "server auth" in spec.get("usages", ["server auth"]):
                issued = authority.issue_server(spec["commonName"], spec["dnsNames"])
            else:
                issued = authority.issue_client(spec["commonName"])
            self.data[spec["secretName"]] = {
                "tls.crt": issued.certificate_pem,
                "tls.key": issued.private_key_pem,
                "ca.crt": authority.certificate_pem,
            }


def pod_files(rendering: Tier, statefulset: dict[str, Any], secrets: Secrets, root: Path) -> dict[str, Path]:
    """Write the files of ``statefulset``'s pod under ``root`` as its volume mounts place them; return mount path
    -> its directory under ``root``."""
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    model = write_zero_model(root).read_bytes()
    moved: dict[str, Path] = {}
    for mount in rendering.container(statefulset)["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        moved[mount["mountPath"]] = target
        volume = volumes.get(mount["name"], {})  # the claim (volumeClaimTemplates) has no volume here
        files: dict[str, bytes] = {}
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            owned = [c for c in rendering.objects.all("ConfigMap") if c["metadata"]["name"] == name]
            data = {k: v.encode() for k, v in owned[0]["data"].items()} if owned else {"init.pbuf": model}
            items = volume["configMap"].get("items") or [{"key": key, "path": key} for key in data]
            files = {item["path"]: data[item["key"]] for item in items}
        elif "secret" in volume:
            files = dict(secrets.data[volume["secret"]["secretName"]])
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                data = secrets.data[source["secret"]["name"]]
                files.update({item["path"]: data[item["key"]] for item in source["secret"]["items"]})
        for path, content in files.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(content)
    return moved


def pod_environment(rendering: Tier, statefulset: dict[str, Any], pod: str) -> dict[str, str]:
    """The container's environment in pod ``pod`` (values and the downward API's name and namespace)."""
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    return {
        item["name"]: item["value"] if "value" in item else fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        for item in rendering.container(statefulset)["env"]
    }


def config_check(rendering: Tier, statefulset: dict[str, Any], pod: str, tmp_path: Path) -> tuple[int, str]:
    """``fedagg config check`` on the fedagg.yaml pod ``pod`` reads, its mount paths moved under ``tmp_path``."""
    moved = pod_files(rendering, statefulset, Secrets(rendering), tmp_path)
    args = rendering.container(statefulset)["args"]
    mounted = Path(args[args.index("--config") + 1])
    paths = re.compile("|".join(re.escape(path) for path in sorted(moved, key=len, reverse=True)))
    text = (moved[str(mounted.parent)] / mounted.name).read_text()
    config = tmp_path / "fedagg.yaml"
    config.write_text(paths.sub(lambda match: str(moved[match.group(0)]), text))
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FEDAGG__")},
        **pod_environment(rendering, statefulset, pod),
    }
    checked = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "config", "check", str(config)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    return checked.returncode, checked.stdout + checked.stderr


def test_the_root_passes_config_check_with_its_mounted_files(tmp_path: Path) -> None:
    rendering = tier_scenario()

    status, output = config_check(rendering, rendering.root, f"{ROOT_NAME}-0", tmp_path)

    assert status == 0, output
    # Its server certificate names the address the ingest replicas dial.
    host = rendering.config(rendering.ingest)["topology"]["root_address"].rsplit(":", 1)[0]
    certificate = x509.load_pem_x509_certificate((tmp_path / TIER_DIR.lstrip("/") / "tls.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in names.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize("ordinal", [0, 2])
def test_an_ingest_replica_passes_config_check_with_its_mounted_files(ordinal: int, tmp_path: Path) -> None:
    rendering = tier_scenario()
    pod = f"{INGEST_NAME}-{ordinal}"

    status, output = config_check(rendering, rendering.ingest, pod, tmp_path)

    assert status == 0, output
    # The client certificate it reads is its own: CN = its pod name, the root's topology.replicas entry.
    own = tmp_path / TIER_DIR.lstrip("/") / pod / "tls.crt"
    subject = x509.load_pem_x509_certificate(own.read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == pod
    assert pod in rendering.config(rendering.root)["topology"]["replicas"]


def test_a_pod_the_statefulset_does_not_have_finds_no_tier_certificate(tmp_path: Path) -> None:
    rendering = tier_scenario()
    extra = f"{INGEST_NAME}-{rendering.ingest['spec']['replicas']}"

    status, output = config_check(rendering, rendering.ingest, extra, tmp_path)

    assert status == 2, output
    assert "topology.tier_certificate_dir" in output
    assert "Traceback" not in output


# --- refused at render time -----------------------------------------------------------------------------------------


def stragglers(**settings: Any) -> dict[str, Any]:
    return {"config": {"federation": {**chart.FEDERATION, "stragglers": settings}}}


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        (
            tier_values(2, workload="Job"),
            ["topology.ingest.replicas (2) needs workload: Deployment (got Job)"],
        ),
        (
            tier_values(2, ha={"enabled": True}, persistence={"accessModes": ["ReadWriteMany"]}),
            ["topology.ingest.replicas (2) and ha.enabled cannot be combined", "ha.enabled=false"],
        ),
        (tier_values(2, persistence={"enabled": False}), ["needs persistence.enabled: true"]),
        (
            tier_values(2, persistence={"existingClaim": "state"}),
            ["cannot use persistence.existingClaim (state)", "topology.ingest.storageSize"],
        ),
        (tier_values(2, fullnameOverride="f" * 50), ["longer than 52 characters", "fullnameOverride"]),
        (
            tier_values(2, config={"server": {"tls": {"mode": "tls"}}}),
            ["needs config.server.tls.mode: mtls (got tls)"],
        ),
    ],
    ids=[
        "a job",
        "ha",
        "no persistence",
        "an existing claim",
        "a long name",
        "server-only tls",
    ],
)
def test_what_does_not_fit_the_tier_is_refused_naming_the_values(
    values: dict[str, Any], needles: list[str]
) -> None:
    message = refusal(values)

    for needle in needles:
        assert needle in message


def test_straggler_policies_render_in_the_tier() -> None:
    """A tier closes a round early as one pod does (the replicas leave a straggler's work out)."""
    for settings in (
        {"policy": "percentage", "percent_needed": 0.5},
        {"cutoff_seconds": 600, "minimum_reporting": 2},
    ):
        assert tier(tier_values(2, **stragglers(**settings))).ingest["spec"]["replicas"] == 2


@pytest.mark.parametrize("method", sorted(PARTIAL_SUM_METHODS | WHY_NOT_PARTIAL.keys() | {"my.plugin.Mean"}))
def test_the_chart_refuses_the_methods_fedagg_refuses_in_the_tier(method: str) -> None:
    """The chart's list of methods exact from partial sums is fedagg's."""
    task = {"function": "train", "kwargs": {"metrics": ["loss"]}, "aggregation": method}
    federation = {**chart.FEDERATION, "tasks": {"train": task}}
    values = tier_values(2, config={"federation": federation})

    if method in PARTIAL_SUM_METHODS:
        assert tier(values).ingest["spec"]["replicas"] == 2
    else:
        assert f"config.federation.tasks.train.aggregation ({method}) cannot be used" in refusal(values)


def test_the_schema_refuses_a_negative_replica_count() -> None:
    sdk = chart.helm()
    with (
        sdk.Chart.load(CHART) as loaded,
        pytest.raises(sdk.HelmValuesError, match="/topology/ingest/replicas"),
    ):
        loaded.validate_schema(tier_values(-1))
