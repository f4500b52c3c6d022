"""fedagg's configuration: one YAML file, environment overrides, validated at start-up.

Relative paths are resolved against the configuration file's directory. Any setting can be overridden from
the environment as ``FEDAGG__<SECTION>__<KEY>`` (for example ``FEDAGG__STORAGE__STATE_DIR=/var/lib/fedagg``
or ``FEDAGG__SERVER__TLS__CERTIFICATE_DIR=/etc/fedagg/tls``); values are read as YAML scalars.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedagg.bounded_yaml import parse_yaml, read_yaml
from fedagg.federation.errors import PlanError
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.plan import (
    CUTOFF_SECONDS,
    EVALUATION_GROUP,
    PERCENT_NEEDED,
    ROUNDS_KEPT,
    ROUNDS_TO_TRAIN,
    SLEEP_SECONDS,
    AggregationSpec,
    AssignerKind,
    AssignerSpec,
    FederationPlan,
    StragglerPolicyKind,
    StragglerPolicySpec,
    TaskGroup,
    TaskSpec,
    UploadLimits,
    default_tasks,
    select_task_group,
)
from fedagg.ha_settings import HaSettings, ha_errors
from fedagg.server.options import CallerLimits, ConnectionLimits
from fedagg.server.tls import CertificateFiles, TlsMode
from fedagg.settings import (
    BYTES,
    DURATION,
    INT32_MAX,
    INT32_MAX_MILLISECONDS,
    MESSAGE_BYTES,
    NON_NEGATIVE,
    ONE_TIB,
    POSITIVE,
    SECONDS,
    SHARE,
    STORED_BYTES,
    TIMEOUT,
    ConfigError,
    Range,
    Written,
    build,
    gathered,
    non_empty,
    plain,
    port_number,
    setting,
)

ENV_PREFIX = "FEDAGG__"


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: str) -> str | None:
    return None if value.lower() in LOG_LEVELS else f"one of {list(LOG_LEVELS)}"


class LogFormat(StrEnum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class PrivacySettings:
    """Server-side differential privacy of a task's aggregate (as Flower's DifferentialPrivacyServerSide*)."""

    noise_multiplier: float = setting(
        help="z: the noise's standard deviation is z x the method's sensitivity share x clipping norm (README, "
        "Differential privacy)",
        check=NON_NEGATIVE,
    )
    clipping_norm: float = setting(
        help="C: each update's norm is clipped to it (the initial C when adaptive)", check=POSITIVE
    )
    adaptive: bool = setting(False, help="adapt C to a quantile of the update norms (Andrew et al.)")
    target_clipped_quantile: float = setting(
        0.5, help="adaptive: the share of updates that should be clipped", check=SHARE
    )
    clip_norm_lr: float = setting(0.2, help="adaptive: how fast C moves", check=NON_NEGATIVE)
    clipped_count_stddev: float | None = setting(
        None, help="adaptive: noise of the clipped count (null: contributors / 20)", check=NON_NEGATIVE
    )
    delta: float = setting(
        1e-5, help="the delta of the reported epsilon", check=Range(0, 1, exclusive_minimum=True)
    )
    flower_compatible: bool = setting(
        False, help="reproduce Flower's adaptive clipping exactly (its update direction; see the README)"
    )


@dataclass(frozen=True)
class TaskSettings:
    """One plan task."""

    function: str = setting(help="collaborator-side function (OpenFL task runner method)", check=non_empty)
    kwargs: dict[str, Any] = setting(
        factory=dict, help="arguments passed to the function (e.g. apply: local)"
    )
    aggregation: str = setting(
        "weighted_average",
        help="how model updates combine: weighted_average, median, trimmed_mean, krum, multi_krum, bulyan, "
        "geometric_median, fedcurv_weighted_average, adagrad, adam, yogi, or a plug-in's class path",
        check=non_empty,
    )
    aggregation_settings: dict[str, Any] = setting(
        factory=dict, help="the method's settings (e.g. malicious: 1 for krum; learning_rate for adam)"
    )
    clipping_norm: float | None = setting(
        None,
        help="clip each collaborator's update (relative to the global model) to this norm first",
        check=POSITIVE,
    )
    privacy: PrivacySettings | None = setting(None, help="server-side differential privacy (null: none)")


@dataclass(frozen=True)
class TaskGroupSettings:
    """A group of collaborators running the same tasks."""

    name: str = setting(help="group name", check=non_empty)
    tasks: tuple[str, ...] = setting(help="tasks the group runs, in execution order")
    collaborators: tuple[str, ...] = setting((), help="members (static_grouped assigner)")
    percentage: float = setting(0.0, help="share of collaborators (random_grouped assigner)", check=SHARE)


@dataclass(frozen=True)
class AssignerSettings:
    """Task assignment."""

    kind: AssignerKind = setting(AssignerKind.RANDOM_GROUPED, help="static_grouped or random_grouped")
    seed: int = setting(
        0,
        help="seed of random grouping (the same round always gets the same groups)",
        check=Range(0, 2**64 - 1, "an integer"),
    )
    task_groups: tuple[TaskGroupSettings, ...] = setting(
        (), help="groups; default: one group 'learning' (100%) running every task"
    )


@dataclass(frozen=True)
class StragglerSettings:
    """When a round may close before every collaborator is done."""

    policy: StragglerPolicyKind = setting(StragglerPolicyKind.CUTOFF_TIME, help="cutoff_time or percentage")
    cutoff_seconds: float = setting(
        math.inf, help="cutoff_time: seconds after a round starts", check=CUTOFF_SECONDS
    )
    minimum_reporting: int = setting(
        1, help="never close a round with fewer collaborators done", check=Range(1, INT32_MAX, "an integer")
    )
    percent_needed: float = setting(
        1.0, help="percentage: share of collaborators that must be done", check=PERCENT_NEEDED
    )


@dataclass(frozen=True)
class FederationSettings:
    """The experiment."""

    federation_uuid: str = setting(help="federation identity every request header carries", check=non_empty)
    collaborators: tuple[str, ...] = setting(help="authorized collaborator names (their certificate CNs)")
    rounds_to_train: int = setting(help="number of rounds", check=ROUNDS_TO_TRAIN)
    aggregator_uuid: str = setting("", help="aggregator identity; default 'aggregator_' + federation_uuid")
    experiment_name: str = setting("", help="name observers use; default the federation_uuid")
    initial_model: Path | None = setting(None, help="OpenFL .pbuf model to start from (not needed to resume)")
    single_col_cert_common_name: str = setting("", help="CN of a certificate shared by all collaborators")
    sleep_seconds: int = setting(
        10, help="how long GetTasks tells idle collaborators to sleep", check=SLEEP_SECONDS
    )
    rounds_kept: int = setting(
        2, help="global models kept for serving (>= 2 for delta requests)", check=ROUNDS_KEPT
    )
    tasks: dict[str, TaskSettings] = setting(factory=dict, help="plan tasks; default OpenFL's three")
    task_group: str = setting(
        "",
        help="run only this task group, for every collaborator (OpenFL 1.9's selected_task_group); "
        "'evaluation' validates the initial model in one round and publishes no model",
    )
    assigner: AssignerSettings = setting(factory=AssignerSettings, help="")
    stragglers: StragglerSettings = setting(factory=StragglerSettings, help="")


@dataclass(frozen=True)
class TlsSettings:
    """Federation-port TLS. Certificates come from a directory (a mounted kubernetes.io/tls secret)."""

    mode: TlsMode = setting(TlsMode.MUTUAL, help="mtls, tls (server-only) or insecure (plaintext, warned)")
    certificate_dir: Path | None = setting(None, help="directory holding the three files below")
    certificate: str = setting(
        "tls.crt", help="server certificate chain (file name in the directory or a path)"
    )
    private_key: str = setting("tls.key", help="server private key (file name or path)")
    root_certificate: str = setting(
        "ca.crt", help="CA that signs collaborator certificates (file name or path)"
    )

    def files(self) -> CertificateFiles:
        """The three resolved paths."""
        base = self.certificate_dir or Path()
        root = (
            None
            if self.mode == TlsMode.SERVER_ONLY and not self.root_certificate
            else base / self.root_certificate
        )
        return CertificateFiles(base / self.certificate, base / self.private_key, root)


@dataclass(frozen=True)
class ServerSettings:
    """The federation port."""

    bind_address: str = setting("[::]", help="listen address ([::] = every interface, IPv4 and IPv6)")
    port: int = setting(50051, help="federation port (0 = any free port)", check=port_number)
    tls: TlsSettings = setting(factory=TlsSettings, help="")
    observers: tuple[str, ...] = setting((), help="certificate CNs that may read metrics, models and status")
    auth_failure_max_delay: float = setting(
        2.0, help="max random delay before refusing a caller", check=Range(0, 60, SECONDS)
    )
    executor_workers: int = setting(
        4, help="threads for disk and encoding work", check=Range(1, 256, "an integer")
    )
    tasks_hold_seconds: float = setting(
        60.0,
        help="hold a GetTasks that would answer 'sleep' until the collaborator has work, at most this long "
        "(long poll: no idle wait between rounds); 0 answers 'sleep' at once, as OpenFL does",
        check=DURATION,
    )
    quit_redelivery_seconds: float = setting(
        120.0,
        help="after a restart, answer quit again for this long to collaborators whose quit job was recorded "
        "before it (a crash may have lost the reply) before stopping; 0 stops at once",
        check=DURATION,
    )
    max_connection_age_seconds: float = setting(
        900.0,
        help="close each collaborator connection after this long (it reconnects), so rotated or revoked "
        "certificates reach OpenFL 1.8/1.9 clients, which keep one connection; 0 = never",
        check=Range(1, INT32_MAX_MILLISECONDS, SECONDS, zero="never"),
    )
    max_connection_age_grace_seconds: float = setting(
        600.0,
        help="calls in flight on a closing connection get this long to finish",
        check=Range(0, INT32_MAX_MILLISECONDS, SECONDS),
    )
    max_receive_message_bytes: int = setting(
        4 << 20,
        help="largest incoming gRPC message (OpenFL sends uploads in 2 MiB chunks); "
        "bounds what is read before a caller is known",
        check=MESSAGE_BYTES,
    )
    stream_window_bytes: int = setting(
        4 << 20,
        help="HTTP/2 flow-control window of each call, fixed: bounds what gRPC buffers per upload (memory with "
        "many collaborators uploading at once); a stream moves at most this much per round trip (4 MiB: 40 MB/s "
        "at 100 ms). 0 = gRPC sizes it from the measured bandwidth-delay product (unbounded per upload)",
        check=Range(65535, INT32_MAX, BYTES, zero="automatic"),
    )
    caller_limits: CallerLimits = setting(
        factory=CallerLimits, help="what one caller may hold at once, and for how long"
    )
    connection_limits: ConnectionLimits = setting(
        factory=ConnectionLimits, help="connections to the federation port"
    )
    reply_bytes_in_flight: int = setting(
        32 << 20,
        help="tensor replies built and not yet delivered hold at most this many bytes together (gRPC keeps a "
        "second copy of each): memory while many collaborators download a large model at once; further "
        "downloads wait their turn (a larger tensor goes alone). 0 = unbounded",
        check=Range(0, ONE_TIB, BYTES),
    )


@dataclass(frozen=True)
class LimitsSettings:
    """What one upload may make the aggregator hold or store; exceeding a limit refuses the upload."""

    header_bytes: int = setting(
        64 << 10,
        help="bytes of an upload before its first tensor: all that is held before the sender is authenticated",
        check=MESSAGE_BYTES,
    )
    field_bytes: int = setting(
        16 << 10, help="longest name, tag or metadata entry of an uploaded tensor", check=MESSAGE_BYTES
    )
    tags_per_tensor: int = setting(
        32, help="most tags one uploaded tensor may carry", check=Range(1, 65535, "an integer")
    )
    descriptor_bytes: int = setting(
        4 << 20, help="all names, tags and shapes of one upload together", check=STORED_BYTES
    )
    tensors_per_upload: int = setting(
        16384,
        help="tensors (weights and metrics) in one upload: bounds the decoding work one upload causes",
        check=Range(1, INT32_MAX, "an integer"),
    )
    metrics_per_upload: int = setting(
        1024,
        help="metrics in one upload; an upload with more is rejected as content (metric_count)",
        check=Range(1, INT32_MAX, "an integer"),
    )
    metric_names_per_task: int = setting(
        256,
        help="distinct metric names (metric series) a task may report over the experiment, first come first "
        "served; values of other names are left out of the metric stream and aggregated metrics, and counted",
        check=Range(1, INT32_MAX, "an integer"),
    )
    upload_bytes: int | None = setting(
        None,
        help="largest upload (null: model size + extra_tensor_bytes + 16 MiB); a larger one is rejected",
        check=STORED_BYTES,
    )
    extra_tensor_bytes: int | None = setting(
        None,
        help="data of tensors that are not in the model (optimizer state) per upload, and what they may add to the "
        "model over the experiment (null: 2 x the initial model's size)",
        check=Range(0, ONE_TIB, BYTES),
    )
    aggregation_bytes: int = setting(
        64 << 20,
        help="memory a round end's aggregation holds for blocks of contributions: blocks shrink as "
        "contributions grow (at least 4096 values each)",
        check=STORED_BYTES,
    )


class AfterFinish(StrEnum):
    """What the aggregator does once every collaborator got its quit job and the hooks ran."""

    EXIT = "exit"
    STAY = "stay"


@dataclass(frozen=True)
class OpsSettings:
    """Operations: the plaintext health/reflection port, the Prometheus exporter, shutdown behaviour."""

    bind_address: str = setting("[::]", help="ops listen address (health and reflection, plaintext)")
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


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    federation: FederationSettings = setting(help="")
    server: ServerSettings = setting(factory=ServerSettings, help="")
    limits: LimitsSettings = setting(factory=LimitsSettings, help="")
    ops: OpsSettings = setting(factory=OpsSettings, help="")
    hooks: HooksSettings = setting(factory=HooksSettings, help="")
    storage: StorageSettings = setting(factory=StorageSettings, help="")
    logging: LoggingSettings = setting(factory=LoggingSettings, help="")
    ha: HaSettings = setting(factory=HaSettings, help="")  # fedagg.ha_settings

    @property
    def best_model_path(self) -> Path:
        """Where the best model is published."""
        return self.storage.best_model or self.storage.state_dir / "best.pbuf"

    @property
    def last_model_path(self) -> Path:
        """Where the last model is published."""
        return self.storage.last_model or self.storage.state_dir / "last.pbuf"

    def plan(self) -> FederationPlan:
        """The federation plan; plan errors are reported with their configuration keys."""
        settings = self.federation
        tasks = {
            name: TaskSpec(name, task.function, task.kwargs, _aggregation(task))
            for name, task in settings.tasks.items()
        } or default_tasks()
        groups = tuple(
            TaskGroup(group.name, group.tasks, group.collaborators, group.percentage)
            for group in settings.assigner.task_groups
        ) or (TaskGroup("learning", tuple(tasks), settings.collaborators, 1.0),)
        stragglers = settings.stragglers
        try:
            assigner = AssignerSpec(settings.assigner.kind, groups, settings.assigner.seed)
            evaluation = settings.task_group == EVALUATION_GROUP
            if settings.task_group:
                assigner = select_task_group(assigner, settings.task_group, settings.collaborators)
            plan = FederationPlan(
                federation_uuid=settings.federation_uuid,
                aggregator_uuid=settings.aggregator_uuid or f"aggregator_{settings.federation_uuid}",
                collaborators=settings.collaborators,
                rounds_to_train=1 if evaluation else settings.rounds_to_train,
                tasks=tasks,
                assigner=assigner,
                stragglers=StragglerPolicySpec(
                    stragglers.policy,
                    stragglers.cutoff_seconds,
                    stragglers.minimum_reporting,
                    stragglers.percent_needed,
                ),
                experiment_name=settings.experiment_name,
                single_col_cert_common_name=settings.single_col_cert_common_name,
                sleep_seconds=settings.sleep_seconds,
                rounds_kept=settings.rounds_kept,
                limits=UploadLimits(
                    self.limits.upload_bytes,
                    self.limits.extra_tensor_bytes,
                    self.limits.metrics_per_upload,
                    self.limits.metric_names_per_task,
                ),
                aggregation_bytes=self.limits.aggregation_bytes,
                evaluation=evaluation,
            )
            TaskAggregators(plan)  # every task's aggregation method and settings are usable
        except PlanError as error:
            raise ConfigError(f"federation.{error.key}", error.value, error.expected) from None
        return plan


def _aggregation(task: TaskSettings) -> AggregationSpec:
    privacy = None if task.privacy is None else asdict(task.privacy)
    return AggregationSpec(task.aggregation, task.aggregation_settings, task.clipping_norm, privacy)


def parse_config(data: object, base_dir: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from parsed YAML plus environment overrides; resolve relative paths."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            "(top level)",
            data,
            "a mapping of sections (federation, server, limits, ops, hooks, storage, logging, ha)",
        )
    merged = _with_environment(data or {}, environ or {})
    config: Config = _resolve_paths(build(Config, merged), base_dir)
    errors = [error for error in (_plan_error(config), _grace_error(config)) if error is not None]
    gathered([*errors, *_port_clashes(config), *ha_errors(config.ha)])
    return config


def _plan_error(config: Config) -> ConfigError | None:
    try:
        config.plan()
    except ConfigError as error:
        return error
    return None


def _grace_error(config: Config) -> ConfigError | None:
    if config.ops.drain_seconds < config.ops.grace_seconds:
        return None
    return ConfigError(
        "ops.drain_seconds",
        config.ops.drain_seconds,
        f"less than ops.grace_seconds ({config.ops.grace_seconds})",
    )


def _port_clashes(config: Config) -> list[ConfigError]:
    """Two listeners on one port (0, any free port, never clashes)."""
    ports = {
        "server.port": config.server.port,
        "ops.port": config.ops.port,
        "ops.metrics_port": config.ops.metrics_port,
    }
    errors: list[ConfigError] = []
    for index, (key, port) in enumerate(ports.items()):
        taken = [other for other, used in list(ports.items())[:index] if used == port and port]
        if taken:
            errors.append(
                ConfigError(key, port, f"a port other than {taken[0]}'s (two listeners cannot share it)")
            )
    return errors


def load_config(
    path: Path | None, environ: Mapping[str, str] | None = None, overlay: Mapping[str, Any] | None = None
) -> Config:
    """Read, override and validate a configuration file.

    ``overlay`` (an imported OpenFL workspace) supplies defaults that the file's own settings override.
    """
    data = {} if path is None else read_yaml(path, "the configuration", keep_text=True)
    if overlay:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError("(top level)", data, "a mapping of sections")
        data = _deep_merge(overlay, data or {})
    base_dir = path.parent if path is not None else Path.cwd()
    try:
        return parse_config(data, base_dir, os.environ if environ is None else environ)
    except ConfigError as error:
        raise (error if path is None else error.located(str(path))) from None


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_environment(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = _deep_copy(data)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not keys:
            continue
        target = merged
        for key in keys[:-1]:
            node = target.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(keys), raw, f"{key} to be a section (from environment {name})")
            target = node
        target[keys[-1]] = _from_environment(name, raw)
    return merged


def _from_environment(name: str, raw: str) -> object:
    """The YAML value of environment variable ``name``; a scalar remembers its text and the variable."""
    value = parse_yaml(raw, f"environment {name}", "a YAML value", keep_text=True) if raw else raw
    if isinstance(value, list | Mapping):
        return value
    return Written(plain(value), value.text if isinstance(value, Written) else str(value), name)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in data.items()}


def _resolve_paths(node: Any, base_dir: Path) -> Any:
    if not is_dataclass(node) or isinstance(node, type):
        return node
    changes: dict[str, Any] = {}
    for field in fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[field.name] = base_dir / value
        elif is_dataclass(value):
            changes[field.name] = _resolve_paths(value, base_dir)
    return replace(node, **changes)
