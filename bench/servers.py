"""Starting the two aggregators under comparison, and watching their memory."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "tests" / "interop" / "openfl_side" / "oracle_aggregator.py"
FEDERATION_UUID = "bench_0123abcd"
AGGREGATOR_UUID = f"aggregator_{FEDERATION_UUID}"
_FEDAGG_PORT = re.compile(r"federation listening: federation=\S+:(\d+)")


@dataclass
class MemoryWatch:
    """Samples a process's resident memory until stopped; keeps the peaks (MiB)."""

    pid: int
    peak_rss: float = 0.0
    peak_anonymous: float = 0.0
    baseline_rss: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.baseline_rss = self._read().get("VmRSS", 0.0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            status = self._read()
            self.peak_rss = max(self.peak_rss, status.get("VmHWM", 0.0))
            self.peak_anonymous = max(self.peak_anonymous, status.get("RssAnon", 0.0))

    def _read(self) -> dict[str, float]:
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except OSError:
            return {}
        values = {}
        for line in lines:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0]) / 1024
        return values


@dataclass
class RunningServer:
    """An aggregator process and the port it serves."""

    name: str
    process: subprocess.Popen[str]
    port: int

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)


def start_fedagg(workdir: Path, pki: Path, collaborators: list[str], init_model: Path) -> RunningServer:
    config = {
        "federation": {
            "federation_uuid": FEDERATION_UUID,
            "collaborators": collaborators,
            "rounds_to_train": 1,
            "initial_model": str(init_model),
            "sleep_seconds": 1,
        },
        "server": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "auth_failure_max_delay": 0,
            "tls": {"certificate_dir": str(pki / "aggregator")},
        },
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
        "storage": {"state_dir": str(workdir / "state")},
        "logging": {"level": "warning"},
    }
    path = workdir / "fedagg.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "fedagg.cli", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    config["logging"] = {"level": "info"}
    path.write_text(yaml.safe_dump(config))
    assert process.stderr is not None
    port = _read_port(process, _FEDAGG_PORT)
    return RunningServer("fedagg", process, port)


def start_openfl(
    python: Path, workdir: Path, pki: Path, collaborators: list[str], init_model: Path
) -> RunningServer:
    output = workdir / "openfl"
    output.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            str(python),
            str(ORACLE),
            "--port",
            "0",
            "--collaborators",
            ",".join(collaborators),
            "--rounds",
            "1",
            "--init-model",
            str(init_model),
            "--federation-uuid",
            FEDERATION_UUID,
            "--aggregator-uuid",
            AGGREGATOR_UUID,
            "--ca",
            str(pki / "aggregator" / "ca.crt"),
            "--cert",
            str(pki / "aggregator" / "tls.crt"),
            "--key",
            str(pki / "aggregator" / "tls.key"),
            "--state-dir",
            str(output),
            "--output",
            str(output),
            "--record-models",
            "false",
            "--log-level",
            "WARNING",
            "--timeout",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return RunningServer("openfl", process, _read_port(process, re.compile(r"PORT=(\d+)"), stdout=True))


def _read_port(process: subprocess.Popen[str], pattern: re.Pattern[str], stdout: bool = False) -> int:
    stream = process.stdout if stdout else process.stderr
    assert stream is not None
    deadline = time.monotonic() + 60
    for line in stream:
        if match := pattern.search(line):
            threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()  # keep draining
            return int(match[1])
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the aggregator exited with {process.wait()} before listening")
