"""fedagg's client library as benchmark load: collaborators on threads in a few worker processes.

The workers start on a barrier, not a clock: each one writes a byte to a shared pipe once its collaborators are
ready (connected, for ``poll``), then waits for the end of file on a second pipe, which this process closes once
every worker is ready, so every worker starts together however loaded the machine is.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import ROOT, RunningServer


def split(names: list[str], processes: int) -> list[list[str]]:
    """``names`` dealt round-robin to at most ``processes`` groups."""
    count = max(1, min(processes, len(names)))
    return [names[index::count] for index in range(count)]


def run_workers(
    server: RunningServer,
    names: list[str],
    shapes: dict[str, list[int]],
    pki: Path | None,
    directory: Path,
    processes: int,
    mode: str = "train",
    timeout: float = 900,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Run ``names`` in ``processes`` worker processes (bench/fedagg_worker.py) against ``server``; their outputs."""
    directory.mkdir(parents=True, exist_ok=True)
    workers = []
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    open_ends = {ready_read, ready_write, go_read, go_write}

    def close(descriptor: int) -> None:
        if descriptor in open_ends:
            open_ends.remove(descriptor)
            os.close(descriptor)

    deadline = time.monotonic() + timeout
    try:
        for index, group in enumerate(split(names, processes)):
            spec = {
                "address": f"localhost:{server.port}",
                "names": group,
                "pki": str(pki) if pki else None,
                "shapes": shapes,
                "mode": mode,
                "out": str(directory / f"worker-{index}.out.json"),
                "ready_fd": ready_write,
                "go_fd": go_read,
                **extra,
            }
            path = directory / f"worker-{index}.json"
            path.write_text(json.dumps(spec))
            log = (directory / f"worker-{index}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.fedagg_worker", str(path)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(ready_write, go_read),
                )
            )
        close(ready_write)
        close(go_read)
        _wait_ready(ready_read, workers, server, deadline)
        close(go_write)  # the barrier opens: every worker reads the end of file at once
        while any(worker.poll() is None for worker in workers):
            if server.process.poll() not in (None, 0):  # 0: it has sent every quit job and exited
                why = "killed over the memory limit" if server.watch.killed else "failed"
                raise RuntimeError(f"{server.name} {why} before its collaborators finished")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: the collaborators did not finish within {timeout:.0f} s")
            time.sleep(0.2)
        codes = [worker.wait() for worker in workers]
    finally:
        for descriptor in list(open_ends):
            close(descriptor)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    outputs = []
    for index, code in enumerate(codes):
        out = directory / f"worker-{index}.out.json"
        if code != 0 or not out.exists():
            log_text = (directory / f"worker-{index}.log").read_text(errors="replace")[-3000:]
            errors = json.loads(out.read_text())["errors"][:5] if out.exists() else []
            raise RuntimeError(f"worker {index} exited with {code}: {errors}\n{log_text}")
        outputs.append(json.loads(out.read_text()))
    return outputs


def _wait_ready(
    ready: int, workers: list[subprocess.Popen[bytes]], server: RunningServer, deadline: float
) -> None:
    """Read one byte per worker from ``ready``; fail if a worker or the server exits, or at ``deadline``."""
    missing = len(workers)
    while missing:
        readable, _, _ = select.select(
            [ready], [], [], 1.0
        )  # a timeout only to notice exits and the deadline
        if readable:
            got = os.read(ready, missing)
            if not got:
                raise RuntimeError(f"{missing} worker(s) exited before they were ready")
            missing -= len(got)
        elif any(worker.poll() is not None for worker in workers) or server.process.poll() is not None:
            raise RuntimeError(f"{server.name}: a worker or the server exited before every worker was ready")
        elif time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: {missing} worker(s) not ready in time")


@dataclass(frozen=True)
class FederationRun:
    """What the client side of a run measured: every call's timings, and each worker process's peak RSS."""

    calls: list[list[Any]]
    worker_peak_mib: list[float]
    """VmHWM of each worker process (one collaborator each when ``processes`` = collaborators)."""
    worker_cpu_seconds: list[float]
    """User + system CPU of each worker process, start to end."""
    worker_page_faults: list[int]
    """Minor page faults of each worker process (a page of fresh memory touched), start to end."""


def run_federation(
    server: RunningServer,
    names: list[str],
    shapes: dict[str, list[int]],
    pki: Path | None,
    directory: Path,
    processes: int,
    timeout: float = 900,
    **extra: Any,
) -> FederationRun:
    """Train ``names`` against ``server`` until it exits after the last quit job: every call's timings, and the
    workers' peak memory and CPU.

    ``extra`` goes into the workers' specs (e.g. ``spread``, see bench/fedagg_worker.py)."""
    try:
        server.watch.mark()
        outputs = run_workers(server, names, shapes, pki, directory, processes, timeout=timeout, **extra)
        code = server.wait(timeout=120)
        if code != 0:
            raise RuntimeError(f"{server.name} exited with {code}; see {server.log}")
    finally:
        server.kill()
    return FederationRun(
        [calls for output in outputs for calls in output["calls"].values()],
        [output["peak_rss_mib"] for output in outputs],
        [output["cpu_seconds"] for output in outputs],
        [output["page_faults"] for output in outputs],
    )
