"""The certificate authority: a new or stored CA that issues server and client certificates and signs CSRs."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedagg.pki.errors import CaError

if TYPE_CHECKING:
    from fedagg.pki.requests import SigningRequest

DEFAULT_VALIDITY = datetime.timedelta(days=365)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SitePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, both PEM-encoded."""

    certificate_pem: bytes
    private_key_pem: bytes


def pem_private_key(key: SigningKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (how every key fedagg makes is written)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def subject(common_name: str) -> x509.Name:
    """The distinguished name ``CN=common_name``: a certificate's or a CSR's only subject attribute."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """Signs server and client certificates."""

    def __init__(
        self, common_name: str = "fedagg CA", validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self._key: SigningKey = key
        self._validity = validity
        name = subject(common_name)
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
        return pem_private_key(self._key)

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
            pem_private_key(key),
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
            .subject_name(subject(common_name))
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


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
