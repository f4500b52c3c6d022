"""Scale in N: light collaborators (fedagg's client library, threads in a few processes) against both servers.

* ``run_rounds``: N collaborators train ``rounds`` rounds of a small model; round times (the same definition as
  the OpenFL cases: period from the end of the round before) and the server's peak memory and CPU.
  fedagg's client sleeps what the server says (OpenFL: 10 s; fedagg holds the call instead).
* ``run_polls``: ``clients`` collaborators call GetTasks in a loop at the same time (each has its tasks, so
  every call is answered at once by both servers); calls per second over all of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.clients import run_federation, run_workers
from bench.models import shapes_for, write_init_model
from bench.openfl_cases import peak_phases, round_times
from bench.servers import RunningServer, start_fedagg, start_openfl

PROCESSES = 4
RUN_TIMEOUT = 300.0
"""A run that takes longer is reported as infeasible here."""


@dataclass
class ScaleResult:
    server: str
    collaborators: int
    round_seconds: list[float]
    peak_hwm_mib: float
    peak_anon_mib: float
    cpu_seconds: float
    peak_phases: dict[str, str]

    @property
    def mean_round(self) -> float:
        return float(np.mean(self.round_seconds))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _start(
    server_kind: str, directory: Path, pki: Path, names: list[str], init: Path, rounds: int, python: Path
) -> RunningServer:
    if server_kind == "fedagg":
        return start_fedagg(directory, pki, names, init, rounds)
    return start_openfl(python, directory, pki, names, init, rounds)


def run_rounds(
    server_kind: str, collaborators: int, params: int, rounds: int, work: Path, pki: Path, python: Path
) -> ScaleResult:
    shapes = shapes_for(params)
    init = write_init_model(shapes, work / f"init-{params}.pbuf")
    names = [f"col-{index}" for index in range(collaborators)]
    directory = work / f"scale-{server_kind}-{collaborators}-{time.monotonic_ns()}"
    server = _start(server_kind, directory, pki, names, init, rounds, python)
    timings = run_federation(
        server, names, shapes, pki, directory / "clients", PROCESSES, timeout=RUN_TIMEOUT
    ).calls
    periods, _actives, _downloads, _uploads = round_times(timings, rounds)
    watch = server.watch
    (directory / "server-memory.json").write_text(json.dumps(watch.timeline))
    return ScaleResult(
        server_kind,
        collaborators,
        periods,
        watch.peak_hwm,
        watch.peak_anon,
        watch.cpu,
        peak_phases(watch, timings),
    )


def run_polls(
    server_kind: str, clients: int, seconds: float, work: Path, pki: Path, python: Path
) -> dict[str, float]:
    shapes = shapes_for(1024)
    init = write_init_model(shapes, work / "init-1024.pbuf")
    names = [f"col-{index}" for index in range(clients)]
    directory = work / f"polls-{server_kind}-{time.monotonic_ns()}"
    server = _start(server_kind, directory, pki, names, init, 1, python)
    try:
        outputs = run_workers(
            server, names, shapes, pki, directory / "clients", PROCESSES, mode="poll", seconds=seconds
        )
    finally:
        server.kill()
    calls = sum(count for output in outputs for count in output["polls"].values())
    return {"calls": float(calls), "calls_per_second": calls / seconds, "cpu_seconds": server.watch.cpu}
