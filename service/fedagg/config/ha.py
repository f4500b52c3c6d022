"""The ``ha`` section: leader election between replicas that share one state directory.

The section's rules between its own keys (:func:`ha_errors`) are checked with the other cross-setting rules
(:mod:`fedagg.config.checks`). Environment overrides work as for every section: ``FEDAGG__HA__ENABLED=true``,
``FEDAGG__HA__IDENTITY=...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedagg.settings import ONE_DAY, SECONDS, ConfigError, Range, setting


class ElectionBackend(StrEnum):
    """Where the lease lives."""

    KUBERNETES = "kubernetes"
    ETCD = "etcd"


LEASE_SECONDS = Range(1, ONE_DAY, SECONDS)
ELECTION_SECONDS = Range(0, ONE_DAY, SECONDS, exclusive_minimum=True)


@dataclass(frozen=True)
class HaSettings:
    """A hot standby: replicas elect one leader on a lease; only the leader serves and writes the state."""

    enabled: bool = setting(
        False,
        help="elect a leader on a lease (besides the state-directory lock) and fence a leader that loses it",
    )
    backend: ElectionBackend = setting(
        ElectionBackend.KUBERNETES,
        help="kubernetes (a coordination.k8s.io/v1 Lease) or etcd (a key in etcd v3, for VMs outside Kubernetes)",
    )
    lease_name: str = setting("fedagg", help="the Lease's name (kubernetes) or the key's last part (etcd)")
    namespace: str = setting(
        "", help="the Lease's namespace; default env POD_NAMESPACE, else the service account's namespace"
    )
    identity: str = setting(
        "", help="this replica's name in the lease; default env POD_NAME, else the hostname"
    )
    etcd_endpoint: str = setting(
        "http://127.0.0.1:2379", help="etcd's v3 JSON gateway (backend etcd): http:// or https:// URL"
    )
    lease_seconds: int = setting(
        15,
        help="a standby takes the lease this long after it last saw the leader renew it",
        check=LEASE_SECONDS,
    )
    renew_deadline_seconds: float = setting(
        10.0,
        help="a leader that has not renewed for this long stops serving and writing, then exits (below "
        "ha.lease_seconds)",
        check=ELECTION_SECONDS,
    )
    retry_seconds: float = setting(
        2.0, help="between renewals, and between a standby's attempts", check=ELECTION_SECONDS
    )


def ha_errors(settings: HaSettings) -> list[ConfigError]:
    """The cross-checks of the section: the timings must leave the old leader time to stop before a takeover."""
    errors = []
    if settings.renew_deadline_seconds >= settings.lease_seconds:
        errors.append(
            ConfigError(
                "ha.renew_deadline_seconds",
                settings.renew_deadline_seconds,
                f"less than ha.lease_seconds ({settings.lease_seconds}), so a leader that cannot renew stops "
                "before a standby may take over",
            )
        )
    if settings.retry_seconds >= settings.renew_deadline_seconds:
        errors.append(
            ConfigError(
                "ha.retry_seconds",
                settings.retry_seconds,
                f"less than ha.renew_deadline_seconds ({settings.renew_deadline_seconds}), so a leader retries "
                "before its deadline",
            )
        )
    if settings.enabled and not settings.lease_name.strip():
        errors.append(ConfigError("ha.lease_name", settings.lease_name, "a non-empty name"))
    etcd = settings.enabled and settings.backend == ElectionBackend.ETCD
    if etcd and not settings.etcd_endpoint.startswith(("http://", "https://")):
        errors.append(ConfigError("ha.etcd_endpoint", settings.etcd_endpoint, "an http:// or https:// URL"))
    return errors
