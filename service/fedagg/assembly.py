"""Assembly: build the aggregator process from a :class:`~fedagg.config.Config` (every part, configured and wired;
nothing started), and check the files a configuration names (``fedagg config check``)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from kubernetes import client as k8s
from prometheus_client import (
    CollectorRegistry,
)

from fedagg.config.ha import ElectionBackend, HaSettings
from fedagg.config.operations import KubernetesHookMode
from fedagg.config.schema import Config
from fedagg.config.topology import Role
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.integrity import FileDigest, digest_of
from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.federation.store import StateStore
from fedagg.ops.election import ElectionTiming
from fedagg.ops.etcd_lease import EtcdLeaseRecords
from fedagg.ops.hooks import CommandHook, ShutdownHook
from fedagg.ops.kube import (
    KubernetesHook,
    in_cluster_configuration,
    pod_identity,
    record_pod_event,
    running_in_cluster,
)
from fedagg.ops.kube_lease import KubernetesLeaseRecords
from fedagg.ops.leader_metrics import LeaderMetrics
from fedagg.ops.leadership import EVENT_TIMEOUT_SECONDS, Leadership
from fedagg.ops.lease import LeaseRecord, LeaseRecords
from fedagg.ops.metrics import FederationMetrics
from fedagg.ops.readiness import Readiness
from fedagg.ops.state_metrics import FederationStateCollector
from fedagg.ops.tier_metrics import TierMetrics
from fedagg.process_parts import certificate_source, new_registry, server_keywords, unusable_certificates
from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES, TensorTooLarge, check_tensors_fit
from fedagg.protocol.model_file import LoadedModel, ModelFileError, read_model
from fedagg.server.handlers import SERVICE_NAME
from fedagg.server.health import HealthReporter
from fedagg.server.interceptors import GrpcServerMetrics
from fedagg.server.options import Register
from fedagg.server.servicer import AggregatorGRPCServer
from fedagg.server.tls import CertificateError, TlsMode, load_bundle
from fedagg.settings import ConfigError
from fedagg.tier.root_process import RootTier, root_connection_limits

log = logging.getLogger(__name__)


@dataclass
class AggregatorProcess:
    """The aggregator process: everything a configured `fedagg serve` is made of (not an aggregation method)."""

    config: Config
    federation: Federation
    server: AggregatorGRPCServer
    health: HealthReporter
    registry: CollectorRegistry
    metrics: FederationMetrics
    hooks: list[ShutdownHook]
    grpc_metrics: GrpcServerMetrics
    readiness: Readiness
    ops_port: int = 0
    metrics_port: int = 0
    draining: bool = False
    state_lock: StateDirectoryLock | None = field(default=None, repr=False)
    leadership: Leadership | None = field(default=None, repr=False)
    ops_server: grpc.aio.Server | None = field(default=None, repr=False)
    metrics_http: tuple[WSGIServer, Thread] | None = field(default=None, repr=False)
    root: RootTier | None = field(default=None, repr=False)
    """A tier root's claims, partials and Tier service (``topology.role: root``)."""
    ops_services: list[Register] = field(default_factory=list)
    """Services the ops port serves besides health, reflection and leadership (a root's tier report)."""


def build_aggregator(
    config: Config, kubernetes: Callable[[], k8s.Configuration] = in_cluster_configuration
) -> AggregatorProcess:
    """Create everything the configuration describes; file problems raise :class:`ConfigError` naming the key."""
    topology = config.topology
    if topology.role == Role.INGEST:
        raise ConfigError(
            "topology.role", topology.role.value, "standalone or root (fedagg.ingest_process runs ingest)"
        )
    registry = new_registry()
    plan = config.plan()
    metrics = FederationMetrics(
        registry, per_collaborator=config.ops.per_collaborator_metrics, tasks=plan.tasks
    )
    store = _state_store(config)
    root = None
    if topology.role == Role.ROOT:
        root = RootTier(config.storage.state_dir, topology, plan.aggregation_bytes, TierMetrics(registry))
    federation = Federation(
        plan,
        store,
        ModelOutputs(config.best_model_path, config.last_model_path),
        initial_model=_initial_model(config),
        initial_model_digest=_initial_model_digest(config),
        listener=metrics,
        collector=None if root is None else root.rounds,
    )
    health = HealthReporter()
    grpc_metrics = GrpcServerMetrics(registry)
    server_settings = config.server
    tls = server_settings.tls
    extra_services: list[Register] = [lambda grpc_server: health.register(grpc_server, [SERVICE_NAME])]
    if root is not None:
        extra_services.append(root.registration(federation, store))
    keywords = server_keywords(config, metrics, grpc_metrics, extra_services)
    if root is not None:
        keywords["connection_limits"] = root_connection_limits(
            config.server.connection_limits, len(plan.collaborators)
        )
    server = AggregatorGRPCServer(
        federation,
        server_settings.port if root is None else topology.tier_port,
        use_tls=root is not None or tls.mode != TlsMode.INSECURE,
        require_client_auth=root is not None or tls.mode == TlsMode.MUTUAL,
        bind_address=server_settings.bind_address if root is None else topology.tier_bind_address,
        certificate_source=certificate_source(config, metrics),
        replicas=topology.replicas if root is not None else (),
        **keywords,
    )
    hooks = _hooks(config, kubernetes)
    for hook in hooks:
        metrics.hook_configured(hook.name)
    leadership = leadership_from_config(config.ha, registry, kubernetes)
    readiness = Readiness(
        health, lambda: federation.health.healthy and not (leadership is not None and leadership.lost)
    )
    aggregator = AggregatorProcess(
        config,
        federation,
        server,
        health,
        registry,
        metrics,
        hooks,
        grpc_metrics,
        readiness,
        state_lock=StateDirectoryLock(config.storage.state_dir),
        leadership=leadership,
        root=root,
        ops_services=[] if root is None else [root.report_registration(federation)],
    )
    registry.register(
        FederationStateCollector(federation.describe, lambda: aggregator.draining, config.storage.state_dir)
    )
    return aggregator


