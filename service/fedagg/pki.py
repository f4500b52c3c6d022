"""A certificate authority for federations: CA, aggregator and collaborator certificates, and CSR signing.

Used by ``fedagg certs`` and ``fedagg demo``. Keys are ECDSA P-256; the aggregator certificate carries the
DNS names and IP addresses collaborators dial (OpenFL checks the SAN against the address it connects to),
and each collaborator certificate carries the collaborator's name as its CN, which is how fedagg and OpenFL
identify it.

Two ways to give a site its certificate:

* central: :func:`write_federation_pki` and :func:`add_to_federation_pki` make every key next to the CA, for
  a federation whose operator also hands out the keys;
* by request: the site runs :func:`write_request` (its private key never leaves its directory), sends the
  CSR, and the CA holder runs :func:`sign_request_file`, which checks the CSR and returns a certificate
  without ever seeing the key (OpenFL's ``fx collaborator generate-cert-request`` / ``certify``).

Every name that becomes a file name or a CN is checked first (:func:`check_name`, :func:`check_host`), so a
name such as ``../../x`` is refused instead of writing outside the output directory.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=365)
NAME_MAX_LENGTH = 64  # RFC 5280's upper bound for a common name (ub-common-name)
HOST_MAX_LENGTH = 253  # the longest DNS name
REQUEST_MAX_BYTES = 64 * 1024  # a CSR is a few hundred bytes (a few KiB with an RSA key)
NAME_RULE = (
    "letters, digits, '.', '_' and '-', starting and ending with a letter or digit, "
    f"no '..', at most {NAME_MAX_LENGTH} characters"
)
HOST_RULE = (
    "an IP address, or a DNS name of letters, digits and '-' in dot-separated labels "
    f"(at most {HOST_MAX_LENGTH} characters)"
)
SECRET_NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SECRET_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_WEAK_HASHES = ("md5", "sha1")
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_RSA_MIN_BITS = 2048

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SitePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class PkiError(ValueError):
    """Something the PKI refuses (a name, a CSR, a CA directory, a file in the way); the message says what."""


class InvalidName(PkiError):
    """A collaborator, observer, host or secret name that is refused: invalid, given twice or already taken."""

    def __init__(self, kind: str, value: str, reason: str, valid: bool = False) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        if valid:  # a well-formed name refused for another reason (a duplicate, a name already issued)
            super().__init__(f"{kind} {value!r}: {reason}")
        else:
            super().__init__(f"{value!r} is not a valid {kind} name: {reason}")


class CaError(PkiError):
    """The CA directory is missing, incomplete or unreadable, or its certificate and key do not fit."""


class OutputExists(PkiError):
    """A file the command would write is already there (a key or certificate is never overwritten)."""


def check_name(name: str, kind: str = "collaborator") -> str:
    """``name`` if it may be a collaborator's (or observer's) CN and a file name; else :class:`InvalidName`.

    Allowed: ASCII letters, digits, ``.``, ``_`` and ``-``, starting and ending with a letter or digit, no
    ``..``, at most 64 characters. So no path separators, no ``..``, nothing empty or hidden, nothing an
    option parser or a shell would read differently.
    """
    reason = ""
    if not name:
        reason = "it is empty"
    elif len(name) > NAME_MAX_LENGTH:
        reason = f"it has {len(name)} characters"
    elif "/" in name or "\\" in name:
        reason = "it contains a path separator"
    elif ".." in name:
        reason = "it contains '..'"
    elif bad := [character for character in name if character not in _NAME_CHARACTERS]:
        reason = f"it contains {bad[0]!r}"
    elif not _NAME.fullmatch(name):
        reason = "it does not start and end with a letter or digit"
    if reason:
        raise InvalidName(kind, name, f"{reason} (allowed: {NAME_RULE})")
    return name


def check_names(names: Sequence[str], kind: str = "collaborator") -> list[str]:
    """Every name checked by :func:`check_name`, and none given twice (ignoring case: one directory each)."""
    seen: dict[str, str] = {}
    for name in names:
        check_name(name, kind)
        if name.lower() in seen:
            raise InvalidName(
                kind,
                name,
                f"given twice (as {seen[name.lower()]!r} already; names differing only in case would "
                "share a directory)",
                valid=True,
            )
        seen[name.lower()] = name
    return list(names)


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name fit for a SAN and a file name; else :class:`InvalidName`."""
    reason = ""
    if not host:
        reason = "it is empty"
    elif "/" in host or "\\" in host:
        reason = "it contains a path separator"
    elif ".." in host:
        reason = "it contains '..'"
    elif "%" in host:
        reason = "it contains '%' (a scoped IPv6 address)"
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return host
        if len(host) > HOST_MAX_LENGTH:
            reason = f"it has {len(host)} characters"
        else:
            bad = next((label for label in host.split(".") if not _DNS_LABEL.fullmatch(label)), None)
            if bad is not None:
                reason = f"its label {bad!r} is not letters, digits and '-' (1 to 63, no '-' at either end)"
    if reason:
        raise InvalidName("host", host, f"{reason} (allowed: {HOST_RULE})")
    return host


