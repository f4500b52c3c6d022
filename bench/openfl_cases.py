"""Real OpenFL 1.7.1 collaborator processes against OpenFL 1.7.1's own aggregator, fedagg and the null server.

Each run trains ``rounds`` rounds of the default plan (three tasks, delta updates, mTLS) with a deterministic
numpy runner (bench/openfl_collaborator.py) on a model of 8 float32 tensors. A round's wall time is taken from
the collaborators' own timestamps, the same code for both servers: from the first GetTasks reply that hands
out the round's tasks to the acknowledgement of the round's last upload (both aggregators end a round inside
that last SendLocalTaskResults call). The server's memory and CPU come from /proc.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MIB, shapes_for, write_init_model
from bench.procfs import ProcessWatch
from bench.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    ROOT,
    RunningServer,
    clean_env,
    start_fedagg,
    start_null,
    start_openfl,
)

COLLABORATOR = ROOT / "bench" / "openfl_collaborator.py"
TENSORS = 8


@dataclass(frozen=True)
class Case:
    """One comparison: a model of ``params`` float32 parameters in 8 tensors, ``collaborators`` of them."""

    key: str
    params: int
    collaborators: int
    rounds: int
    tls: bool = True

    @property
    def model_bytes(self) -> int:
        return self.params * 4

    @property
    def names(self) -> list[str]:
        return [f"col-{index}" for index in range(self.collaborators)]

    def shapes(self) -> dict[str, list[int]]:
        return shapes_for(self.params, TENSORS)

    def describe(self) -> str:
        millions = self.params / 1e6
        return f"{millions:g}M params ({self.model_bytes / MIB:.0f} MiB) x {self.collaborators}" + (
            ", mTLS" if self.tls else ", plaintext"
        )


@dataclass
class RunResult:
    """One server's run of a case."""

    server: str
    round_seconds: list[float]
    active_seconds: list[float]
    peak_hwm_mib: float
    peak_anon_mib: float
    peak_file_mib: float
    cpu_seconds: float
    wall_seconds: float
    download_seconds: list[float] = field(default_factory=list)
    upload_seconds: list[float] = field(default_factory=list)
    aggregation_seconds: list[float] = field(default_factory=list)
    peak_phases: dict[str, str] = field(default_factory=dict)
    closing_seconds: list[float] = field(default_factory=list)
    """Per round, how long the call that closed it took (an upload of a metric: almost all of it is the round end)."""
    steady_cpu_seconds: float | None = None
    """Server CPU seconds per round after the first two (from the end of round 1 to the end of the last round),
    None with fewer than three rounds: the first rounds write new files and fault in fresh memory, later ones
    reuse them, as a federation's many rounds do."""

    @property
    def mean_round(self) -> float:
        """Mean round time: from the first GetTasks call to the end of the last round, over the rounds."""
        return float(np.mean(self.round_seconds))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_case(server_kind: str, case: Case, work: Path, pki: Path, python: Path) -> RunResult:
    """Train ``case.rounds`` rounds with real OpenFL collaborators against ``server_kind``."""
    directory = work / f"{case.key}-{server_kind}-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    init = work / f"init-{case.key}.pbuf"
    write_init_model(case.shapes(), init)
    tls_dir = pki if case.tls else None
    if server_kind == "fedagg":
        server = start_fedagg(directory, tls_dir, case.names, init, case.rounds)
    elif server_kind == "null":
        server = start_null(directory, tls_dir, case.names, init, case.rounds)
    else:
        server = start_openfl(python, directory, tls_dir, case.names, init, case.rounds)
    try:
        return _drive(server, case, directory, python, pki)
    finally:
        server.kill()


def _drive(server: RunningServer, case: Case, directory: Path, python: Path, pki: Path) -> RunResult:
    server.watch.mark()
    started = time.monotonic()
    shapes = json.dumps(case.shapes())
    collaborators = []
    for index, name in enumerate(case.names):
        tls = pki / "collaborators" / name
        command = [
            str(python),
            str(COLLABORATOR),
            "--name",
            name,
            "--port",
            str(server.port),
            "--aggregator-uuid",
            AGGREGATOR_UUID,
            "--federation-uuid",
            FEDERATION_UUID,
            "--shapes",
            shapes,
            "--step",
            str(1.0 + index),
            "--train-size",
            str(10 * (index + 1)),
            "--timings",
            str(directory / f"{name}.json"),
        ]
        if case.tls:
            command += [
                "--ca",
                str(tls / "ca.crt"),
                "--cert",
                str(tls / "tls.crt"),
                "--key",
                str(tls / "tls.key"),
            ]
        log = (directory / f"{name}.log").open("wb")
        collaborators.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=directory)
        )
    try:
        codes = wait_all(collaborators, server, 1800)
    finally:
        for process in collaborators:
            if process.poll() is None:
                process.kill()
                process.wait()
    if codes != [0] * len(codes):
        logs = "".join((directory / f"{name}.log").read_text()[-2000:] for name in case.names)
        raise RuntimeError(f"{server.name}: collaborators exited with {codes}:\n{logs}")
    wall = time.monotonic() - started
    code = server.wait(timeout=120)
    if code != 0:
        raise RuntimeError(f"{server.name} exited with {code}; see {server.log}")
    timings = [json.loads((directory / f"{name}.json").read_text())["calls"] for name in case.names]
    (directory / "server-memory.json").write_text(json.dumps(server.watch.timeline))
    periods, actives, downloads, uploads = round_times(timings, case.rounds)
    watch = server.watch
    return RunResult(
        server.name,
        periods,
        actives,
        watch.peak_hwm,
        watch.peak_anon,
        watch.peak_file,
        watch.cpu,
        wall,
        downloads,
        uploads,
        server.aggregation_seconds() if server.name == "fedagg" else [],
        peak_phases(watch, timings),
        closing_times(timings, case.rounds),
        steady_cpu(watch, timings, case.rounds),
    )