def check_files(config: Config) -> None:
    """Check every file the configuration names, without creating anything (``fedagg config check``)."""
    state_dir = config.storage.state_dir
    existing = next(path for path in (state_dir, *state_dir.parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            "storage.state_dir", str(state_dir), f"a writable directory ({existing} is not writable)"
        )
    if config.topology.role != Role.INGEST:
        _initial_model(config)
    tls, topology = config.server.tls, config.topology
    if tls.mode != TlsMode.INSECURE and topology.role != Role.ROOT:
        try:
            load_bundle(tls.files())
        except CertificateError as error:
            raise unusable_certificates(config, error) from None
    if topology.role != Role.STANDALONE:
        try:
            load_bundle(topology.tier_files(tls.certificate_dir))
        except CertificateError as error:
            raise unusable_certificates(config, error, tier=True) from None


def _state_store(config: Config) -> StateStore:
    state_dir = config.storage.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        return StateStore(state_dir)
    except OSError as error:
        raise ConfigError(
            "storage.state_dir", str(state_dir), f"a writable directory ({error.strerror})"
        ) from None


def _initial_model_digest(config: Config) -> FileDigest | None:
    """The configured initial model file's digest, to notice a model that changed under a running federation."""
    path = config.federation.initial_model
    try:
        return None if path is None or not path.is_file() else digest_of(path)
    except OSError:
        return None


def _initial_model(config: Config) -> LoadedModel | None:
    if (config.storage.state_dir / "checkpoint.json").is_file():
        return None
    path = config.federation.initial_model
    if path is None:
        raise ConfigError(
            "federation.initial_model", None, "an OpenFL .pbuf model (the state directory is empty)"
        )
    try:
        model = read_model(path)
    except ModelFileError as error:
        raise ConfigError(
            "federation.initial_model", str(path), f"a readable OpenFL model file ({error})"
        ) from None
    try:
        check_tensors_fit(
            {name: values.shape for name, values in model.tensors.items()}, MAX_SEND_MESSAGE_BYTES, "gRPC"
        )
    except TensorTooLarge as error:
        raise ConfigError(
            "federation.initial_model", str(path), f"a model whose every tensor fits in one reply ({error})"
        ) from None
    return model


def _hooks(config: Config, kubernetes: Callable[[], k8s.Configuration]) -> list[ShutdownHook]:
    hooks: list[ShutdownHook] = []
    settings = config.hooks.kubernetes
    wanted = settings.enabled == KubernetesHookMode.ENABLED or (
        settings.enabled == KubernetesHookMode.AUTO and running_in_cluster()
    )
    if wanted:
        pod, namespace = pod_identity(settings.pod_name, settings.namespace)
        if pod and namespace:
            hooks.append(KubernetesHook(pod, namespace, settings.timeout_seconds, kubernetes))
        elif settings.enabled == KubernetesHookMode.ENABLED:
            raise ConfigError(
                "hooks.kubernetes.pod_name",
                settings.pod_name,
                "the pod's name and namespace (or env POD_NAME and POD_NAMESPACE)",
            )
        else:
            log.warning("Kubernetes hook skipped: POD_NAME/POD_NAMESPACE are not set (downward API)")
    if config.hooks.command:
        hooks.append(CommandHook(config.hooks.command, config.hooks.command_timeout_seconds))
    return hooks


def leadership_from_config(
    settings: HaSettings, registry: CollectorRegistry, kubernetes: Callable[[], k8s.Configuration]
) -> Leadership | None:
    """The configured leadership, or None when ``ha.enabled`` is false. Raises ConfigError naming the key."""
    if not settings.enabled:
        return None
    pod, namespace = pod_identity("", settings.namespace)
    identity = settings.identity or pod or f"{socket.gethostname()}-{os.getpid()}"
    records: LeaseRecords
    if settings.backend == ElectionBackend.KUBERNETES:
        if not namespace:
            raise ConfigError(
                "ha.namespace",
                settings.namespace,
                "the Lease's namespace (or env POD_NAMESPACE, or run in a pod)",
            )
        records = KubernetesLeaseRecords(settings.lease_name, namespace, kubernetes)
    else:
        records = EtcdLeaseRecords(settings.lease_name, settings.etcd_endpoint)
    timing = ElectionTiming(settings.lease_seconds, settings.renew_deadline_seconds, settings.retry_seconds)
    leadership = Leadership(records, identity, timing, LeaderMetrics(registry, identity))
    if pod and namespace and running_in_cluster():
        leadership.announce = _takeover_event(kubernetes, pod, namespace, records.description)
    return leadership


def _takeover_event(
    kubernetes: Callable[[], k8s.Configuration], pod: str, namespace: str, lease: str
) -> Callable[[LeaseRecord], None]:
    def announce(record: LeaseRecord) -> None:
        message = (
            f"{record.holder} leads (took {lease}, transition {record.transitions}); restoring the state"
        )
        try:
            record_pod_event(kubernetes, pod, namespace, "LeaderElected", message, EVENT_TIMEOUT_SECONDS)
        except Exception as error:
            log.warning("could not record the takeover Event on %s/%s: %s", namespace, pod, error)

    return announce
