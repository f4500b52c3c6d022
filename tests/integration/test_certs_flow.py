"""Sites that keep their own keys: ``fedagg certs request`` on the site, ``sign`` at the CA, training over mTLS.

Three sites train against a real aggregator with certificates from all three ways ``fedagg certs`` issues
them: made centrally with the CA (``fedagg certs``), added to the existing CA later (``fedagg certs add``) and
signed from the site's own CSR (``request`` then ``sign``), whose private key never leaves the site's directory.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedagg.collaborator import ClientTls
from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.support.pki import Pki
from tests.support.runners import expected_models, zero_model
from tests.support.servers import make_federation, make_plan, serving
from tests.support.training import train

ROOT = Path(__file__).resolve().parents[2]
CENTRAL, ADDED, OWN_KEY = "central-one", "added-two", "site-three"
SPECS = {CENTRAL: (1.0, 10), ADDED: (2.0, 30), OWN_KEY: (4.0, 60)}
ROUNDS = 2


def fedagg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@dataclass(frozen=True)
class SitesPki(Pki):
    """The aggregator's files from the CA directory; each site's client files from its own directory."""

    sites: dict[str, Path] = field(default_factory=dict)

    def client(self, name: str) -> ClientTls:
        directory = self.sites[name]
        return ClientTls(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


@dataclass(frozen=True)
class Flow:
    pki: SitesPki
    ca_dir: Path  # everything the CA holder has: the CA, what it issued, the CSRs it received
    site_dir: Path  # the own-key site's directory
    request_output: str
    sign_output: str


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    base = tmp_path_factory.mktemp("certs-flow")
    ca_dir, site_dir = base / "ca-holder", base / "site-three"
    pki = ca_dir / "pki"
    fedagg("certs", "--out", pki, "--collaborators", CENTRAL, "--hosts", "localhost,127.0.0.1")
    fedagg("certs", "add", "--ca", pki, "--collaborators", ADDED)
    # on the site: its key and CSR, in its own directory
    requested = fedagg("certs", "request", "--name", OWN_KEY, "--out", site_dir)
    # the CSR travels to the CA holder, who signs it; the certificate and CA certificate travel back
    inbox = ca_dir / "inbox"
    inbox.mkdir()
    shutil.copy(site_dir / f"{OWN_KEY}.csr", inbox / f"{OWN_KEY}.csr")
    signed = fedagg("certs", "sign", "--ca", pki, inbox / f"{OWN_KEY}.csr", "--name", OWN_KEY)
    for name in ("tls.crt", "ca.crt"):
        shutil.copy(pki / "collaborators" / OWN_KEY / name, site_dir / name)
    sites = {
        CENTRAL: pki / "collaborators" / CENTRAL,
        ADDED: pki / "collaborators" / ADDED,
        OWN_KEY: site_dir,
    }
    return Flow(SitesPki(pki, pki / "aggregator", sites), ca_dir, site_dir, requested.stdout, signed.stdout)


def key_encodings(key_file: Path) -> list[bytes]:
    """Every form the key could be copied in: PEM, DER, base64 (a PEM body, a Secret value), the raw scalar."""
    pem = key_file.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [pem, der, base64.b64encode(der), base64.b64encode(pem), scalar]


def test_a_site_with_its_own_key_trains_over_mtls_and_its_key_never_left(flow: Flow, tmp_path: Path) -> None:
    key_file = flow.site_dir / "tls.key"
    federation = make_federation(tmp_path, make_plan(tuple(SPECS), ROUNDS), zero_model())

    with serving(federation, flow.pki) as thread:
        collaborators = train(thread.address, flow.pki, SPECS)

    expected = expected_models(list(SPECS.values()), ROUNDS)
    last = read_model(tmp_path / "last.pbuf")
    assert last.round_number == ROUNDS
    np.testing.assert_allclose(last.tensors["w"], expected[-1], rtol=1e-6)
    assert {c.client.collaborator: c.rounds_completed for c in collaborators} == dict.fromkeys(SPECS, ROUNDS)
    # the private key stayed where it was made, private, and nothing under the CA holder's directory has it
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(path.name for path in flow.site_dir.iterdir()) == sorted(
        ["tls.key", f"{OWN_KEY}.csr", "tls.crt", "ca.crt"]
    )
    encodings = key_encodings(key_file)
    ca_files = [path for path in flow.ca_dir.rglob("*") if path.is_file()]
    assert len(ca_files) > 20
    for path in ca_files:
        content = b"".join(path.read_bytes().split())  # PEM line breaks and YAML indentation removed
        assert not any(b"".join(encoding.split()) in content for encoding in encodings), path
    assert not (flow.pki.root / "collaborators" / OWN_KEY / "tls.key").exists()
    assert not list(flow.ca_dir.rglob(f"*{OWN_KEY}*.key"))
    # the operator can compare the CSR fingerprint both sides printed
    fingerprint = next(line for line in flow.request_output.splitlines() if line.startswith("CSR SHA-256:"))
    assert fingerprint.split()[2] in flow.sign_output


def test_openssl_accepts_every_chain_and_the_request(flow: Flow) -> None:
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl is not installed")
    assert openssl is not None

    def run(*args: str | Path) -> str:
        result = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    for name, directory in flow.pki.sites.items():
        verified = run(
            "verify", "-purpose", "sslclient", "-CAfile", directory / "ca.crt", directory / "tls.crt"
        )
        subject = run("x509", "-in", directory / "tls.crt", "-noout", "-subject")
        assert "OK" in verified
        assert f"CN = {name}" in subject or f"CN={name}" in subject
    openfl_client = flow.pki.root / "openfl" / "cert" / "client" / f"col_{ADDED}.crt"
    run("verify", "-CAfile", flow.pki.root / "openfl" / "cert" / "cert_chain.crt", openfl_client)
    assert "verify OK" in run("req", "-in", flow.site_dir / f"{OWN_KEY}.csr", "-noout", "-verify")
    # the certificate holds the site's public key: the pair works together
    certificate_key = run("x509", "-in", flow.site_dir / "tls.crt", "-noout", "-pubkey")
    site_key = run("pkey", "-in", flow.site_dir / "tls.key", "-pubout")
    assert certificate_key.strip() == site_key.strip()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("request", "--name", "../../x", "--out", "{tmp}/site"), "--name"),
        (("--out", "{tmp}/pki", "--collaborators", "one,../../x"), "--collaborators"),
        (("add", "--ca", "{ca}", "--collaborators", "../../x"), "--collaborators"),
    ],
)
def test_traversal_names_are_refused_with_exit_2_and_no_traceback(
    flow: Flow, tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    before = sorted(flow.ca_dir.rglob("*"))
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{ca}", str(flow.pki.root)) for arg in args]

    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "certs", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert f"argument {flag}: '../../x' is not a valid collaborator name" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert sorted(flow.ca_dir.rglob("*")) == before
    assert not (tmp_path.parent.parent / "x").exists()
