"""Certificates by request: a site makes its key and CSR, the CA holder checks the CSR and signs it.

The site's private key never leaves its directory; the CA holder never sees it (OpenFL's ``fx collaborator
generate-cert-request`` / ``certify``).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fedagg.pki.authority import (
    DEFAULT_VALIDITY,
    SitePublicKey,
    find_ca,
    load_authority,
    pem_private_key,
    subject,
)
from fedagg.pki.errors import OutputExists, PkiError
from fedagg.pki.files import write_file
from fedagg.pki.names import check_name

REQUEST_MAX_BYTES = 64 * 1024  # a CSR is a few hundred bytes (a few KiB with an RSA key)
_WEAK_HASHES = ("md5", "sha1")
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_RSA_MIN_BITS = 2048


@dataclass(frozen=True)
class SigningRequest:
    """A certificate signing request that passed every check of :func:`read_request`."""

    common_name: str
    public_key: SitePublicKey
    fingerprint: str  # SHA-256 of the DER request, as colon-separated hex: compare it out of band
    openfl_hash: str  # SHA-384 of the PEM request, as OpenFL's fx prints it ("The CSR Hash ...")


def make_request(name: str) -> tuple[bytes, bytes]:
    """A new private key (PKCS#8 PEM, ECDSA P-256) and a CSR (PEM) for it whose subject is ``CN=name``."""
    check_name(name)
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(subject(name)).sign(key, hashes.SHA256())
    return pem_private_key(key), request.public_bytes(serialization.Encoding.PEM)


def read_request(data: bytes) -> SigningRequest:
    """Parse and check a CSR (PEM or DER): its signature, its one CN (a valid name) and its key.

    Raises :class:`PkiError` (:class:`InvalidName` for the CN) saying what is wrong. Accepted keys are
    ECDSA on P-256, P-384 or P-521 and RSA of at least 2048 bits (OpenFL's ``generate-cert-request`` makes
    RSA 3072); the request must be signed with that key, and not with MD5 or SHA-1.
    """
    if len(data) > REQUEST_MAX_BYTES:
        raise PkiError(f"it is {len(data)} bytes long; a certificate signing request is a few KiB at most")
    if b"PRIVATE KEY-----" in data:
        raise PkiError(
            "it is a private key, not a certificate signing request: a private key stays on its site"
        )
    try:
        pem = b"-----BEGIN" in data
        request = x509.load_pem_x509_csr(data) if pem else x509.load_der_x509_csr(data)
    except ValueError as error:
        raise PkiError(f"it is not a certificate signing request, PEM or DER ({error})") from None
    try:
        signature_valid = request.is_signature_valid
        algorithm = request.signature_hash_algorithm
        public_key = request.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise PkiError(f"its key or signature algorithm is not supported ({error})") from None
    if not signature_valid:
        raise PkiError("its signature does not verify: it was altered, or not signed with the key it carries")
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _RSA_MIN_BITS:
            raise PkiError(f"its RSA key has {public_key.key_size} bits; at least {_RSA_MIN_BITS} are needed")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _EC_CURVES):
            raise PkiError(f"its ECDSA key is on {public_key.curve.name}; use P-256, P-384 or P-521")
    else:
        raise PkiError(f"its key is a {type(public_key).__name__}; use ECDSA (P-256) or RSA (>= 2048 bits)")
    if algorithm is None or algorithm.name in _WEAK_HASHES:
        raise PkiError(f"it is signed with {getattr(algorithm, 'name', 'no hash')}; use SHA-256 or stronger")
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PkiError(
            f"its subject {request.subject.rfc4514_string()!r} has {len(names)} CNs; "
            "exactly one, the collaborator's name, is needed"
        )
    common_name = names[0].value
    if isinstance(common_name, bytes):
        common_name = common_name.decode("utf-8", "replace")
    check_name(common_name, "collaborator")
    fingerprint = hashlib.sha256(request.public_bytes(serialization.Encoding.DER)).digest().hex(":").upper()
    openfl_hash = hashlib.sha384(request.public_bytes(serialization.Encoding.PEM)).hexdigest()
    return SigningRequest(common_name, public_key, fingerprint, openfl_hash)


@dataclass(frozen=True)
class RequestFiles:
    """What :func:`write_request` wrote."""

    private_key: Path
    request: Path
    fingerprint: str


def write_request(directory: Path, name: str) -> RequestFiles:
    """On a site: a new private key ``<directory>/tls.key`` (mode 0600) and ``<directory>/<name>.csr``.

    The key is written only there and never replaces an existing one; send the CSR to the CA holder and
    put the certificate and CA certificate that come back (``tls.crt``, ``ca.crt``) next to the key.
    """
    check_name(name)
    key_pem, request_pem = make_request(name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = directory / "tls.key"
    try:
        write_file(key, key_pem, secret=True, exclusive=True)
    except FileExistsError:
        raise OutputExists(
            f"{key} exists: this directory already has a private key; remove it or choose another directory"
        ) from None
    request = directory / f"{name}.csr"
    write_file(request, request_pem)
    return RequestFiles(key, request, read_request(request_pem).fingerprint)


@dataclass(frozen=True)
class SignedFiles:
    """What :func:`sign_request_file` wrote."""

    common_name: str
    certificate: Path
    ca_certificate: Path
    fingerprint: str
    openfl_hash: str
    not_valid_after: datetime.datetime


def sign_request_file(
    ca: Path,
    request: Path,
    out: Path | None = None,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    expected_name: str | None = None,
) -> SignedFiles:
    """On the CA holder: check the CSR ``request`` and write ``tls.crt`` and ``ca.crt`` to ``out``.

    ``out`` defaults to ``collaborators/<CN>/`` of the CA's directory (where :func:`add_to_federation_pki`
    would put the site). Nothing is written if the CSR fails a check, its CN is not ``expected_name`` (when
    given), or ``out`` already holds a certificate or key. The site's key is never read or needed.
    """
    location = find_ca(ca)
    authority = load_authority(location, validity)
    try:
        with request.open("rb") as file:
            data = file.read(REQUEST_MAX_BYTES + 1)
    except OSError as error:
        raise PkiError(f"cannot read {request}: {error.strerror or error}") from None
    try:
        checked = read_request(data)
    except PkiError as error:
        raise PkiError(f"{request}: {error}") from None
    if expected_name is not None and checked.common_name != expected_name:
        raise PkiError(f"{request}: its CN is {checked.common_name!r}, not {expected_name!r}")
    directory = out if out is not None else location.root / "collaborators" / checked.common_name
    for present in (directory / "tls.crt", directory / "tls.key"):
        if present.exists():
            raise OutputExists(f"{present} exists (a certificate or key is never overwritten)")
    certificate_pem = authority.sign_request(checked, validity)
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    write_file(directory / "tls.crt", certificate_pem)
    write_file(directory / "ca.crt", authority.certificate_pem)
    return SignedFiles(
        checked.common_name,
        directory / "tls.crt",
        directory / "ca.crt",
        checked.fingerprint,
        checked.openfl_hash,
        certificate.not_valid_after_utc,
    )
