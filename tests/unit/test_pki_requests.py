"""Name rules, certificate signing requests, CSR signing and adding sites to an existing CA."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedagg.cli import main
from fedagg.pki.authority import CertificateAuthority, find_ca
from fedagg.pki.errors import CaError, InvalidName, OutputExists, PkiError
from fedagg.pki.federation import add_to_federation_pki, write_federation_pki
from fedagg.pki.names import check_host, check_name, check_names, check_secret_name
from fedagg.pki.requests import make_request, read_request, sign_request_file, write_request

TRAVERSAL = "../../x"


def csr(
    subject: list[x509.NameAttribute[str]],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None = None,
    algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    """A CSR with any subject and key (cryptography signs whatever it is given, unlike ``make_request``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        request = builder.sign(key, None)
    else:
        request = builder.sign(key, algorithm or hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def cn(name: str) -> list[x509.NameAttribute[str]]:
    return [x509.NameAttribute(NameOID.COMMON_NAME, name)]


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tree(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


# ---- name rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["one", "site-a", "col_1", "env.one", "A1", "x", "a" * 64, "9"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (TRAVERSAL, "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("", "empty"),
        ("a" * 65, "65 characters"),
        (".hidden", "start and end"),
        ("site-a.", "start and end"),
        ("-rf", "start and end"),
        ("a b", "' '"),
        ("a\x00b", "'\\x00'"),
        ("é", "'é'"),
        ("a:b", "':'"),
        ("a*", "'*'"),
    ],
)
def test_names_that_could_escape_or_confuse_are_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidName) as refused:
        check_name(name, "observer")

    assert reason in str(refused.value)
    assert str(refused.value).startswith(f"{name!r} is not a valid observer name")
    assert (refused.value.kind, refused.value.value) == ("observer", name)


def test_a_name_given_twice_in_any_case_is_refused() -> None:
    assert check_names(["a", "b"]) == ["a", "b"]
    with pytest.raises(InvalidName, match="given twice"):
        check_names(["site-a", "SITE-A"])


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "::1", "fedagg.example.org", "10.0.0.7", "a-1.b2", "2001:db8::7"]
)
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize(
    "host",
    [
        "",
        TRAVERSAL,
        "a/b",
        "a..b",
        "fe80::1%eth0",
        "fe80::1%../../x",
        "a_b.example.org",
        "-a.example.org",
        "*.example.org",
        "a" * 64 + ".org",
        "x." * 127 + "xy",
    ],
)
def test_bad_host_names_are_refused(host: str) -> None:
    with pytest.raises(InvalidName, match="not a valid host name"):
        check_host(host)


def test_secret_names_follow_kubernetes() -> None:
    assert check_secret_name("fl-fedagg-tls") == "fl-fedagg-tls"
    for bad in ("../s", "Upper", "", "a/b", "-a"):
        with pytest.raises(InvalidName):
            check_secret_name(bad)


def test_central_layout_refuses_bad_names_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    attempts = [
        {"collaborators": [TRAVERSAL], "hosts": ["localhost"]},
        {"collaborators": ["a"], "hosts": ["localhost"], "observers": [TRAVERSAL]},
        {"collaborators": ["a"], "hosts": [TRAVERSAL]},
        {"collaborators": ["a"], "hosts": ["localhost"], "secret_name": "../../s"},
        {"collaborators": ["a", "A"], "hosts": ["localhost"]},
    ]

    for attempt in attempts:
        with pytest.raises(InvalidName):
            write_federation_pki(out, **attempt)  # type: ignore[arg-type]

    assert tree(tmp_path) == set()


# ---- requests ---------------------------------------------------------------------------------------------


