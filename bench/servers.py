"""Starting the aggregators under comparison as processes: fedagg serve, OpenFL 1.7.1's own aggregator, and the
null server (bench/null_server.py, the floor)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procfs import ProcessWatch

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "tests" / "interop" / "openfl_side" / "oracle_aggregator.py"
FEDERATION_UUID = "bench_0123abcd"
AGGREGATOR_UUID = f"aggregator_{FEDERATION_UUID}"
_FEDAGG_PORT = re.compile(r"federation listening: federation=\S+:(\d+)")
_OPENFL_PORT = re.compile(r"PORT=(\d+)")
SERVER_MEMORY_LIMIT_MIB = 12 * 1024
"""A server whose resident memory passes this is killed and its run reported as infeasible: the machine
(24 GiB) is shared with the collaborators and with other people's work."""
_FEDAGG_ROUND = re.compile(r"round (\d+) finished: (\d+) contributor\(s\), aggregation ([\d.]+)s")


def openfl_python() -> Path | None:
    """The OpenFL 1.7.1 venv's python (``scripts/openfl-venv`` builds it on first use), None if it cannot."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "openfl-venv")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def clean_env() -> dict[str, str]:
    """Environment for OpenFL's processes: without this venv's paths, so OpenFL never sees fedagg's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


@dataclass
class RunningServer:
    """An aggregator process, the port it serves, its log file and a /proc watch started once it listened."""

    name: str
    process: subprocess.Popen[str]
    port: int
    log: Path
    watch: ProcessWatch

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            self.watch.stop()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.watch.stop()

    def aggregation_seconds(self) -> list[float]:
        """fedagg only: the aggregation time of each round end (from its log)."""
        return [float(m[3]) for m in _FEDAGG_ROUND.finditer(self.log.read_text(errors="replace"))]


def fedagg_config(
    workdir: Path,
    pki: Path | None,
    collaborators: list[str],
    init_model: Path,
    rounds: int,
    **sections: dict[str, Any],
) -> Path:
    """A fedagg configuration with stock settings, except loopback, ephemeral ports and no Kubernetes hook."""
    config: dict[str, Any] = {
        "federation": {
            "federation_uuid": FEDERATION_UUID,
            "collaborators": collaborators,
            "rounds_to_train": rounds,
            "initial_model": str(init_model),
        },
        "server": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "tls": {"certificate_dir": str(pki / "aggregator")} if pki else {"mode": "insecure"},
        },
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
        "storage": {"state_dir": str(workdir / "state")},
        "logging": {"level": "info"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = workdir / "fedagg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_fedagg(
    workdir: Path,
    pki: Path | None,
    collaborators: list[str],
    init_model: Path,
    rounds: int = 1,
    **sections: dict[str, Any],
) -> RunningServer:
    """``fedagg serve`` in a subprocess, listening."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = fedagg_config(workdir, pki, collaborators, init_model, rounds, **sections)
    log = workdir / "fedagg.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "fedagg.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = _read_port(process, process.stderr, _FEDAGG_PORT, log)
    return RunningServer(
        "fedagg", process, port, log, ProcessWatch(process.pid, limit_mib=SERVER_MEMORY_LIMIT_MIB).start()
    )


def start_openfl(
    python: Path, workdir: Path, pki: Path | None, collaborators: list[str], init_model: Path, rounds: int = 1
) -> RunningServer:
    """OpenFL 1.7.1's own Aggregator and AggregatorGRPCServer (tests/interop/openfl_side), listening.

    The default plan's aggregator: RandomGroupedAssigner, WeightedAverage, wait for every collaborator,
    db_store_rounds 2, delta updates, OpenFL's sleep of 10 s; only the per-round model recording that the
    interop tests need is off.
    """
    output = workdir / "openfl"
    output.mkdir(parents=True, exist_ok=True)
    tls = (
        [
            "--ca",
            str(pki / "aggregator" / "ca.crt"),
            "--cert",
            str(pki / "aggregator" / "tls.crt"),
            "--key",
            str(pki / "aggregator" / "tls.key"),
        ]
        if pki
        else []
    )
    log = workdir / "openfl.log"
    process = subprocess.Popen(
        [
            str(python),
            str(ORACLE),
            "--port",
            "0",
            "--collaborators",
            ",".join(collaborators),
            "--rounds",
            str(rounds),
            "--init-model",
            str(init_model),
            "--federation-uuid",
            FEDERATION_UUID,
            "--aggregator-uuid",
            AGGREGATOR_UUID,
            *tls,
            "--state-dir",
            str(output),
            "--output",
            str(output),
            "--record-models",
            "false",
            "--log-level",
            "INFO",
            "--timeout",
            "1800",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=clean_env(),
    )
    port = _read_port(process, process.stdout, _OPENFL_PORT, None)
    return RunningServer(
        "openfl", process, port, log, ProcessWatch(process.pid, limit_mib=SERVER_MEMORY_LIMIT_MIB).start()
    )


def start_null(
    workdir: Path, pki: Path | None, collaborators: list[str], init_model: Path, rounds: int = 1
) -> RunningServer:
    """The null server (bench/null_server.py), listening."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "null.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.null_server",
            "--init-model",
            str(init_model),
            "--collaborators",
            ",".join(collaborators),
            "--rounds",
            str(rounds),
            "--federation-uuid",
            FEDERATION_UUID,
            "--aggregator-uuid",
            AGGREGATOR_UUID,
            *(["--pki", str(pki)] if pki else []),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        cwd=ROOT,
    )
    port = _read_port(process, process.stdout, _OPENFL_PORT, None)
    return RunningServer(
        "null", process, port, log, ProcessWatch(process.pid, limit_mib=SERVER_MEMORY_LIMIT_MIB).start()
    )


def _read_port(
    process: subprocess.Popen[str], stream: Any, pattern: re.Pattern[str], copy_to: Path | None
) -> int:
    """Read ``stream`` until ``pattern`` gives the port; keep draining it (into ``copy_to``) afterwards."""
    assert stream is not None
    sink = copy_to.open("w") if copy_to is not None else None
    deadline = time.monotonic() + 120
    for line in stream:
        if sink is not None:
            sink.write(line)
            sink.flush()
        if match := pattern.search(line):

            def drain() -> None:
                for rest in stream:
                    if sink is not None:
                        sink.write(rest)
                        sink.flush()
                if sink is not None:
                    sink.close()

            threading.Thread(target=drain, daemon=True).start()
            return int(match[1])
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the aggregator exited with {process.wait()} before listening")