STEADY_FROM_ROUND = 2
"""Rounds before this one are the warm-up that :attr:`RunResult.steady_cpu_seconds` leaves out."""


def steady_cpu(watch: ProcessWatch, timings: list[list[list[Any]]], rounds: int) -> float | None:
    """The server's CPU seconds per round from round :data:`STEADY_FROM_ROUND` on (None with too few rounds)."""
    if rounds <= STEADY_FROM_ROUND:
        return None
    ends = [
        max(c[3] for calls in timings for c in calls if c[0] == "send_results" and c[1] == number)
        for number in range(rounds)
    ]
    return watch.cpu_between(ends[STEADY_FROM_ROUND - 1], ends[-1]) / (rounds - STEADY_FROM_ROUND)


def closing_times(timings: list[list[list[Any]]], rounds: int) -> list[float]:
    """Per round, the duration of the upload call acknowledged last (the one inside which the round ended)."""
    closing = []
    for number in range(rounds):
        calls = [c for calls in timings for c in calls if c[0] == "send_results" and c[1] == number]
        last = max(calls, key=lambda c: c[3])
        closing.append(last[3] - last[2])
    return closing


def wait_all(processes: list[subprocess.Popen[bytes]], server: RunningServer, timeout: float) -> list[int]:
    """Wait for ``processes`` to exit; fail early when the server dies first (e.g. over the memory limit)."""
    deadline = time.monotonic() + timeout
    while any(process.poll() is None for process in processes):
        if server.process.poll() not in (None, 0):  # 0: it sent every quit job and exited
            why = (
                "killed over the memory limit"
                if server.watch.killed
                else f"exited with {server.process.returncode}"
            )
            raise RuntimeError(
                f"{server.name} {why} at {server.watch.peak_hwm:.0f} MiB peak RSS before its collaborators finished"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: the collaborators did not finish within {timeout:.0f} s")
        time.sleep(0.2)
    return [process.wait() for process in processes]


def round_times(
    timings: list[list[list[Any]]], rounds: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per round: its period (from the end of the round before, for round 0 from the first GetTasks call, to
    the acknowledgement of its last upload: compute, transfers and any sleep in between), its active time
    (from the first GetTasks reply that hands out its tasks to its end), and the longest time any one
    collaborator spent in GetAggregatedTensor calls and in SendLocalTaskResults calls."""
    first_call = min(c[2] for calls in timings for c in calls if c[0] == "get_tasks")
    periods, actives, downloads, uploads = [], [], [], []
    previous_end = first_call
    for number in range(rounds):
        starts = [c[3] for calls in timings for c in calls if c[0] == "get_tasks" and c[1] == number]
        ends = [c[3] for calls in timings for c in calls if c[0] == "send_results" and c[1] == number]
        if not starts or not ends:
            raise RuntimeError(f"round {number}: no timestamps (GetTasks {len(starts)}, uploads {len(ends)})")
        periods.append(max(ends) - previous_end)
        actives.append(max(ends) - min(starts))
        previous_end = max(ends)
        downloads.append(
            max(
                sum(c[3] - c[2] for c in calls if c[0] == "get_tensor" and c[1] == number)
                for calls in timings
            )
        )
        uploads.append(
            max(
                sum(c[3] - c[2] for c in calls if c[0] == "send_results" and c[1] == number)
                for calls in timings
            )
        )
    return periods, actives, downloads, uploads


def peak_phases(watch: ProcessWatch, timings: list[list[list[Any]]]) -> dict[str, str]:
    return {
        "rss": phase_at(watch.peak_rss_at, timings),
        "anon": phase_at(watch.peak_anon_at, timings),
        "file": phase_at(watch.peak_file_at, timings),
    }


def phase_at(moment: float, timings: list[list[list[Any]]]) -> str:
    """What the collaborators were doing at ``moment`` (a wall-clock time): the round end (inside the call that
    closed a round), an upload, a download, or nothing (idle, or the collaborators computing)."""
    if not moment:
        return "-"
    for number in sorted({c[1] for calls in timings for c in calls if c[0] == "send_results"}):
        closing = max(
            (c for calls in timings for c in calls if c[0] == "send_results" and c[1] == number),
            key=lambda c: c[3],
        )
        if closing[2] <= moment <= closing[3]:
            return f"round {number} end"
    for kind, label in (("send_results", "upload"), ("get_tensor", "download")):
        rounds = sorted({c[1] for calls in timings for c in calls if c[0] == kind and c[2] <= moment <= c[3]})
        if rounds:
            return f"{label} (round {rounds[0]})"
    return "between calls"