def test_a_request_carries_the_name_and_the_new_key() -> None:
    key_pem, request_pem = make_request("site-a")

    request = read_request(request_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    parsed = x509.load_pem_x509_csr(request_pem)

    assert request.common_name == "site-a"
    assert parsed.subject.rfc4514_string() == "CN=site-a"
    assert spki(request.public_key) == spki(key.public_key())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    digest = hashlib.sha256(parsed.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    assert request.fingerprint.replace(":", "") == digest
    assert request.openfl_hash == hashlib.sha384(request_pem).hexdigest()  # what OpenFL's fx prints
    assert read_request(parsed.public_bytes(serialization.Encoding.DER)) == request  # DER is read too


def test_make_request_refuses_a_bad_name() -> None:
    with pytest.raises(InvalidName):
        make_request(TRAVERSAL)


def test_an_altered_request_is_refused() -> None:
    der = x509.load_pem_x509_csr(make_request("site-a")[1]).public_bytes(serialization.Encoding.DER)
    altered = der.replace(b"site-a", b"site-b")  # still parses; the signature no longer matches

    assert x509.load_der_x509_csr(altered).subject.rfc4514_string() == "CN=site-b"
    with pytest.raises(PkiError, match="signature does not verify"):
        read_request(altered)


@pytest.mark.parametrize(
    ("request_pem", "message"),
    [
        (lambda: csr(cn(TRAVERSAL)), "not a valid collaborator name"),
        (lambda: csr(cn("a/b")), "path separator"),
        (lambda: csr(cn(" ")), "not a valid collaborator name"),
        (lambda: csr([]), "0 CNs"),
        (lambda: csr([*cn("a"), *cn("b")]), "2 CNs"),
        (lambda: csr(cn("a"), rsa.generate_private_key(65537, 1024)), "1024 bits"),
        (lambda: csr(cn("a"), ec.generate_private_key(ec.SECP256K1())), "secp256k1"),
        (lambda: csr(cn("a"), ed25519.Ed25519PrivateKey.generate()), "Ed25519PublicKey"),
        (lambda: b"not a request", "not a certificate signing request"),
        (lambda: make_request("a")[0], "private key"),
        (lambda: b"-" * 70_000, "bytes long"),
    ],
    ids=[
        "traversal-cn",
        "slash-cn",
        "blank-cn",
        "no-cn",
        "two-cns",
        "rsa-1024",
        "secp256k1",
        "ed25519",
        "garbage",
        "a-private-key",
        "oversized",
    ],
)
def test_requests_that_fail_a_check_are_refused(request_pem: object, message: str) -> None:
    with pytest.raises(PkiError, match=message):
        read_request(request_pem())  # type: ignore[operator]


# ---- signing ----------------------------------------------------------------------------------------------


def test_signing_issues_a_client_certificate_for_the_request_key_only() -> None:
    authority = CertificateAuthority("test CA")
    key_pem, request_pem = make_request("site-a")

    certificate = x509.load_pem_x509_certificate(authority.sign_request(read_request(request_pem)))

    certificate.verify_directly_issued_by(authority.certificate)
    assert certificate.subject.rfc4514_string() == "CN=site-a"
    assert spki(certificate.public_key()) == spki(
        serialization.load_pem_private_key(key_pem, None).public_key()
    )
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_an_openfl_style_request_is_signed_without_its_requested_extensions() -> None:
    """``fx collaborator generate-cert-request``: RSA 3072, SHA-384, SAN, EKU and KeyUsage requested."""
    requested = [
        (x509.BasicConstraints(ca=True, path_length=None), True),  # asking to be a CA changes nothing
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), True),
        (x509.SubjectAlternativeName([x509.DNSName("evil.example.org")]), False),
    ]
    request_pem = csr(cn("env_one"), rsa.generate_private_key(65537, 3072), hashes.SHA384(), requested)
    authority = CertificateAuthority("test CA")

    certificate = x509.load_pem_x509_certificate(authority.sign_request(read_request(request_pem)))

    certificate.verify_directly_issued_by(authority.certificate)
    assert certificate.subject.rfc4514_string() == "CN=env_one"
    assert {extension.oid for extension in certificate.extensions} == {
        x509.BasicConstraints.oid,
        x509.ExtendedKeyUsage.oid,
        x509.AuthorityKeyIdentifier.oid,
    }
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_a_certificate_never_outlives_its_ca() -> None:
    authority = CertificateAuthority("short CA", datetime.timedelta(days=10))

    certificate = x509.load_pem_x509_certificate(
        authority.sign_request(read_request(make_request("a")[1]), datetime.timedelta(days=365))
    )

    assert certificate.not_valid_after_utc == authority.certificate.not_valid_after_utc


def test_a_stored_ca_loads_and_keeps_signing() -> None:
    authority = CertificateAuthority("test CA")
    other = CertificateAuthority("other CA")
    leaf = authority.issue_client("leaf")
    encrypted = serialization.load_pem_private_key(authority.private_key_pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )

    loaded = CertificateAuthority.load(authority.certificate_pem, authority.private_key_pem)
    certificate = x509.load_pem_x509_certificate(loaded.sign_request(read_request(make_request("a")[1])))

    certificate.verify_directly_issued_by(authority.certificate)
    assert loaded.certificate_pem == authority.certificate_pem
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority.load(authority.certificate_pem, other.private_key_pem)
    with pytest.raises(CaError, match="not a CA certificate"):
        CertificateAuthority.load(leaf.certificate_pem, leaf.private_key_pem)
    with pytest.raises(CaError, match="encrypted"):
        CertificateAuthority.load(authority.certificate_pem, encrypted)
    with pytest.raises(CaError, match="not a PEM"):
        CertificateAuthority.load(b"junk", authority.private_key_pem)


# ---- files ------------------------------------------------------------------------------------------------


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


# ---- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--out", "{tmp}/pki", "--collaborators", TRAVERSAL], "--collaborators", TRAVERSAL),
        (["--out", "{tmp}/pki", "--collaborators", "a,,b"], "--collaborators", "a,,b"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--observers", "../o"], "--observers", "../o"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--observers", "a"], "--observers", "a"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--hosts", "../h"], "--hosts", "../h"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--secret-name", "../s"], "--secret-name", "../s"),
        (["request", "--name", TRAVERSAL, "--out", "{tmp}/site"], "--name", TRAVERSAL),
        (["request", "--name", "", "--out", "{tmp}/site"], "--name", "''"),
        (["sign", "--ca", "{tmp}/none", "{tmp}/x.csr", "--name", "a/b"], "--name", "a/b"),
        (["sign", "--ca", "{tmp}/none", "{tmp}/x.csr"], "--ca", "none"),
        (["add", "--ca", "{tmp}/none", "--collaborators", TRAVERSAL], "--collaborators", TRAVERSAL),
        (["add", "--ca", "{tmp}/none", "--observers", ".x"], "--observers", ".x"),
        (["add", "--ca", "{tmp}/none", "--collaborators", "x"], "--ca", "none"),
    ],
)
def test_the_command_names_the_option_and_value_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, value: str
) -> None:
    status = main(["certs", *(argument.replace("{tmp}", str(tmp_path)) for argument in argv)])

    error = capsys.readouterr().err
    assert status == 2
    assert f"argument {flag}:" in error
    assert value in error
    assert "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert tree(tmp_path) == set()


def test_the_command_without_options_or_action_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path / "pki")]) == 2
    assert "--out and --collaborators are required" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["request", "sign", "add"])
def test_every_action_has_help_with_examples(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["certs", action, "--help"])

    shown = capsys.readouterr().out
    assert exited.value.code == 0
    assert "examples:" in shown
    assert f"fedagg certs {action} " in shown.split("examples:")[1]
