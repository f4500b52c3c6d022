"""``fedagg serve`` for ``topology.role: ingest``: an ingest replica of a scale-out tier, from start to exit.

Built from the configuration like the aggregator process (:mod:`fedagg.assembly`): the same ops port (health,
reflection), Prometheus exporter, federation-port settings and certificates, and a state directory held with the
same lock. What runs is :class:`~fedagg.tier.ingest_replica.IngestReplica`: the collaborators' federation port,
backed by the root at ``topology.root_address`` (mTLS with the replica's tier certificate, CN = its name).

Readiness is SERVING while the root's round notices arrive and the open round's model is in place (polled twice a
second into the health service). The run ends when the root has finished the experiment and then gone away (it
exits after the last collaborator's quit job, which the replicas relay): exit 0; or on SIGTERM/SIGINT: readiness
goes NOT_SERVING, ``ops.drain_seconds`` pass for the endpoints to notice (not on SIGINT), calls in flight get
``ops.grace_seconds``, exit 0. Every acknowledged upload is in the replica's spool by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry

from fedagg.app import StopSignals
from fedagg.config.schema import Config
from fedagg.federation.aggregators.elementwise import FISHER_SUFFIXES
from fedagg.federation.plan import FederationPlan
from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.listeners import binding, start_ops, stop_ops
from fedagg.ops.leadership import Leadership
from fedagg.ops.metrics import FederationMetrics
from fedagg.ops.tier_metrics import TierMetrics
from fedagg.process_parts import certificate_source, new_registry, server_keywords, unusable_certificates
from fedagg.server.handlers import SERVICE_NAME
from fedagg.server.health import HealthReporter
from fedagg.server.interceptors import GrpcServerMetrics
from fedagg.server.options import Register, ServerOptions
from fedagg.server.tls import CertificateError, load_bundle
from fedagg.settings import ConfigError
from fedagg.tier.ingest_replica import IngestReplica
from fedagg.tier.ingest_round import Plain

log = logging.getLogger(__name__)

READINESS_POLL_SECONDS = 0.5
FINISHED = "the root finished the experiment and has gone: every collaborator has its quit job; exiting"


@dataclass
class IngestProcess:
    """An ingest replica's process: what :func:`run_ingest` runs (the ops listeners' attributes included)."""

    config: Config
    replica: IngestReplica
    health: HealthReporter
    registry: CollectorRegistry
    grpc_metrics: GrpcServerMetrics
    state_lock: StateDirectoryLock
    leadership: Leadership | None = None
    ops_services: list[Register] = field(default_factory=list)
    ops_port: int = 0
    metrics_port: int = 0
    ops_server: grpc.aio.Server | None = field(default=None, repr=False)
    metrics_http: tuple[WSGIServer, Thread] | None = field(default=None, repr=False)


def build_ingest(config: Config) -> IngestProcess:
    """Create the replica the configuration describes (on the event loop that will run it: its channels belong to
    it); unusable files raise :class:`ConfigError` naming the key."""
    topology, plan = config.topology, config.plan()
    registry = new_registry()
    metrics = FederationMetrics(
        registry, per_collaborator=config.ops.per_collaborator_metrics, tasks=plan.tasks
    )
    grpc_metrics = GrpcServerMetrics(registry)
    health = HealthReporter()
    source = certificate_source(config, metrics)
    assert source is not None, "config check: an ingest replica's server.tls.mode is mtls"
    try:
        bundle = load_bundle(topology.tier_files(config.server.tls.certificate_dir))
    except CertificateError as error:
        raise unusable_certificates(config, error, tier=True) from None
    root_credentials = grpc.ssl_channel_credentials(
        bundle.root_pem, bundle.private_key_pem, bundle.certificate_pem
    )
    extra: list[Register] = [lambda server: health.register(server, [SERVICE_NAME])]
    options = ServerOptions.from_keywords(
        {"bind_address": config.server.bind_address, **server_keywords(config, metrics, grpc_metrics, extra)}
    )
    state_dir = config.storage.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            "storage.state_dir", str(state_dir), f"a writable directory ({error.strerror})"
        ) from None
    replica = IngestReplica(
        plan,
        topology.replica_name,
        state_dir,
        topology.root_address,
        root_credentials,
        source,
        port=config.server.port,
        options=options,
        listener=TierMetrics(registry),
        plain=fisher_terms(plan),
    )
    return IngestProcess(config, replica, health, registry, grpc_metrics, StateDirectoryLock(state_dir))


def fisher_terms(plan: FederationPlan) -> Plain:
    """Which (task, tensor) a replica sums unweighted: FedCurv's Fisher terms, as the root's aggregator sums them."""
    fedcurv = {
        name for name, task in plan.tasks.items() if task.aggregation.kind == "fedcurv_weighted_average"
    }
    return lambda task, tensor: task in fedcurv and tensor.endswith(FISHER_SUFFIXES)


async def run_ingest(process: IngestProcess, stop: asyncio.Event | None = None) -> int:
    """Serve until the root is done, SIGTERM/SIGINT or ``stop``; return the exit status."""
    stop = stop or asyncio.Event()
    signals = StopSignals(stop)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, signals.received, signum)
    await start_ops(process)
    readiness: asyncio.Task[None] | None = None
    try:
        if not process.state_lock.try_acquire():
            log.error(
                "the state directory %s is held by another process: an ingest replica needs its own",
                process.config.storage.state_dir,
            )
            return 1
        server = process.config.server
        with binding("server.port", server.port, server.bind_address):
            await process.replica.start()
        readiness = asyncio.create_task(_publish_readiness(process))
        finished = asyncio.create_task(process.replica.root_gone_after_finish())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (finished, stopped):
            task.cancel()
        readiness.cancel()
        await process.health.set_ready(False)
        ops = process.config.ops
        if stopped in done:
            log.info("stop signal received: draining")
            if not signals.interrupted:
                await asyncio.sleep(ops.drain_seconds)  # the endpoints' controllers see NOT_SERVING meanwhile
        else:
            log.info("%s", FINISHED)
        await process.replica.stop(ops.grace_seconds)
        return 0
    finally:
        if readiness is not None:
            readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readiness
        await stop_ops(process)
        process.state_lock.release()


async def _publish_readiness(process: IngestProcess) -> None:
    ready: bool | None = None
    while True:
        now = process.replica.ready
        if now != ready:
            await process.health.set_ready(now)
            ready = now
        await asyncio.sleep(READINESS_POLL_SECONDS)
