"""What the aggregator's pod may read, write and call: TLS, RBAC, its security context and its state volume."""

from __future__ import annotations

import pytest

from tests.deploy import chart
from tests.deploy.chart import (
    FULLNAME,
    NAMESPACE,
    SCENARIOS,
    render,
    rendered,
    scenario_values,
    with_federation,
)

HOOK_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- TLS ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "secret"),
    [
        ("default", f"{FULLNAME}-tls"),
        ("existing-secret", "aggregator-tls"),
        ("cert-manager", f"{FULLNAME}-tls"),
    ],
)
def test_the_tls_secret_is_mounted_as_a_whole_directory(scenario: str, secret: str) -> None:
    objects = rendered(scenario)

    volume = objects.volume("tls")
    mount = objects.mount("tls")
    tls = objects.config()["server"]["tls"]
    assert volume["secret"]["secretName"] == secret
    assert "items" not in volume["secret"]
    assert mount == {"name": "tls", "mountPath": "/etc/fedagg/tls", "readOnly": True}
    assert tls == {
        "mode": "mtls",
        "certificate_dir": "/etc/fedagg/tls",
        "certificate": "tls.crt",
        "private_key": "tls.key",
        "root_certificate": "ca.crt",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_volume_is_mounted_with_subpath(scenario: str) -> None:
    objects = rendered(scenario)

    for pod_spec in [objects.pod_spec] + [pod["spec"] for pod in objects.all("Pod")]:
        for container in pod_spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount, mount
                assert "subPathExpr" not in mount, mount


def test_cert_manager_certificate_fills_the_mounted_secret() -> None:
    objects = rendered("cert-manager")

    certificate = objects.one("Certificate", FULLNAME)["spec"]
    assert certificate["secretName"] == objects.volume("tls")["secret"]["secretName"]
    assert certificate["issuerRef"] == {"name": "fedagg-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert certificate["dnsNames"] == [
        FULLNAME,
        f"{FULLNAME}.{NAMESPACE}",
        f"{FULLNAME}.{NAMESPACE}.svc",
        f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "aggregator.example.org",
    ]
    assert "server auth" in certificate["usages"]
    assert certificate["privateKey"]["rotationPolicy"] == "Always"


def test_insecure_mode_mounts_no_certificate() -> None:
    objects = render(with_federation(config={"server": {"tls": {"mode": "insecure"}}}))

    assert "tls" not in {volume["name"] for volume in objects.pod_spec["volumes"]}
    assert objects.config()["server"]["tls"] == {"mode": "insecure"}


# --- RBAC and service account -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "persistence-off"])
def test_rbac_grants_exactly_the_hook_verbs(scenario: str) -> None:
    objects = rendered(scenario)

    role = objects.one("Role", FULLNAME)
    binding = objects.one("RoleBinding", FULLNAME)
    assert role["rules"] == HOOK_RULES
    assert not objects.has("ClusterRole")
    assert not objects.has("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": chart.scenario_namespace(scenario)}
    ]
    assert objects.pod_spec["serviceAccountName"] == FULLNAME
    assert objects.pod_spec["automountServiceAccountToken"] is True
    assert objects.one("ServiceAccount", FULLNAME)["automountServiceAccountToken"] is False


def test_without_the_kubernetes_hook_there_is_no_role_and_no_token() -> None:
    objects = rendered("persistence-off")

    assert objects.config()["hooks"]["kubernetes"]["enabled"] == "false"
    assert not objects.has("Role")
    assert not objects.has("RoleBinding")
    assert objects.pod_spec["automountServiceAccountToken"] is False


def test_a_boolean_hook_switch_is_written_as_fedagg_expects() -> None:
    objects = render(with_federation(config={"hooks": {"kubernetes": {"enabled": False}}}))

    assert objects.config()["hooks"]["kubernetes"]["enabled"] == "false"
    assert not objects.has("Role")


# --- security -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context_is_hardened(scenario: str) -> None:
    objects = rendered(scenario)

    for pod_spec in [objects.pod_spec] + [pod["spec"] for pod in objects.all("Pod")]:
        pod_context = pod_spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == 10001
        assert pod_context["fsGroup"] == 10001
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod_spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == 10001
            assert container["resources"]["limits"]["memory"]
            assert container["resources"]["requests"]["cpu"]
        assert pod_spec["enableServiceLinks"] is False


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_writable_paths_are_only_the_state_volume_and_tmp(scenario: str) -> None:
    objects = rendered(scenario)

    writable = {m["mountPath"] for m in objects.container["volumeMounts"] if not m.get("readOnly")}
    extra = {
        m["mountPath"]
        for m in scenario_values(scenario).get("extraVolumeMounts", [])
        if not m.get("readOnly")
    }
    assert writable - extra == {"/var/lib/fedagg", "/tmp"}
    assert objects.config()["storage"]["state_dir"] == "/var/lib/fedagg"


# --- storage ------------------------------------------------------------------------------------------------------


def test_state_is_on_a_claim_by_default_and_on_an_emptydir_without_persistence() -> None:
    default = rendered("default")
    ephemeral = rendered("persistence-off")

    claim = default.one("PersistentVolumeClaim", f"{FULLNAME}-state")
    assert default.volume("state")["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-state"}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]
    assert not ephemeral.has("PersistentVolumeClaim")
    assert ephemeral.volume("state")["emptyDir"] == {"sizeLimit": "1Gi"}


def test_an_existing_claim_is_used_as_is() -> None:
    objects = render(with_federation(persistence={"existingClaim": "models", "storageClassName": ""}))

    assert not objects.has("PersistentVolumeClaim")
    assert objects.volume("state")["persistentVolumeClaim"] == {"claimName": "models"}


def test_the_initial_model_configmap_is_mounted_and_configured() -> None:
    objects = rendered("default")

    assert objects.volume("initial-model")["configMap"]["name"] == "mnist-init-model"
    assert objects.mount("initial-model")["mountPath"] == "/etc/fedagg/model"
    assert objects.config()["federation"]["initial_model"] == "/etc/fedagg/model/init.pbuf"
