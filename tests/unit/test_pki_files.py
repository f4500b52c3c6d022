"""The PKI's files: a site's request and key, a signed certificate, and adding sites to an existing CA."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedagg.pki.authority import find_ca
from fedagg.pki.errors import CaError, InvalidName, OutputExists, PkiError
from fedagg.pki.federation import add_to_federation_pki, write_federation_pki
from fedagg.pki.requests import read_request, sign_request_file, write_request
from tests.unit.certificate_requests import TRAVERSAL, spki, tree


def test_write_request_keeps_the_key_private_and_never_replaces_it(tmp_path: Path) -> None:
    site = tmp_path / "site-a"

    files = write_request(site, "site-a")
    key_before = files.private_key.read_bytes()

    assert tree(site) == {"tls.key", "site-a.csr"}
    assert stat.S_IMODE(files.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(site.stat().st_mode) == 0o700
    assert read_request(files.request.read_bytes()).fingerprint == files.fingerprint
    with pytest.raises(OutputExists, match="already has a private key"):
        write_request(site, "site-a")
    assert files.private_key.read_bytes() == key_before
    with pytest.raises(InvalidName):
        write_request(tmp_path / "other", TRAVERSAL)
    assert tree(tmp_path) == {"site-a", "site-a/tls.key", "site-a/site-a.csr"}


def test_sign_request_file_writes_the_certificate_and_ca_only(tmp_path: Path) -> None:
    pki = write_federation_pki(tmp_path / "pki", ["one"], ["localhost"])
    site = write_request(tmp_path / "site", "site-b")

    signed = sign_request_file(tmp_path / "pki", site.request)

    directory = tmp_path / "pki" / "collaborators" / "site-b"
    assert (signed.common_name, signed.certificate, signed.ca_certificate) == (
        "site-b",
        directory / "tls.crt",
        directory / "ca.crt",
    )
    assert tree(directory) == {"tls.crt", "ca.crt"}
    assert signed.ca_certificate.read_bytes() == pki.ca_certificate.read_bytes()
    assert signed.fingerprint == site.fingerprint
    certificate = x509.load_pem_x509_certificate(signed.certificate.read_bytes())
    certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes()))
    key = serialization.load_pem_private_key(site.private_key.read_bytes(), None)
    assert spki(certificate.public_key()) == spki(key.public_key())

    with pytest.raises(OutputExists):
        sign_request_file(tmp_path / "pki", site.request)  # never overwrites
    central = write_request(tmp_path / "s1", "one").request
    with pytest.raises(OutputExists):
        sign_request_file(tmp_path / "pki", central)  # collaborators/one/ holds a centrally made key
    with pytest.raises(PkiError, match="not 'site-c'"):
        sign_request_file(tmp_path / "pki", site.request, tmp_path / "out", expected_name="site-c")
    elsewhere = sign_request_file(
        tmp_path / "pki" / "ca", site.request, tmp_path / "out", datetime.timedelta(1)
    )
    assert elsewhere.certificate == tmp_path / "out" / "tls.crt"
    with pytest.raises(CaError, match="holds no CA"):
        sign_request_file(tmp_path / "site", site.request, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_add_writes_the_central_layouts_for_new_sites(tmp_path: Path) -> None:
    pki = write_federation_pki(tmp_path / "pki", ["one"], ["localhost"], observers=["dash"])
    before = tree(tmp_path / "pki")

    added = add_to_federation_pki(tmp_path / "pki", ["two"], ["grafana"])

    assert added == {name: tmp_path / "pki" / "collaborators" / name for name in ("two", "grafana")}
    assert tree(tmp_path / "pki") - before == {
        f"{prefix}{name}{suffix}"
        for name in ("two", "grafana")
        for prefix, suffix in (
            ("collaborators/", ""),
            ("collaborators/", "/tls.crt"),
            ("collaborators/", "/tls.key"),
            ("collaborators/", "/ca.crt"),
            ("openfl/cert/client/col_", ".crt"),
            ("openfl/cert/client/col_", ".key"),
        )
    }
    ca = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
    for name in ("two", "grafana"):
        certificate = x509.load_pem_x509_certificate((added[name] / "tls.crt").read_bytes())
        certificate.verify_directly_issued_by(ca)
        assert certificate.subject.rfc4514_string() == f"CN={name}"
        assert stat.S_IMODE((added[name] / "tls.key").stat().st_mode) == 0o600
        openfl_key = tmp_path / "pki" / "openfl" / "cert" / "client" / f"col_{name}.key"
        assert stat.S_IMODE(openfl_key.stat().st_mode) == 0o600
        assert (added[name] / "ca.crt").read_bytes() == pki.ca_certificate.read_bytes()


def test_add_refuses_bad_or_taken_names_before_writing(tmp_path: Path) -> None:
    write_federation_pki(tmp_path / "pki", ["one"], ["localhost"])
    before = tree(tmp_path)

    for collaborators in ([TRAVERSAL], ["ONE"], ["two", "two"], ["two", TRAVERSAL]):
        with pytest.raises(InvalidName):
            add_to_federation_pki(tmp_path / "pki", collaborators)
    with pytest.raises(CaError):
        add_to_federation_pki(tmp_path / "nowhere", ["two"])

    assert tree(tmp_path) == before


def test_find_ca_accepts_the_root_or_its_ca_directory(tmp_path: Path) -> None:
    write_federation_pki(tmp_path / "pki", ["one"], ["localhost"])

    assert find_ca(tmp_path / "pki").root == tmp_path / "pki"
    assert find_ca(tmp_path / "pki" / "ca").root == tmp_path / "pki"
    assert find_ca(tmp_path / "pki" / "ca").ca_dir == tmp_path / "pki" / "ca"


def test_secret_files_are_made_private_even_if_they_existed(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    (out / "aggregator").mkdir(parents=True)
    (out / "aggregator" / "tls.key").write_bytes(b"old")
    os.chmod(out / "aggregator" / "tls.key", 0o644)

    write_federation_pki(out, ["one"], ["localhost"])

    assert stat.S_IMODE((out / "aggregator" / "tls.key").stat().st_mode) == 0o600
