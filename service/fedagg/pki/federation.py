"""A whole federation's certificates at once, made next to the CA, in fedagg's, Kubernetes' and OpenFL's layouts.

For a federation whose operator also hands out the keys; see :mod:`fedagg.pki.requests` for sites that keep
their own.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedagg.pki.authority import DEFAULT_VALIDITY, CertificateAuthority, Issued, find_ca, load_authority
from fedagg.pki.errors import InvalidName
from fedagg.pki.files import write_file
from fedagg.pki.names import check_host, check_names, check_secret_name


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
    write_file(directory / "ca" / "ca.crt", ca_pem)
    write_file(directory / "ca" / "ca.key", authority.private_key_pem, secret=True)
    aggregator_dir = directory / "aggregator"
    _write_tls_dir(aggregator_dir, server, ca_pem)
    openfl = directory / "openfl" / "cert"
    write_file(openfl / "cert_chain.crt", ca_pem)
    for host in hosts:
        write_file(openfl / "server" / f"agg_{host}.crt", server.certificate_pem)
        write_file(openfl / "server" / f"agg_{host}.key", server.private_key_pem, secret=True)
    collaborator_dirs = {
        name: _write_client(directory, authority, name, validity) for name in [*collaborators, *observers]
    }
    secret = directory / "kubernetes" / f"{secret_name}.yaml"
    write_file(secret, _secret_manifest(secret_name, server, ca_pem).encode(), secret=True)
    return FederationPki(
        directory, directory / "ca" / "ca.crt", aggregator_dir, collaborator_dirs, secret, openfl
    )


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


def _write_client(
    root: Path, authority: CertificateAuthority, name: str, validity: datetime.timedelta
) -> Path:
    client = authority.issue_client(name, validity)
    directory = root / "collaborators" / name
    _write_tls_dir(directory, client, authority.certificate_pem)
    openfl = root / "openfl" / "cert"
    write_file(openfl / "cert_chain.crt", authority.certificate_pem, keep=True)
    write_file(openfl / "client" / f"col_{name}.crt", client.certificate_pem)
    write_file(openfl / "client" / f"col_{name}.key", client.private_key_pem, secret=True)
    return directory


def _write_tls_dir(directory: Path, issued: Issued, ca_pem: bytes) -> None:
    write_file(directory / "tls.crt", issued.certificate_pem)
    write_file(directory / "tls.key", issued.private_key_pem, secret=True)
    write_file(directory / "ca.crt", ca_pem)


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
