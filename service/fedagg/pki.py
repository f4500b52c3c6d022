"""A throwaway certificate authority for federations: CA, aggregator and collaborator certificates.

Used by ``fedagg certs`` and ``fedagg demo``. Keys are ECDSA P-256; the aggregator certificate carries the
DNS names and IP addresses collaborators dial (OpenFL checks the SAN against the address it connects to),
and each collaborator certificate carries the collaborator's name as its CN, which is how fedagg and OpenFL
identify it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, both PEM-encoded."""

    certificate_pem: bytes
    private_key_pem: bytes


class CertificateAuthority:
    """Signs server and client certificates."""

    def __init__(
        self, common_name: str = "fedagg CA", validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._validity = validity
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )

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

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
        validity: datetime.timedelta | None,
        not_before: datetime.datetime | None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + (validity or self._validity))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return Issued(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )


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
    """
    authority = CertificateAuthority("fedagg federation CA", validity)
    server = authority.issue_server("fedagg aggregator", hosts, validity)
    ca_pem = authority.certificate_pem
    _write(directory / "ca" / "ca.crt", ca_pem)
    _write(directory / "ca" / "ca.key", authority.private_key_pem, secret=True)
    aggregator_dir = directory / "aggregator"
    _write_tls_dir(aggregator_dir, server, ca_pem)
    collaborator_dirs: dict[str, Path] = {}
    openfl = directory / "openfl" / "cert"
    _write(openfl / "cert_chain.crt", ca_pem)
    for host in hosts:
        _write(openfl / "server" / f"agg_{host}.crt", server.certificate_pem)
        _write(openfl / "server" / f"agg_{host}.key", server.private_key_pem, secret=True)
    for name in [*collaborators, *observers]:
        client = authority.issue_client(name, validity)
        collaborator_dirs[name] = directory / "collaborators" / name
        _write_tls_dir(collaborator_dirs[name], client, ca_pem)
        _write(openfl / "client" / f"col_{name}.crt", client.certificate_pem)
        _write(openfl / "client" / f"col_{name}.key", client.private_key_pem, secret=True)
    secret = directory / "kubernetes" / f"{secret_name}.yaml"
    _write(secret, _secret_manifest(secret_name, server, ca_pem).encode(), secret=True)
    return FederationPki(
        directory, directory / "ca" / "ca.crt", aggregator_dir, collaborator_dirs, secret, openfl
    )


def _write_tls_dir(directory: Path, issued: Issued, ca_pem: bytes) -> None:
    _write(directory / "tls.crt", issued.certificate_pem)
    _write(directory / "tls.key", issued.private_key_pem, secret=True)
    _write(directory / "ca.crt", ca_pem)


def _write(path: Path, content: bytes, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def _secret_manifest(name: str, server: Issued, ca_pem: bytes) -> str:
    data = {
        key: base64.b64encode(value).decode()
        for key, value in (
            ("tls.crt", server.certificate_pem),
            ("tls.key", server.private_key_pem),
            ("ca.crt", ca_pem),
        )
    }
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fedagg"}},
        "data": data,
    }
    return yaml.safe_dump(manifest, sort_keys=False)
