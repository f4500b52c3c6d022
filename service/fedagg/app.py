"""Wiring: build the aggregator from a :class:`~fedagg.config.Config` and run its whole life.

Start-up: the Prometheus exporter and the plaintext ops port (health, reflection) come up first, so the kubelet's
startup probe sees a live process while state is restored; readiness turns SERVING once the certificates are
loaded, the state is restored and the federation port listens (also on a finished state directory: readiness means
"route collaborators here", and a collaborator still owed its quit job must reach the pod). The run ends in one of two ways:

* every collaborator has its quit job: readiness goes NOT_SERVING (or stays SERVING in ``after_finish: stay``
  mode, where models, metrics and status stay readable), the shutdown hooks run, and the process exits with
  ``ops.exit_code``;
* SIGTERM/SIGINT: the server drains (:mod:`fedagg.ops.lifecycle`) and the process exits 0. SIGINT (Ctrl-C on a
  terminal; Kubernetes sends SIGTERM) skips ``ops.drain_seconds``, the wait for endpoints to notice. A second signal
  exits at once, saying so: every acknowledged upload is already on disk.

Either way the last line is a summary: rounds, the best metric, where the models are.

While the federation cannot make progress (its state directory refuses writes, or a round end waits for a retry)
readiness is NOT_SERVING; when the disk keeps refusing writes for ``storage.failure_exit_seconds`` the process
exits with status 75 so that Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from kubernetes import client as k8s
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from fedagg.config.loading import ENV_PREFIX
from fedagg.config.operations import AfterFinish, KubernetesHookMode
from fedagg.config.schema import Config
from fedagg.config.topology import NOT_SERVED, Role
from fedagg.federation.errors import FederationError
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.integrity import FileDigest, digest_of
from fedagg.federation.memory import MMAP_THRESHOLD_BYTES, map_large_buffers
from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.federation.store import StateStore
from fedagg.ops.hooks import CommandHook, Completion, ShutdownHook, run_hooks
from fedagg.ops.kube import KubernetesHook, in_cluster_configuration, pod_identity, running_in_cluster
from fedagg.ops.lifecycle import drain
from fedagg.ops.metrics import FederationMetrics, FederationStateCollector
from fedagg.ops.readiness import Readiness
from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES, TensorTooLarge, check_tensors_fit
from fedagg.protocol.model_file import LoadedModel, ModelFileError, read_model
from fedagg.server.handlers import SERVICE_NAME
from fedagg.server.health import HealthReporter
from fedagg.server.interceptors import GrpcServerMetrics, MetricsInterceptor
from fedagg.server.options import ReceiveLimits
from fedagg.server.servicer import AggregatorGRPCServer
from fedagg.server.tls import CertificateError, CertificateSource, TlsMode, load_bundle
from fedagg.settings import ConfigError

log = logging.getLogger(__name__)

FINISH_STOP_GRACE_SECONDS = 2.0
STORAGE_FAILURE_EXIT_CODE = 75  # EX_TEMPFAIL
STORAGE_WATCH_SECONDS = 5.0


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
    ops_server: grpc.aio.Server | None = field(default=None, repr=False)
    metrics_http: tuple[WSGIServer, Thread] | None = field(default=None, repr=False)


def build_aggregator(
    config: Config, kubernetes: Callable[[], k8s.Configuration] = in_cluster_configuration
) -> AggregatorProcess:
    """Create everything the configuration describes; file problems raise :class:`ConfigError` naming the key."""
    if config.topology.role != Role.STANDALONE:
        raise ConfigError("topology.role", config.topology.role.value, NOT_SERVED)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: twice the series for nothing
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    plan = config.plan()
    metrics = FederationMetrics(
        registry, per_collaborator=config.ops.per_collaborator_metrics, tasks=plan.tasks
    )
    federation = Federation(
        plan,
        _state_store(config),
        ModelOutputs(config.best_model_path, config.last_model_path),
        initial_model=_initial_model(config),
        initial_model_digest=_initial_model_digest(config),
        listener=metrics,
    )
    health = HealthReporter()
    grpc_metrics = GrpcServerMetrics(registry)
    server_settings = config.server
    tls = server_settings.tls
    server = AggregatorGRPCServer(
        federation,
        server_settings.port,
        use_tls=tls.mode != TlsMode.INSECURE,
        require_client_auth=tls.mode == TlsMode.MUTUAL,
        bind_address=server_settings.bind_address,
        certificate_source=_certificate_source(config, metrics),
        observers=server_settings.observers,
        auth_failure_max_delay=server_settings.auth_failure_max_delay,
        executor_workers=server_settings.executor_workers,
        max_receive_message_bytes=server_settings.max_receive_message_bytes,
        stream_window_bytes=server_settings.stream_window_bytes,
        reply_bytes_in_flight=server_settings.reply_bytes_in_flight,
        max_connection_age=server_settings.max_connection_age_seconds,
        tasks_hold_seconds=server_settings.tasks_hold_seconds,
        quit_redelivery_seconds=server_settings.quit_redelivery_seconds,
        max_connection_age_grace=server_settings.max_connection_age_grace_seconds,
        receive_limits=ReceiveLimits(
            config.limits.header_bytes,
            config.limits.field_bytes,
            config.limits.tags_per_tensor,
            config.limits.descriptor_bytes,
            config.limits.tensors_per_upload,
        ),
        caller_limits=server_settings.caller_limits,
        connection_limits=server_settings.connection_limits,
        interceptors=[MetricsInterceptor(grpc_metrics)],
        extra_services=[lambda grpc_server: health.register(grpc_server, [SERVICE_NAME])],
        observer=metrics,
    )
    hooks = _hooks(config, kubernetes)
    for hook in hooks:
        metrics.hook_configured(hook.name)
    readiness = Readiness(health, lambda: federation.health.healthy)
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
    _initial_model(config)
    tls = config.server.tls
    if tls.mode != TlsMode.INSECURE:
        try:
            load_bundle(tls.files())
        except CertificateError as error:
            raise ConfigError(
                "server.tls", str(tls.certificate_dir or "."), f"usable certificates ({error})"
            ) from None


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


def _certificate_source(config: Config, metrics: FederationMetrics) -> CertificateSource | None:
    tls = config.server.tls
    if tls.mode == TlsMode.INSECURE:
        return None
    try:
        return CertificateSource(
            tls.files(),
            tls.mode == TlsMode.MUTUAL,
            metrics.certificate_loaded,
            metrics.certificate_rejected,
            metrics.tls_handshake_started,
        )
    except CertificateError as error:
        raise ConfigError(
            "server.tls", str(tls.certificate_dir or "."), f"usable certificates ({error})"
        ) from None


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


async def run_aggregator(aggregator: AggregatorProcess, stop: asyncio.Event | None = None) -> int:
    """Serve the experiment to its end or until SIGTERM/SIGINT (or ``stop``); return the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if map_large_buffers():
        log.debug(
            "buffers of %d bytes or more get their own mappings (glibc mmap threshold)", MMAP_THRESHOLD_BYTES
        )
    signals = StopSignals(stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, signals.received, signum)
    await _start_ops(aggregator)
    try:
        try:
            if not await _lock_state_directory(aggregator, stop):
                return 0
            await loop.run_in_executor(None, aggregator.federation.restore)
        except (FederationError, ValueError, OSError) as error:
            log.error("cannot restore the federation state: %s", error)
            return 1
        if stop.is_set():  # stopped while restoring: never routable, nothing to drain
            log.info("stop signal received while restoring: exiting")
            return 0
        aggregator.federation.health.subscribe(aggregator.readiness.refresh_from_thread(loop))
        server_settings = aggregator.config.server
        with _binding("server.port", server_settings.port, server_settings.bind_address):
            await aggregator.server.start()
        if aggregator.federation.finished:
            log.info(
                "the experiment already finished (round %d): answering quit jobs until every collaborator has "
                "one (up to server.quit_redelivery_seconds for those recorded before this start)",
                aggregator.federation.round_number,
            )
        # Routable even when finished: a collaborator still owed its quit job must reach this pod.
        await aggregator.readiness.set_ready(True)
        status = await _serve_until_done(aggregator, signals)
        log.info("%s", summary(aggregator))
        return status
    finally:
        await _stop_ops(aggregator)
        if aggregator.state_lock is not None:
            aggregator.state_lock.release()


