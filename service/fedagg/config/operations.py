"""The sections that run the aggregator: ``ops`` (ports, shutdown), ``hooks``, ``storage`` and ``logging``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedagg.settings import DURATION, TIMEOUT, Range, port_number, setting

LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: str) -> str | None:
    return None if value.lower() in LOG_LEVELS else f"one of {list(LOG_LEVELS)}"


class LogFormat(StrEnum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"


class AfterFinish(StrEnum):
    """What the aggregator does once every collaborator got its quit job and the hooks ran."""

    EXIT = "exit"
    STAY = "stay"


@dataclass(frozen=True)
class OpsSettings:
    """Operations: the plaintext health/reflection port, the Prometheus exporter, shutdown behaviour."""

    bind_address: str = setting(
        "[::]", help="ops listen address (health, reflection and leadership, plaintext)"
    )
    port: int = setting(
        50052, help="ops gRPC port for kubelet probes and grpcurl (0 = any free port)", check=port_number
    )
    metrics_bind_address: str = setting("[::]", help="Prometheus exporter listen address")
    metrics_port: int = setting(
        50053,
        help="Prometheus exporter port, serves /metrics (0 = any free port); outside 9100-9999, which the "
        "Prometheus project allocates to exporters, and not Prometheus' own 9090",
        check=port_number,
    )
    per_collaborator_metrics: bool = setting(
        False, help="add collaborator labels (one series per collaborator)"
    )
    drain_seconds: float = setting(
        5.0,
        help="on SIGTERM: seconds readiness is NOT_SERVING before new calls are "
        "refused (endpoint propagation)",
        check=DURATION,
    )
    grace_seconds: float = setting(
        25.0,
        help="on SIGTERM: the whole shutdown budget; keep it below the pod's terminationGracePeriodSeconds",
        check=TIMEOUT,
    )
    after_finish: AfterFinish = setting(
        AfterFinish.EXIT, help="exit, or stay up read-only (models, metrics, status)"
    )
    exit_code: int = setting(
        0, help="exit status after a completed experiment", check=Range(0, 255, "an exit status")
    )


class KubernetesHookMode(StrEnum):
    """Whether the Kubernetes shutdown hook runs."""

    AUTO = "auto"
    ENABLED = "true"
    DISABLED = "false"


@dataclass(frozen=True)
class KubernetesHookSettings:
    """The built-in hook: an Event on the aggregator's pod and completion annotations."""

    enabled: KubernetesHookMode = setting(
        KubernetesHookMode.AUTO, help="auto (inside a cluster), true or false"
    )
    pod_name: str = setting("", help="the aggregator's pod; default env POD_NAME (downward API)")
    namespace: str = setting("", help="its namespace; default env POD_NAMESPACE")
    timeout_seconds: float = setting(10.0, help="budget for all API calls of the hook", check=TIMEOUT)


@dataclass(frozen=True)
class HooksSettings:
    """What runs after the last quit job, in order: the Kubernetes hook, then the command."""

    kubernetes: KubernetesHookSettings = setting(factory=KubernetesHookSettings, help="")
    command: tuple[str, ...] = setting(
        (),
        help="argv run with FEDAGG_BEST_MODEL, FEDAGG_LAST_MODEL, "
        "FEDAGG_FINAL_ROUND, FEDAGG_STATE in its environment",
    )
    command_timeout_seconds: float = setting(60.0, help="the command is killed after this", check=TIMEOUT)


@dataclass(frozen=True)
class StorageSettings:
    """Durable state and published models."""

    state_dir: Path = setting(
        Path("/var/lib/fedagg"), help="checkpoints, kept models and spooled uploads (a PVC)"
    )
    best_model: Path | None = setting(None, help="best model .pbuf; default <state_dir>/best.pbuf")
    last_model: Path | None = setting(None, help="last model .pbuf; default <state_dir>/last.pbuf")
    failure_exit_seconds: float = setting(
        900.0,
        help="exit (status 75) when the state directory has refused writes this long, so Kubernetes "
        "restarts the pod; 0 = keep retrying",
        check=DURATION,
    )


@dataclass(frozen=True)
class LoggingSettings:
    """Logs."""

    level: str = setting("info", help="debug, info, warning or error", check=_log_level)
    format: LogFormat = setting(LogFormat.TEXT, help="text or json (one JSON object per line)")
