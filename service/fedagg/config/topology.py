"""The ``topology`` section: one pod (``standalone``), or a scale-out tier of a ``root`` and ``ingest`` replicas.

Which aggregation methods a tier can compute exactly is decided here, once, at config check: a method whose
aggregate is a function of per-replica partial sums (float64 weighted sums and weights) is exact; the others
would need every contribution at one place and are refused in the tier (forwarding them is not built yet).
Server-side differential privacy around an exact method is exact too: the replicas clip each contribution before
they fold it, and the root adds the noise once (the adaptive optimizers take no privacy anywhere); so is clipping
alone (``clipping_norm``), but not both together (that clips twice).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedagg.server.tls import CertificateFiles
from fedagg.settings import TIMEOUT, port_number, setting


class Role(StrEnum):
    """What this process is in the federation."""

    STANDALONE = "standalone"
    ROOT = "root"
    INGEST = "ingest"


PARTIAL_SUM_METHODS = frozenset({"weighted_average", "fedcurv_weighted_average", "adagrad", "adam", "yogi"})
"""Methods whose aggregate is exact from partial sums (sum of w_i x_i and sum of w_i per tensor)."""

WHY_NOT_PARTIAL = {
    "median": "a median needs every contribution's values at once, not their sum",
    "trimmed_mean": "trimming needs every contribution's values sorted per element, not their sum",
    "krum": "Krum scores each contribution by its distances to the others, which sums do not keep",
    "multi_krum": "Multi-Krum scores each contribution by its distances to the others, which sums do not keep",
    "bulyan": "Bulyan selects and trims contributions by their pairwise distances, which sums do not keep",
    "geometric_median": "the geometric median iterates over every contribution, which sums do not keep",
}
"""Why each robust built-in method cannot be computed from partial sums."""


def _replica_names(names: tuple[str, ...]) -> str | None:
    if any(not name.strip() for name in names):
        return "a list of non-empty replica names (their client certificates' CNs)"
    if len(set(names)) != len(names):
        return "a list of distinct replica names"
    return None


def default_replica_name() -> str:
    """The ingest replica's name when ``topology.replica`` is empty: env POD_NAME, else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


@dataclass(frozen=True)
class TopologySettings:
    """The scale-out tier (README, Scale-out tier)."""

    role: Role = setting(
        Role.STANDALONE, help="standalone (one pod), root (owns rounds and the model) or ingest (a replica)"
    )
    root_address: str = setting("", help="ingest: host:port of the root's tier port (required for ingest)")
    replica: str = setting(
        "", help="ingest: this replica's name, its certificate's CN; default env POD_NAME, else the host name"
    )
    tier_port: int = setting(
        50054,
        help="root: the mTLS port the ingest replicas call (0 = any free port); not the metrics port 50053",
        check=port_number,
    )
    tier_bind_address: str = setting("[::]", help="root: tier port listen address")
    replicas: tuple[str, ...] = setting(
        (), help="root: the ingest replicas it accepts (their client certificates' CNs)", check=_replica_names
    )
    tier_certificate_dir: Path | None = setting(
        None,
        help="the tier's mTLS files (tls.crt, tls.key, ca.crt): at the root, its server certificate and the CA of "
        "the replicas' (default: server.tls.certificate_dir); at an ingest replica, required, in its subdirectory "
        "named after the replica: its client certificate (CN = its name) and the CA of the root's",
    )
    lost_replica_seconds: float = setting(
        300.0,
        help="root: a replica silent this long (no round-notice stream open) is lost: the collaborators whose work "
        "it holds become stragglers",
        check=TIMEOUT,
    )

    def tier_files(self, server_certificate_dir: Path | None) -> CertificateFiles:
        """The tier's three certificate files: the root's in ``tier_certificate_dir`` (else
        ``server_certificate_dir``), an ingest replica's in its subdirectory of ``tier_certificate_dir``."""
        base = self.tier_certificate_dir or server_certificate_dir or Path()
        if self.role == Role.INGEST:
            base = base / self.replica_name
        return CertificateFiles(base / "tls.crt", base / "tls.key", base / "ca.crt")

    @property
    def replica_name(self) -> str:
        """This ingest replica's name (``replica``, or its default)."""
        return self.replica or default_replica_name()
