"""Real certificates for tests: a CA, an aggregator certificate for localhost, collaborator certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedagg.collaborator import ClientTls
from fedagg.pki.authority import CertificateAuthority

SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    """Files of a test PKI. ``server_dir`` is laid out like a mounted kubernetes.io/tls secret."""

    root: Path
    server_dir: Path

    @property
    def ca(self) -> Path:
        return self.server_dir / "ca.crt"

    def client(self, name: str) -> ClientTls:
        """mTLS material of client ``name`` (signed by this PKI's CA unless issued otherwise)."""
        return ClientTls(self.ca, self.root / f"{name}.crt", self.root / f"{name}.key")


def write_issued(directory: Path, stem: str, certificate: bytes, key: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.crt").write_bytes(certificate)
    (directory / f"{stem}.key").write_bytes(key)


def make_pki(root: Path, clients: tuple[str, ...]) -> Pki:
    """A CA, a server certificate for localhost, and one client certificate per name."""
    ca = CertificateAuthority("fedagg test CA")
    server_dir = root / "server"
    issued = ca.issue_server("aggregator", SERVER_HOSTS)
    write_issued(server_dir, "tls", issued.certificate_pem, issued.private_key_pem)
    (server_dir / "ca.crt").write_bytes(ca.certificate_pem)
    for name in clients:
        client = ca.issue_client(name)
        write_issued(root, name, client.certificate_pem, client.private_key_pem)
    return Pki(root, server_dir)


def tls_options(tls: ClientTls) -> list[str]:
    """The ``--ca``, ``--cert`` and ``--key`` options naming ``tls``'s files (fedagg's CLI, the OpenFL scripts)."""
    return ["--ca", str(tls.root_certificate), "--cert", str(tls.certificate), "--key", str(tls.private_key)]
