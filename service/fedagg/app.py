"""The aggregator's whole life, from start to exit (:mod:`fedagg.assembly` builds it from the configuration).

Start-up: the Prometheus exporter and the plaintext ops port (health, reflection) come up first, so the kubelet's
startup probe sees a live process while state is restored; readiness turns SERVING once the certificates are
loaded, the state is restored and the federation port listens (also on a finished state directory: readiness means
"route collaborators here", and a collaborator still owed its quit job must reach the pod). The run ends in one of three ways:

* every collaborator has its quit job: readiness goes NOT_SERVING (or stays SERVING in ``after_finish: stay``
  mode, where models, metrics and status stay readable), the shutdown hooks run, and the process exits with
  ``ops.exit_code``;
* with ``ha.enabled``, the lease is lost: writes are fenced at once, readiness goes NOT_SERVING, calls get
  UNAVAILABLE and the process exits with status 75, to restart as a standby (:mod:`fedagg.ops.leadership`);
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
from dataclasses import dataclass, field

from fedagg.assembly import AggregatorProcess, build_aggregator, check_files
from fedagg.config.operations import AfterFinish
from fedagg.federation.errors import FederationError
from fedagg.federation.memory import MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES, tune_heap
from fedagg.listeners import binding, start_ops, stop_ops
from fedagg.ops.hooks import Completion, run_hooks
from fedagg.ops.leadership import LEADERSHIP_LOST_EXIT_CODE
from fedagg.ops.lifecycle import drain
from fedagg.standby import lock_state_directory

__all__ = ["AggregatorProcess", "build_aggregator", "check_files", "run_aggregator", "summary"]

log = logging.getLogger(__name__)

FINISH_STOP_GRACE_SECONDS = 2.0
STORAGE_FAILURE_EXIT_CODE = 75  # EX_TEMPFAIL
STORAGE_WATCH_SECONDS = 5.0
NOT_THE_LEADER = "not the leader: retry, the Service routes to the new leader"


async def run_aggregator(aggregator: AggregatorProcess, stop: asyncio.Event | None = None) -> int:
    """Serve the experiment to its end or until SIGTERM/SIGINT (or ``stop``); return the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if tune_heap():
        log.debug(
            "buffers under %d bytes come from the heap, which keeps up to %d free bytes at its top (glibc)",
            MMAP_THRESHOLD_BYTES,
            TRIM_THRESHOLD_BYTES,
        )
    signals = StopSignals(stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, signals.received, signum)
    await start_ops(aggregator)
    try:
        try:
            if not await lock_state_directory(aggregator, stop):
                return 0
            if aggregator.leadership is not None and not await aggregator.leadership.wait_elected(stop):
                return LEADERSHIP_LOST_EXIT_CODE if aggregator.leadership.lost else 0
            await loop.run_in_executor(None, aggregator.federation.restore)
        except (FederationError, ValueError, OSError) as error:
            if aggregator.leadership is not None and aggregator.leadership.lost:
                return await _step_down(aggregator)
            log.error("cannot restore the federation state: %s", error)
            return 1
        if stop.is_set():  # stopped while restoring: never routable, nothing to drain
            log.info("stop signal received while restoring: exiting")
            return 0
        aggregator.federation.health.subscribe(aggregator.readiness.refresh_from_thread(loop))
        server_settings, topology = aggregator.config.server, aggregator.config.topology
        with (
            binding("server.port", server_settings.port, server_settings.bind_address)
            if aggregator.root is None
            else binding("topology.tier_port", topology.tier_port, topology.tier_bind_address)
        ):
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
        await stop_ops(aggregator)
        if aggregator.leadership is not None:
            await aggregator.leadership.stop()
        if aggregator.root is not None:
            aggregator.root.close()
        if aggregator.state_lock is not None:
            aggregator.state_lock.release()


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
    lost = asyncio.create_task(_leadership_lost(aggregator))
    await asyncio.wait({finished, stopped, disk, lost}, return_when=asyncio.FIRST_COMPLETED)
    finished.cancel()
    if lost.done():
        for task in (stopped, disk):
            task.cancel()
        return await _step_down(aggregator)
    lost.cancel()
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


async def _leadership_lost(aggregator: AggregatorProcess) -> None:
    """Return once this process lost its lease (never without ``ha.enabled``)."""
    if aggregator.leadership is None:
        await asyncio.Event().wait()
    else:
        await aggregator.leadership.wait_lost()


async def _step_down(aggregator: AggregatorProcess) -> int:
    """The lease is lost and writes are fenced: stop routing and serving at once, then exit to restart.

    Calls in flight can only end in refusals now (a commit raises); the drain gives them their answers."""
    await aggregator.readiness.set_ready(False)
    aggregator.server.stop_accepting(NOT_THE_LEADER)
    aggregator.server.cut()
    log.error(
        "not the leader any more (%s): readiness NOT_SERVING, calls refused, exiting with status %d to come back "
        "as a standby",
        aggregator.leadership.lost_because if aggregator.leadership else "",
        LEADERSHIP_LOST_EXIT_CODE,
    )
    ops = aggregator.config.ops
    await drain(aggregator.server, aggregator.readiness, drain_seconds=0.0, grace_seconds=ops.grace_seconds)
    return LEADERSHIP_LOST_EXIT_CODE


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
