"""Certificate signing requests of any shape (``make_request`` only makes valid ones) and what the PKI tests
compare: public keys and the files under a directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

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