def check_secret_name(name: str) -> str:
    """``name`` if it is a valid Kubernetes Secret name (it also names the manifest file)."""
    if len(name) > HOST_MAX_LENGTH or not _SECRET_NAME.fullmatch(name):
        raise InvalidName(
            "Kubernetes Secret", name, f"it is not a Kubernetes object name (allowed: {SECRET_NAME_RULE})"
        )
    return name


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, both PEM-encoded."""

    certificate_pem: bytes
    private_key_pem: bytes


@dataclass(frozen=True)
class SigningRequest:
    """A certificate signing request that passed every check of :func:`read_request`."""

    common_name: str
    public_key: SitePublicKey
    fingerprint: str  # SHA-256 of the DER request, as colon-separated hex: compare it out of band
    openfl_hash: str  # SHA-384 of the PEM request, as OpenFL's fx prints it ("The CSR Hash ...")


class CertificateAuthority:
    """Signs server and client certificates."""

    def __init__(
        self, common_name: str = "fedagg CA", validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self._key: SigningKey = key
        self._validity = validity
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )

    @classmethod
    def load(
        cls, certificate_pem: bytes, private_key_pem: bytes, validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> CertificateAuthority:
        """An existing CA from its certificate and unencrypted private key (``ca.crt``, ``ca.key``)."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as error:
            raise CaError(f"the CA certificate is not a PEM certificate ({error})") from None
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except TypeError:
            raise CaError("the CA key is encrypted; fedagg reads unencrypted PEM keys only") from None
        except (ValueError, UnsupportedAlgorithm) as error:
            raise CaError(f"the CA key is not a PEM private key ({error})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CaError(f"the CA key is a {type(key).__name__}; fedagg signs with ECDSA or RSA keys")
        if _spki(key.public_key()) != _spki(certificate.public_key()):
            raise CaError("the CA key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaError("the CA certificate is not a CA certificate (no basicConstraints CA:TRUE)")
        authority = cls.__new__(cls)
        authority._key = key
        authority._validity = validity
        authority.certificate = certificate
        return authority

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate (what both sides trust)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key_pem(self) -> bytes:
        """The CA's private key (unencrypted PEM)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def issue_server(
        self,
        common_name: str,
        hosts: Iterable[str],
        validity: datetime.timedelta | None = None,
        not_before: datetime.datetime | None = None,
    ) -> Issued:
        """A TLS server certificate for ``hosts`` (DNS names and IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(common_name, ExtendedKeyUsageOID.SERVER_AUTH, names, validity, not_before)

    def issue_client(self, common_name: str, validity: datetime.timedelta | None = None) -> Issued:
        """A TLS client certificate whose CN is the collaborator's (or observer's) name."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity, None)

    def sign_request(self, request: SigningRequest, validity: datetime.timedelta | None = None) -> bytes:
        """A TLS client certificate (PEM) for a checked CSR: its CN and public key, nothing else.

        The CSR's requested extensions are not copied (OpenFL's ``certify`` copies them): whatever it asks
        for, the certificate is a client-auth, non-CA certificate, like :meth:`issue_client`'s.
        """
        certificate = self._certificate(
            request.common_name, request.public_key, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity, None
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
        validity: datetime.timedelta | None,
        not_before: datetime.datetime | None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._certificate(common_name, key.public_key(), usage, names, validity, not_before)
        return Issued(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def _certificate(
        self,
        common_name: str,
        public_key: SitePublicKey,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
        validity: datetime.timedelta | None,
        not_before: datetime.datetime | None,
    ) -> x509.Certificate:
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        end = min(start + (validity or self._validity), self.certificate.not_valid_after_utc)
        if end <= start:
            raise CaError(f"the CA certificate expired on {self.certificate.not_valid_after_utc:%Y-%m-%d}")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256())


def make_request(name: str) -> tuple[bytes, bytes]:
    """A new private key (PKCS#8 PEM, ECDSA P-256) and a CSR (PEM) for it whose subject is ``CN=name``."""
    check_name(name)
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        request.public_bytes(serialization.Encoding.PEM),
    )


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
    fingerprint = hashlib.sha256(request.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    openfl_hash = hashlib.sha384(request.public_bytes(serialization.Encoding.PEM)).hexdigest()
    return SigningRequest(common_name, public_key, _colons(fingerprint), openfl_hash)


@dataclass(frozen=True)
class FederationPki:
    """Where :func:`write_federation_pki` put everything."""

    root: Path
    ca_certificate: Path
    aggregator_dir: Path
    collaborator_dirs: dict[str, Path]
    kubernetes_secret: Path
    openfl_cert_dir: Path


def write_federation_pki(
    directory: Path,
    collaborators: Sequence[str],
    hosts: Sequence[str],
    observers: Sequence[str] = (),
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    secret_name: str = "fedagg-tls",
) -> FederationPki:
    """Create a CA, an aggregator certificate for ``hosts`` and client certificates, in every layout.

    * ``ca/ca.crt``, ``ca/ca.key``: the authority (keep the key safe; it signs new collaborators).
    * ``aggregator/{tls.crt,tls.key,ca.crt}``: a ``kubernetes.io/tls`` secret's files (fedagg's default layout).
    * ``collaborators/<name>/{tls.crt,tls.key,ca.crt}``: one directory per collaborator or observer.
    * ``kubernetes/<secret_name>.yaml``: the aggregator's Secret manifest.
    * ``openfl/cert/``: OpenFL's layout (``cert_chain.crt``, ``server/agg_<host>.*``, ``client/col_<name>.*``).

    Names and hosts are checked first (:class:`InvalidName`), before anything is written.
    """
    check_names([*collaborators, *observers])
    for host in hosts:
        check_host(host)
    check_secret_name(secret_name)
    authority = CertificateAuthority("fedagg federation CA", validity)
    server = authority.issue_server("fedagg aggregator", hosts, validity)
    ca_pem = authority.certificate_pem
    _write(directory / "ca" / "ca.crt", ca_pem)
    _write(directory / "ca" / "ca.key", authority.private_key_pem, secret=True)
    aggregator_dir = directory / "aggregator"
    _write_tls_dir(aggregator_dir, server, ca_pem)
    openfl = directory / "openfl" / "cert"
    _write(openfl / "cert_chain.crt", ca_pem)
    for host in hosts:
        _write(openfl / "server" / f"agg_{host}.crt", server.certificate_pem)
        _write(openfl / "server" / f"agg_{host}.key", server.private_key_pem, secret=True)
    collaborator_dirs = {
        name: _write_client(directory, authority, name, validity) for name in [*collaborators, *observers]
    }
    secret = directory / "kubernetes" / f"{secret_name}.yaml"
    _write(secret, _secret_manifest(secret_name, server, ca_pem).encode(), secret=True)
    return FederationPki(
        directory, directory / "ca" / "ca.crt", aggregator_dir, collaborator_dirs, secret, openfl
    )


@dataclass(frozen=True)
class CaLocation:
    """An existing CA: ``root`` is the directory ``fedagg certs`` made, ``ca_dir`` holds ca.crt and ca.key."""

    root: Path
    ca_dir: Path

    @property
    def certificate(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def key(self) -> Path:
        return self.ca_dir / "ca.key"


def find_ca(path: Path) -> CaLocation:
    """The CA at ``path``: the ``--out`` directory of ``fedagg certs`` (``ca/`` inside) or its ``ca/`` itself."""
    if (path / "ca" / "ca.crt").is_file() and (path / "ca" / "ca.key").is_file():
        return CaLocation(path, path / "ca")
    if (path / "ca.crt").is_file() and (path / "ca.key").is_file():
        return CaLocation(path.parent, path)
    raise CaError(
        f"{path} holds no CA: expected {path / 'ca' / 'ca.crt'} and ca.key next to it "
        "(the --out directory of 'fedagg certs'), or ca.crt and ca.key in it"
    )


def load_authority(
    location: CaLocation, validity: datetime.timedelta = DEFAULT_VALIDITY
) -> CertificateAuthority:
    """The CA stored at ``location``."""
    try:
        return CertificateAuthority.load(
            location.certificate.read_bytes(), location.key.read_bytes(), validity
        )
    except OSError as error:
        raise CaError(f"cannot read {error.filename}: {error.strerror or error}") from None
    except CaError as error:
        raise CaError(f"{location.ca_dir}: {error}") from None


def add_to_federation_pki(
    ca: Path,
    collaborators: Sequence[str],
    observers: Sequence[str] = (),
    validity: datetime.timedelta = DEFAULT_VALIDITY,
) -> dict[str, Path]:
    """Certificates and keys for more sites from an existing CA, in :func:`write_federation_pki`'s layouts.

    ``ca`` is the directory ``fedagg certs`` made (or its ``ca/``). Writes ``collaborators/<name>/`` and
    ``openfl/cert/client/col_<name>.*`` under it for every name, and refuses (before writing anything)
    names that are invalid, given twice, or that already have a certificate there.
    """
    names = check_names([*collaborators, *observers])
    location = find_ca(ca)
    existing = {
        entry.name.lower(): entry for entry in (location.root / "collaborators").glob("*") if entry.is_dir()
    }
    for name in names:
        kind = "observer" if name in observers and name not in collaborators else "collaborator"
        taken = existing.get(name.lower())
        if taken is None:
            client = location.root / "openfl" / "cert" / "client" / f"col_{name}.crt"
            taken = client if client.exists() else None
        if taken is not None:
            raise InvalidName(
                kind,
                name,
                f"already has a certificate in {taken} (a new key for it: remove that first)",
                valid=True,
            )
    authority = load_authority(location, validity)
    return {name: _write_client(location.root, authority, name, validity) for name in names}


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
        _write(key, key_pem, secret=True, exclusive=True)
    except FileExistsError:
        raise OutputExists(
            f"{key} exists: this directory already has a private key; remove it or choose another directory"
        ) from None
    request = directory / f"{name}.csr"
    _write(request, request_pem)
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
    _write(directory / "tls.crt", certificate_pem)
    _write(directory / "ca.crt", authority.certificate_pem)
    return SignedFiles(
        checked.common_name,
        directory / "tls.crt",
        directory / "ca.crt",
        checked.fingerprint,
        checked.openfl_hash,
        certificate.not_valid_after_utc,
    )


def _write_client(
    root: Path, authority: CertificateAuthority, name: str, validity: datetime.timedelta
) -> Path:
    client = authority.issue_client(name, validity)
    directory = root / "collaborators" / name
    _write_tls_dir(directory, client, authority.certificate_pem)
    openfl = root / "openfl" / "cert"
    _write(openfl / "cert_chain.crt", authority.certificate_pem, keep=True)
    _write(openfl / "client" / f"col_{name}.crt", client.certificate_pem)
    _write(openfl / "client" / f"col_{name}.key", client.private_key_pem, secret=True)
    return directory


def _write_tls_dir(directory: Path, issued: Issued, ca_pem: bytes) -> None:
    _write(directory / "tls.crt", issued.certificate_pem)
    _write(directory / "tls.key", issued.private_key_pem, secret=True)
    _write(directory / "ca.crt", ca_pem)


def _write(
    path: Path, content: bytes, secret: bool = False, exclusive: bool = False, keep: bool = False
) -> None:
    """Write ``path``; a secret is mode 0600 even if the file existed; ``keep`` leaves an existing file."""
    if keep and path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        if secret:
            os.fchmod(file.fileno(), 0o600)
        file.write(content)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _colons(hexadecimal: str) -> str:
    return ":".join(hexadecimal[index : index + 2] for index in range(0, len(hexadecimal), 2))


def _secret_manifest(name: str, server: Issued, ca_pem: bytes) -> str:
    data = {
        key: base64.b64encode(value).decode()
        for key, value in (
            ("tls.crt", server.certificate_pem),
            ("tls.key", server.private_key_pem),
            ("ca.crt", ca_pem),
        )
    }
    import yaml  # noqa: PLC0415 (the CA holder's side only: a site needs cryptography alone, fedagg[site])

    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fedagg"}},
        "data": data,
    }
    return yaml.safe_dump(manifest, sort_keys=False)
