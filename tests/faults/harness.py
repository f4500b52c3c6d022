"""Fault-injection harness: a ``fedagg serve`` that can be armed with crash points and restarted on the same
port, collaborators of both kinds (real OpenFL 1.7.1 processes, fedagg's library in threads), a small tmpfs for
the state directory, and the probes a test polls (``/metrics``, readiness, the state directory).

Every wait here polls a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from unittest import mock

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.ports import free_port
from fedagg.collaborator import AggregatorClient, Collaborator, RetryPolicy
from fedagg.failpoints import ENVIRONMENT_VARIABLE
from fedagg.federation.integrity import FOOTER_BYTES
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.interop.openfl import CollaboratorSpec, start_collaborator
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.runners import StepRunner, expected_models
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID

T = TypeVar("T")

READINESS = "openfl.aggregator.Aggregator"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FINISHED_LINE = "every collaborator has its quit job"
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")

NAMES = ("one", "two")
FEDAGG_SPECS = {"one": (1.0, 10), "two": (2.0, 30)}
"""fedagg collaborators: (step, train size); StepRunner's closed form (tests/support/runners.py)."""
OPENFL_SPECS = (CollaboratorSpec("one", 1.0, 10, 20), CollaboratorSpec("two", 2.0, 30, 5))
"""OpenFL collaborators: trained = global + step * (round + 1), weighted by train size (same closed form)."""
BACKUP_POLL = "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS"
QUIT_REDELIVERY_SECONDS = 10
RIDE_THROUGH = RetryPolicy(initial=0.05, maximum=0.5, give_up_after=180)
"""fedagg collaborators retry UNAVAILABLE long enough to ride through any restart of these tests."""


