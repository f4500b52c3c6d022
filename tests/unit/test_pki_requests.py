"""Certificate signing requests and CSR signing: what a request carries, which are refused, what is issued."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedagg.pki.authority import CertificateAuthority
from fedagg.pki.errors import CaError, InvalidName, PkiError
from fedagg.pki.requests import make_request, read_request
from tests.unit.certificate_requests import TRAVERSAL, cn, csr, spki

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