async def _lock_state_directory(aggregator: AggregatorProcess, stop: asyncio.Event) -> bool:
    """Wait until this process alone uses the state directory (a standby: blocked in the kernel's lock, so it
    takes over the moment the holder exits); False when stopped first."""
    lock = aggregator.state_lock
    loop = asyncio.get_running_loop()
    if lock is None or await loop.run_in_executor(None, lock.try_acquire):
        return True
    log.warning(
        "the state directory %s is in use by another fedagg process (%s); waiting for it to exit "
        "(two aggregators must not share storage.state_dir; a standby takes over when the holder exits)",
        aggregator.config.storage.state_dir,
        await loop.run_in_executor(None, lock.holder),
    )
    acquired = asyncio.Event()
    abandoned = threading.Event()

    def wait_for_lock() -> None:
        lock.acquire()
        if abandoned.is_set():  # the process stopped waiting: let go at once
            lock.release()
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(acquired.set)

    threading.Thread(target=wait_for_lock, name="fedagg-state-lock", daemon=True).start()
    waits = [asyncio.ensure_future(event.wait()) for event in (acquired, stop)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if acquired.is_set():
        log.info("the state directory is ours now: restoring")
        return True
    abandoned.set()
    log.info("stop signal received while waiting for the state directory: exiting")
    return False


@dataclass
class StopSignals:
    """SIGTERM and SIGINT as they arrive: the first sets ``stop`` (a drain), a second exits the process at once."""

    stop: asyncio.Event
    received_signals: list[int] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        """Whether the first was SIGINT (Ctrl-C on a terminal: no endpoints to wait for)."""
        return self.received_signals[:1] == [signal.SIGINT]

    def received(self, signum: int) -> None:
        """Handle one signal (on the event loop)."""
        self.received_signals.append(signum)
        if len(self.received_signals) == 1:
            self.stop.set()
            return
        log.warning(
            "%s again: exiting at once without draining (every acknowledged upload is on disk)",
            signal.Signals(signum).name,
        )
        logging.shutdown()
        os._exit(128 + signum)


def summary(aggregator: AggregatorProcess) -> str:
    """One line: rounds trained, the best aggregated metric, the model files."""
    federation, config = aggregator.federation, aggregator.config
    best = federation.best_score
    models = ", ".join(
        f"{name} {path}" if path.is_file() else f"{name} none yet"
        for name, path in (("best", config.best_model_path), ("last", config.last_model_path))
    )
    return (
        f"summary: {federation.round_number} of {federation.plan.rounds_to_train} rounds trained"
        f"{' (experiment complete)' if federation.finished else ''}; best validate_agg metric "
        f"{'none yet' if math.isinf(best) else f'{best:.6g}'}; models: {models}"
    )


async def _serve_until_done(aggregator: AggregatorProcess, signals: StopSignals) -> int:
    finished = asyncio.create_task(aggregator.server.wait_for_quit_jobs())
    stopped = asyncio.create_task(signals.stop.wait())
    disk = asyncio.create_task(_watch_storage(aggregator))
    await asyncio.wait({finished, stopped, disk}, return_when=asyncio.FIRST_COMPLETED)
    finished.cancel()
    if disk.done():
        stopped.cancel()
        await aggregator.readiness.set_ready(False)
        await aggregator.server.stop(FINISH_STOP_GRACE_SECONDS)
        return STORAGE_FAILURE_EXIT_CODE
    disk.cancel()
    if not stopped.done():
        log.info("every collaborator has its quit job: the experiment is complete")
        await _finish(aggregator)
        if aggregator.config.ops.after_finish == AfterFinish.EXIT:
            stopped.cancel()
            await aggregator.server.stop(FINISH_STOP_GRACE_SECONDS)
            return aggregator.config.ops.exit_code
        log.info("staying up read-only (ops.after_finish: stay) until stopped")
        await stopped
    stopped.cancel()
    log.info("stop signal received: draining")
    aggregator.draining = True
    ops = aggregator.config.ops
    await drain(
        aggregator.server,
        aggregator.readiness,
        drain_seconds=0.0 if signals.interrupted else ops.drain_seconds,
        grace_seconds=ops.grace_seconds,
    )
    return 0


async def _watch_storage(aggregator: AggregatorProcess) -> None:
    """Return once the state directory has refused writes for ``storage.failure_exit_seconds`` (0: never)."""
    limit = aggregator.config.storage.failure_exit_seconds
    health = aggregator.federation.health
    while limit <= 0 or health.storage_failing_for() < limit:
        await asyncio.sleep(STORAGE_WATCH_SECONDS if limit <= 0 else min(STORAGE_WATCH_SECONDS, limit))
    log.error(
        "the state directory has refused writes for %.0fs (storage.failure_exit_seconds): exiting with "
        "status %d so that the pod is restarted",
        health.storage_failing_for(),
        STORAGE_FAILURE_EXIT_CODE,
    )


async def _finish(aggregator: AggregatorProcess) -> None:
    """The end of the experiment: readiness, then the hooks (the models are already written)."""
    if aggregator.config.ops.after_finish == AfterFinish.EXIT:
        await aggregator.readiness.set_ready(False)
    federation, config = aggregator.federation, aggregator.config
    best = federation.best_score
    completion = Completion(
        state="finished",
        final_round=federation.round_number,
        best_metric=None if math.isinf(best) else best,
        best_model=config.best_model_path if config.best_model_path.is_file() else None,
        last_model=config.last_model_path if config.last_model_path.is_file() else None,
    )
    await run_hooks(aggregator.hooks, completion, aggregator.metrics.hook_failed)


@contextlib.contextmanager
def _binding(key: str, port: int, host: str) -> Iterator[None]:
    """Turn a failure to listen into one configuration error naming the setting and its environment override.

    The port is tried first with a plain socket, so that gRPC's own error line is never printed.
    """
    try:
        if port:
            _try_listen(host, port)
        yield
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "bind" not in str(error).lower():
            raise
        variable = ENV_PREFIX + key.upper().replace(".", "__")
        raise ConfigError(
            key,
            port,
            f"a port this process can listen on (it is in use or not allowed); set {key} or {variable}",
        ) from None


def _try_listen(host: str, port: int) -> None:
    """Bind and release ``host:port`` as the servers will (raises OSError when it is taken)."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((address, port))
        probe.listen(1)


async def _start_ops(aggregator: AggregatorProcess) -> None:
    ops = aggregator.config.ops
    with _binding("ops.metrics_port", ops.metrics_port, ops.metrics_bind_address):
        http_server, thread = start_http_server(
            ops.metrics_port, addr=ops.metrics_bind_address.strip("[]"), registry=aggregator.registry
        )
    aggregator.metrics_http = (http_server, thread)
    aggregator.metrics_port = http_server.server_port
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(aggregator.grpc_metrics)], options=[("grpc.so_reuseport", 0)]
    )
    aggregator.health.register(server)
    with _binding("ops.port", ops.port, ops.bind_address):
        aggregator.ops_port = server.add_insecure_port(f"{ops.bind_address}:{ops.port}")
    await server.start()
    aggregator.ops_server = server
    await aggregator.health.set_alive()
    log.info(
        "ops listening: ops=%s:%d metrics=%s:%d (health and reflection on ops, Prometheus on /metrics)",
        ops.bind_address,
        aggregator.ops_port,
        ops.metrics_bind_address,
        aggregator.metrics_port,
    )


async def _stop_ops(aggregator: AggregatorProcess) -> None:
    await aggregator.health.shut_down()
    if aggregator.ops_server is not None:
        await aggregator.ops_server.stop(0.5)
    if aggregator.metrics_http is not None:
        http_server, thread = aggregator.metrics_http
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)