def poll(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``condition`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as error:  # a probe may fail while a process starts or stops: keep polling
            last_error, value = error, None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
            )
        time.sleep(interval)


# The aggregator --------------------------------------------------------------------------------------------------


class Aggregator(FedaggProcess):
    """``fedagg serve --config`` whose environment may arm crash points (``FEDAGG_FAILPOINTS``)."""

    def __init__(self, config: Path, failpoints: str = "", name: str = "aggregator") -> None:
        self.failpoints = failpoints
        self.log_file = config.parent / f"{name}.log"
        overrides = {ENVIRONMENT_VARIABLE: failpoints} if failpoints else {}
        with mock.patch.dict(os.environ, overrides):
            if not failpoints:
                os.environ.pop(ENVIRONMENT_VARIABLE, None)
            super().__init__(config)

    def wait_killed(self, timeout: float = 90) -> None:
        """Wait for the process to kill itself at its armed crash point."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the aggregator did not reach its crash point {self.failpoints!r} in {timeout}s:\n{self.log()}"
            ) from None
        assert code == -signal.SIGKILL, (
            f"the aggregator armed with {self.failpoints!r} exited {code} instead of being killed there:\n"
            f"{self.log()}"
        )

    def wait_finished(self, timeout: float = 90) -> None:
        """Wait for the exit after the last quit job; it must be 0."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the aggregator did not finish in {timeout}s:\n{self.log()}") from None
        assert code == 0, f"the aggregator exited {code}:\n{self.log()}"
        assert FINISHED_LINE in self.log(), self.log()

    # Probes ------------------------------------------------------------------------------------------------------

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The current samples of /metrics, keyed by (sample name, labels)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series does not exist yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def watch_metrics(self, interval: float = 0.05) -> None:
        """Scrape /metrics in the background until the process exits; :attr:`watched` keeps the last scrape.

        For counters of things that happen at start-up (quarantined files) in a run that then ends on its own:
        the last scrape before the exit holds their final values.
        """
        self.wait_for_ops()

        def scrape() -> None:
            while self.process.poll() is None:
                with contextlib.suppress(OSError):  # the exporter goes away as the process exits
                    self.watched = self.metrics()
                time.sleep(interval)  # a scrape period, not a synchronisation

        self.watched: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        threading.Thread(target=scrape, daemon=True).start()

    def watched_metric(self, name: str, **labels: str) -> float:
        """A sample of the last background scrape (0 when absent)."""
        return self.watched.get((name, frozenset(labels.items())), 0.0)

    def describe(self) -> str:
        """The federation's state as /metrics shows it (for a failure message)."""
        try:
            samples = self.metrics()
        except OSError as error:
            return f"(no metrics: {error})"
        wanted = (
            "fedagg_round",
            "fedagg_collaborators",
            "fedagg_round_end_failing",
            "fedagg_storage_failing",
        )
        return "\n".join(
            f"{name}{dict(labels)} {value}"
            for (name, labels), value in sorted(samples.items(), key=str)
            if name.startswith(wanted) and (value or not labels)
        )

    def readiness(self) -> int:
        """The ops port's readiness status (``openfl.aggregator.Aggregator``)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ops_port}") as channel:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=5)
                .status
            )


@dataclass(frozen=True)
class Setup:
    """One test's federation: its directory, config and the fixed port collaborators dial."""

    directory: Path
    config: Path
    port: int
    rounds: int

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


def make_setup(
    directory: Path, pki: Pki, rounds: int, initial_model: Path, **sections: dict[str, Any]
) -> Setup:
    """A config on one fixed free loopback port, so that a restarted aggregator listens where collaborators dial.

    Quit jobs recorded before a restart are answered again for ``QUIT_REDELIVERY_SECONDS`` (the default of 120 s
    leaves room for OpenFL 1.7.1's reconnect delay; fedagg's collaborators here retry within half a second).
    """
    port = free_port()
    server = {"port": port, "quit_redelivery_seconds": QUIT_REDELIVERY_SECONDS, **sections.pop("server", {})}
    config = write_config(directory, pki, NAMES, rounds, initial_model, server=server, **sections)
    return Setup(directory, config, port, rounds)


# Collaborators ---------------------------------------------------------------------------------------------------


class FedaggCollaborators:
    """fedagg's collaborator library (StepRunner, as tests/support/training.py runs it), one daemon thread each.

    :meth:`close` closes their channels, so a collaborator left waiting for an aggregator that will never answer
    stops at its next call instead of outliving the test.
    """

    quit_grace_seconds = 5.0
    """How long a collaborator may take to exit after the aggregator did (it had its quit reply before that)."""

    def __init__(self, setup: Setup, pki: Pki, retry: RetryPolicy = RIDE_THROUGH) -> None:
        self.collaborators = [
            Collaborator(
                AggregatorClient(
                    setup.address, name, AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client(name), retry=retry
                ),
                StepRunner(step, size, 5),
                delta_updates=True,
                max_sleep_seconds=0.05,
            )
            for name, (step, size) in FEDAGG_SPECS.items()
        ]
        self.errors: dict[str, BaseException] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(collaborator,), daemon=True)
            for collaborator in self.collaborators
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, collaborator: Collaborator) -> None:
        try:
            collaborator.run()
        except BaseException as error:
            self.errors[collaborator.client.collaborator] = error

    def wait(self, timeout: float = 120) -> None:
        """Every collaborator ran to its quit job."""
        deadline = time.monotonic() + timeout
        for collaborator, thread in zip(self.collaborators, self._threads, strict=True):
            thread.join(max(0.0, deadline - time.monotonic()))
            name = collaborator.client.collaborator
            assert not thread.is_alive(), (
                f"fedagg collaborator {name} is still running: it never got its quit job"
            )
            assert name not in self.errors, f"fedagg collaborator {name} failed: {self.errors[name]!r}"

    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def problems(self) -> str:
        """What went wrong so far (a collaborator that stopped with an error), or ''."""
        return "; ".join(
            f"fedagg collaborator {name} failed: {error!r}" for name, error in self.errors.items()
        )

    def diagnose(self) -> str:
        """Where each collaborator that is still running is (its thread's stack)."""
        frames = sys._current_frames()
        return "\n".join(
            f"fedagg collaborator {collaborator.client.collaborator}:\n"
            + "".join(traceback.format_stack(frames[thread.ident]))
            for collaborator, thread in zip(self.collaborators, self._threads, strict=True)
            if thread.ident in frames
        )

    def close(self) -> None:
        for collaborator in self.collaborators:
            collaborator.client.close()

    @staticmethod
    def expected() -> list[tuple[float, int]]:
        return list(FEDAGG_SPECS.values())


class OpenflCollaborators:
    """Real OpenFL collaborator processes (tests/interop/openfl_side/collaborator.py, one per spec of ``specs``) of
    the version whose venv ``python`` is (1.7.1 unless said otherwise), retrying every ``reconnect_seconds``
    (1.8/1.9 wait that long before every retry; 1.7.1 only between UNAVAILABLE retries).

    They run with ``GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=100``: OpenFL 1.7.1 pins grpcio 1.65.5, whose
    channels make no progress on a TLS handshake while no call is polling them (grpc/grpc#28866). OpenFL's client
    retries UNAVAILABLE with fail-fast calls once a second on the same channel, so after a connection attempt
    was refused (the aggregator restarting) the handshake with the restarted aggregator advances only at the
    backup poller's 5 s ticks, times out and backs off: 45-80 s before the collaborator is back (measured on
    this machine), against 3 s with the faster backup poller. Nothing else of OpenFL's behaviour changes.
    """

    quit_grace_seconds = 15.0

    def __init__(
        self,
        setup: Setup,
        pki: Pki,
        python: Path,
        delta: bool = True,
        *,
        reconnect_seconds: int = 1,
        specs: tuple[CollaboratorSpec, ...] = OPENFL_SPECS,
    ) -> None:
        self.specs = specs
        self.logs = [setup.directory / f"openfl-{spec.name}.log" for spec in specs]
        self.results = [setup.directory / f"openfl-{spec.name}.json" for spec in specs]
        with mock.patch.dict(os.environ, {BACKUP_POLL: "100"}):
            self.processes = [
                start_collaborator(
                    python,
                    spec,
                    setup.port,
                    FEDERATION_UUID,
                    AGGREGATOR_UUID,
                    pki,
                    delta,
                    result,
                    log,
                    reconnect_seconds=reconnect_seconds,
                )
                for spec, result, log in zip(specs, self.results, self.logs, strict=True)
            ]

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for process, log in zip(self.processes, self.logs, strict=True):
            try:
                code = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"OpenFL collaborator {log.stem} is still running: it never got its quit job\n"
                    f"{self.log_tail(log)}"
                ) from None
            assert code == 0, f"OpenFL collaborator exited {code}:\n{self.log_tail(log)}"
        for result in self.results:
            assert result.is_file(), f"{result.name}: an OpenFL collaborator exits 0 only after its quit job"

    def finished(self) -> bool:
        return all(process.poll() is not None for process in self.processes)

    def diagnose(self) -> str:
        """The end of each collaborator's log."""
        return "\n".join(f"{log.stem}:\n{self.log_tail(log, 15)}" for log in self.logs)

    def problems(self) -> str:
        """What went wrong so far (a collaborator process that exited with an error), or ''."""
        return "; ".join(
            f"OpenFL collaborator {log.stem} exited {process.returncode}:\n{self.log_tail(log)}"
            for process, log in zip(self.processes, self.logs, strict=True)
            if process.poll() not in (None, 0)
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    @staticmethod
    def log_tail(path: Path, lines: int = 40) -> str:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def expected(self) -> list[tuple[float, int]]:
        return [(spec.step, spec.train_size) for spec in self.specs]


Collaborators = FedaggCollaborators | OpenflCollaborators


# What a finished run must show -----------------------------------------------------------------------------------


def assert_final_model(setup: Setup, steps_and_sizes: list[tuple[float, int]]) -> None:
    """``last.pbuf`` is the final round's aggregate and equals the closed form of an undisturbed run."""
    model = read_model(setup.state / "last.pbuf")
    assert model.round_number == setup.rounds
    expected = expected_models(steps_and_sizes, setup.rounds)[-1]
    for name, values in model.tensors.items():
        np.testing.assert_allclose(
            values, np.full(values.shape, expected, np.float32), rtol=1e-6, err_msg=f"tensor {name}"
        )


def assert_counted_once(setup: Setup, names: tuple[str, ...] = NAMES) -> None:
    """Each round's metric history holds every collaborator's three tasks exactly once (and nothing else)."""
    for round_number in range(setup.rounds):
        path = setup.state / "metrics" / f"round-{round_number:06d}.json"
        records = json.loads(path.read_text())["body"]
        reported = Counter(
            (record["origin"], record["task"]) for record in records if record["origin"] != "aggregator"
        )
        expected = Counter({(name, task): 1 for name in names for task in TASKS})  # one metric per task
        assert reported == expected, f"round {round_number}: {reported} != {expected}"


def finish(
    setup: Setup, aggregator: Aggregator, collaborators: Collaborators, *, timeout: float = 120
) -> None:
    """The collaborators end cleanly, the aggregator exits 0 after the last quit job, and the model is right."""
    deadline = time.monotonic() + timeout
    try:
        poll(
            lambda: aggregator.process.poll() is not None or collaborators.problems(),
            timeout,
            "the aggregator's exit",
            interval=0.2,
        )
    except AssertionError as error:
        raise AssertionError(
            f"{error}\naggregator log:\n{aggregator.log()}\n{aggregator.describe()}\n{collaborators.diagnose()}"
        ) from None
    assert not collaborators.problems(), f"{collaborators.problems()}\naggregator log:\n{aggregator.log()}"
    aggregator.wait_finished(5)
    # The aggregator stops only after every collaborator was handed its quit job: nothing can serve one that is
    # still running now, so it must be on its way out already.
    collaborators.wait(min(collaborators.quit_grace_seconds, max(1.0, deadline - time.monotonic())))
    assert_final_model(setup, collaborators.expected())
    assert_counted_once(setup)


# State files -----------------------------------------------------------------------------------------------------


def spooled_uploads(state: Path) -> list[Path]:
    """Every acknowledged upload in the spool, in (round, sequence) order."""
    return sorted((state / "spool").glob("round-*/*.results"))


def upload_header(path: Path) -> aggregator_pb2.TaskResults:
    """The TaskResults of a spooled upload (its raw bytes without the checksum footer)."""
    data = path.read_bytes()
    return aggregator_pb2.TaskResults.FromString(data[: len(data) - FOOTER_BYTES])


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of ``path`` in place (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def quarantined(state: Path) -> list[Path]:
    directory = state / "quarantine"
    return sorted(directory.iterdir()) if directory.is_dir() else []


# A small tmpfs for the state directory ---------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only: skipped locally, a failure under CI=true)."""
    require(os.geteuid() == 0, "mounting a tmpfs for the state directory needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Fill the file system of ``directory`` until it refuses writes; return the filler file."""
    filler = directory / name
    block = b"\xa5" * (1 << 20)
    with filler.open("wb", buffering=0) as file:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            while _write_some(file, block[:size]):
                pass
    return filler


def _write_some(file: BinaryIO, data: bytes) -> bool:
    """Write ``data``; False once the file system is full."""
    try:
        return bool(file.write(data))
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        return False


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def stop(*things: Aggregator | Collaborators | None) -> None:
    """Clean-up: kill what still runs, close the fedagg collaborators' channels, keep each aggregator's log
    beside the test's state directory (``<name>.log``) for a post-mortem."""
    for thing in things:
        if thing is None:
            continue
        if isinstance(thing, Aggregator):
            if thing.process.poll() is None:
                thing.process.kill()
            code = thing.wait(10)
            thing.log_file.write_text(f"{thing.log()}[exit status {code}]\n")  # kept for a post-mortem
        else:
            thing.close()


def crash_and_restart(
    setup: Setup,
    failpoints: str,
    start: Callable[[Setup], Collaborators],
    while_down: Callable[[Path], T],
    *,
    watch_metrics: bool = False,
) -> tuple[Aggregator, T]:
    """Run until the aggregator kills itself at ``failpoints``, call ``while_down`` on the state directory, restart
    on the same configuration and :func:`finish`; the restarted aggregator and what ``while_down`` returned.

    ``watch_metrics`` scrapes the restarted aggregator until it exits (for counters of its start-up).
    """
    first = Aggregator(setup.config, failpoints, "aggregator-killed")
    second: Aggregator | None = None
    collaborators: Collaborators | None = None
    try:
        first.wait_for_federation()
        collaborators = start(setup)
        first.wait_killed()
        done_while_down = while_down(setup.state)
        second = Aggregator(setup.config, name="aggregator-restarted")
        if watch_metrics:
            second.watch_metrics()
        else:
            second.wait_for_federation()
        finish(setup, second, collaborators)
    finally:
        stop(first, second, collaborators)
    return second, done_while_down
