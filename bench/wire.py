"""The physical reference (a raw gRPC stream) and fedagg's own round throughput with its client library."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.clients import run_federation
from bench.models import shapes_for, write_init_model
from bench.openfl_cases import STEADY_FROM_ROUND, peak_phases, round_times
from bench.servers import ROOT, start_fedagg

PAGE_BYTES = 4096
"""A minor page fault's worth of fresh memory (the kernel's base page)."""


def raw_stream(pki: Path | None, total_bytes: int, streams: int = 1) -> dict[str, float]:
    """A trivial server and a client process; ``streams`` concurrent streams of ``total_bytes`` each."""
    suffix = ["--pki", str(pki)] if pki else []
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.raw_stream", "serve", *suffix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT="):
            raise RuntimeError(f"the raw stream server did not start: {line!r}")
        port = int(line.removeprefix("PORT="))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.raw_stream",
                "send",
                "--port",
                str(port),
                "--bytes",
                str(total_bytes),
                "--streams",
                str(streams),
                *suffix,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    finally:
        server.kill()
        server.wait()
    measured: dict[str, float] = json.loads(result.stdout)
    measured["bytes_per_second"] = measured["bytes"] / measured["seconds"]
    return measured


def fedagg_rounds(
    collaborators: int, params: int, rounds: int, work: Path, pki: Path | None, tensors: int = 8
) -> dict[str, Any]:
    """fedagg serve with ``collaborators`` processes of fedagg's client (one collaborator each)."""
    shapes = shapes_for(params, tensors)
    init = write_init_model(shapes, work / f"init-{params}-{tensors}.pbuf")
    names = [f"col-{index}" for index in range(collaborators)]
    directory = work / f"wire-{collaborators}-{params}-{time.monotonic_ns()}"
    server = start_fedagg(directory, pki, names, init, rounds)
    try:
        run = run_federation(server, names, shapes, pki, directory / "clients", collaborators)
    finally:
        shutil.rmtree(directory / "state", ignore_errors=True)  # spool and models: 3+ models of disk
    periods, actives, downloads, uploads = round_times(run.calls, rounds)
    model_bytes = params * 4
    mean_round = float(np.mean(periods))
    steady_round = float(np.mean(periods[STEADY_FROM_ROUND:])) if rounds > STEADY_FROM_ROUND else None
    return {
        "collaborators": collaborators,
        "model_bytes": model_bytes,
        "tensor_bytes": max(math.prod(shape) for shape in shapes.values()) * 4,
        "tensors": len(shapes),
        "round_seconds": periods,
        "active_seconds": actives,
        "download_seconds": downloads,
        "upload_seconds": uploads,
        "mean_round": mean_round,
        "bytes_per_second": 2 * collaborators * model_bytes / mean_round,
        "steady_bytes_per_second": None
        if steady_round is None
        else 2 * collaborators * model_bytes / steady_round,
        "peak_hwm_mib": server.watch.peak_hwm,
        "peak_anon_mib": server.watch.peak_anon,
        "client_peak_hwm_mib": max(run.worker_peak_mib),
        "client_cpu_seconds_per_round": max(run.worker_cpu_seconds) / rounds,
        "client_faulted_models_per_round": max(run.worker_page_faults) * PAGE_BYTES / model_bytes / rounds,
        "cpu_seconds": server.watch.cpu,
        "aggregation_seconds": server.aggregation_seconds(),
        "peak_phases": peak_phases(server.watch, run.calls),
    }
