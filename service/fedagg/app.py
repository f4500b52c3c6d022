"""Wiring: build the federation and its servers from a :class:`~fedagg.config.Config` and run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from fedagg.config import Config
from fedagg.federation.events import FederationListener
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import ModelFileError, read_model
from fedagg.server.servicer import AggregatorGRPCServer
from fedagg.server.tls import CertificateError, CertificateSource, TlsMode
from fedagg.settings import ConfigError

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0


@dataclass
class Aggregator:
    """A configured aggregator: the federation and the gRPC server that serves it."""

    config: Config
    federation: Federation
    server: AggregatorGRPCServer


def build_aggregator(config: Config, listener: FederationListener | None = None) -> Aggregator:
    """Create everything the configuration describes; file problems raise :class:`ConfigError` naming the key."""
    plan = config.plan()
    state_dir = config.storage.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        store = StateStore(state_dir)
    except OSError as error:
        raise ConfigError(
            "storage.state_dir", str(state_dir), f"a writable directory ({error.strerror})"
        ) from None
    initial = None
    if store.load_checkpoint() is None:
        path = config.federation.initial_model
        if path is None:
            raise ConfigError(
                "federation.initial_model", None, "an OpenFL .pbuf model (the state directory is empty)"
            )
        try:
            initial = read_model(path)
        except ModelFileError as error:
            raise ConfigError(
                "federation.initial_model", str(path), f"a readable OpenFL model file ({error})"
            ) from None
    federation = Federation(
        plan,
        store,
        ModelOutputs(config.best_model_path, config.last_model_path),
        initial_model=initial,
        listener=listener,
    )
    server_settings = config.server
    tls = server_settings.tls
    source = None
    if tls.mode != TlsMode.INSECURE:
        try:
            source = CertificateSource(tls.files(), require_client_auth=tls.mode == TlsMode.MUTUAL)
        except CertificateError as error:
            raise ConfigError(
                "server.tls", str(tls.certificate_dir or "."), f"usable certificates ({error})"
            ) from None
    server = AggregatorGRPCServer(
        federation,
        server_settings.port,
        use_tls=tls.mode != TlsMode.INSECURE,
        require_client_auth=tls.mode == TlsMode.MUTUAL,
        bind_address=server_settings.bind_address,
        certificate_source=source,
        observers=server_settings.observers,
        auth_failure_max_delay=server_settings.auth_failure_max_delay,
        executor_workers=server_settings.executor_workers,
        max_receive_message_bytes=server_settings.max_receive_message_bytes,
    )
    return Aggregator(config, federation, server)


async def run_aggregator(aggregator: Aggregator) -> int:
    """Restore state, serve until every collaborator got its quit job (or a signal), stop. Returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await loop.run_in_executor(None, aggregator.federation.restore)
    server = aggregator.server
    await server.start()
    finished = asyncio.create_task(server.wait_for_quit_jobs())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if stopped.done():
        log.info("signal received: stopping")
    else:
        log.info("every collaborator has its quit job: the experiment is complete")
    for task in (finished, stopped):
        task.cancel()
    await server.stop(STOP_GRACE_SECONDS)
    return 0
