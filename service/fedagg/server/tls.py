"""Server certificates from files (a mounted ``kubernetes.io/tls`` secret or OpenFL's cert layout).

:class:`CertificateSource` validates the key pair and CA before gRPC ever sees them, and serves them through
``grpc.dynamic_ssl_server_credentials``: gRPC asks for the current configuration on each new handshake, the
source notices when the files changed (the kubelet swaps a secret's ``..data`` symlink atomically) and
switches to the new pair only if it is valid. A broken rotation keeps the old pair serving.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger(__name__)


class TlsMode(StrEnum):
    """How the federation port authenticates."""

    MUTUAL = "mtls"
    SERVER_ONLY = "tls"
    INSECURE = "insecure"

    @classmethod
    def of(cls, use_tls: bool, require_client_auth: bool) -> TlsMode:
        """The mode OpenFL's two flags select."""
        if not use_tls:
            return cls.INSECURE
        return cls.MUTUAL if require_client_auth else cls.SERVER_ONLY


class CertificateError(ValueError):
    """Certificate files that cannot serve: unreadable, mismatched, expired or malformed."""


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the server certificate chain, its private key and the CA that signs collaborators."""

    certificate: Path
    private_key: Path
    root_certificate: Path | None


@dataclass(frozen=True)
class CertificateBundle:
    """A validated server key pair (PEM) with its CA bundle and the facts operators watch."""

    certificate_pem: bytes
    private_key_pem: bytes
    root_pem: bytes | None
    not_after: datetime.datetime
    subject: str


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateError(f"cannot read {what} {path}: {error.strerror}") from None


def _public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_bundle(files: CertificateFiles, now: datetime.datetime | None = None) -> CertificateBundle:
    """Read and validate the files; raise :class:`CertificateError` with the reason."""
    certificate_pem = _read(files.certificate, "certificate")
    private_key_pem = _read(files.private_key, "private key")
    root_pem = _read(files.root_certificate, "CA certificate") if files.root_certificate else None
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError:
        raise CertificateError(f"{files.certificate} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{files.private_key} holds no unencrypted PEM private key") from None
    if root_pem is not None:
        try:
            x509.load_pem_x509_certificates(root_pem)
        except ValueError:
            raise CertificateError(f"{files.root_certificate} holds no PEM certificate") from None
    leaf = chain[0]
    if _public_der(key) != _public_der(leaf):
        raise CertificateError(f"the private key {files.private_key} does not match {files.certificate}")
    moment = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= moment:
        raise CertificateError(f"{files.certificate} expired at {leaf.not_valid_after_utc.isoformat()}")
    if leaf.not_valid_before_utc > moment:
        raise CertificateError(
            f"{files.certificate} is not valid before {leaf.not_valid_before_utc.isoformat()}"
        )
    return CertificateBundle(
        certificate_pem, private_key_pem, root_pem, leaf.not_valid_after_utc, leaf.subject.rfc4514_string()
    )


def _signature(files: CertificateFiles) -> tuple[tuple[int, int, int], ...]:
    paths = [files.certificate, files.private_key] + (
        [files.root_certificate] if files.root_certificate else []
    )
    signature = []
    for path in paths:
        try:
            stat = os.stat(path)  # follows the secret's symlinks
        except OSError:
            signature.append((0, 0, 0))
        else:
            signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


class CertificateSource:
    """The live server certificate, reloaded from its files when they change. Thread-safe.

    ``on_loaded(bundle)`` is called with every bundle that goes live and ``on_rejected(error)`` with every
    rotation that is refused; both run on whichever thread noticed the change. ``on_handshake()`` is called at the
    start of every TLS handshake (gRPC asks the fetcher of dynamic credentials for the configuration then, on its
    handshake thread): gRPC has no hook for a handshake's outcome, so this is what fedagg can count of them.
    """

    def __init__(
        self,
        files: CertificateFiles,
        require_client_auth: bool,
        on_loaded: Callable[[CertificateBundle], None] | None = None,
        on_rejected: Callable[[CertificateError], None] | None = None,
        on_handshake: Callable[[], None] | None = None,
    ) -> None:
        self.files = files
        self.require_client_auth = require_client_auth
        self._on_loaded = on_loaded or (lambda _bundle: None)
        self._on_rejected = on_rejected or (lambda _error: None)
        self._on_handshake = on_handshake or (lambda: None)
        # Guards _signature and bundle. Held while a changed pair is read (a few KiB), which happens on gRPC's
        # handshake thread, never on the event loop; no other lock is taken under it (lock order: leaf).
        self._lock = threading.Lock()
        self._signature = _signature(files)
        self.bundle = load_bundle(files)
        self._on_loaded(self.bundle)

    @classmethod
    def from_paths(
        cls,
        certificate: str | Path | None,
        private_key: str | Path | None,
        root_certificate: str | Path | None,
        require_client_auth: bool,
    ) -> CertificateSource:
        """A source from OpenFL's constructor arguments (PEM paths); ValueError when one it needs is missing."""
        if certificate is None or private_key is None:
            raise ValueError("TLS needs certificate and private_key (or use_tls=False)")
        if require_client_auth and root_certificate is None:
            raise ValueError("mutual TLS needs root_certificate, the CA that signs collaborator certificates")
        files = CertificateFiles(
            Path(certificate), Path(private_key), Path(root_certificate) if root_certificate else None
        )
        return cls(files, require_client_auth)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files."""
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)  # None keeps the current
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self.bundle),
            fetch,
            require_client_authentication=self.require_client_auth,
        )

    def refresh(self) -> bool:
        """Reload if the files changed; return True when a new bundle went live."""
        signature = _signature(self.files)
        with self._lock:
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                bundle = load_bundle(self.files)
            except CertificateError as error:
                log.error("certificate rotation refused, still serving %s: %s", self.bundle.subject, error)
                self._on_rejected(error)
                return False
            self.bundle = bundle
        log.info(
            "certificate rotated: now serving %s (expires %s)", bundle.subject, bundle.not_after.isoformat()
        )
        self._on_loaded(bundle)
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            self._on_handshake()
            if self.refresh():
                return self._configuration(self.bundle)
        except Exception:  # a fetcher that raises breaks the handshake; keep serving the old pair
            log.exception("certificate reload failed")
        return None

    @staticmethod
    def _configuration(bundle: CertificateBundle) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(bundle.private_key_pem, bundle.certificate_pem)], root_certificates=bundle.root_pem
        )
