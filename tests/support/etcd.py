"""A real etcd v3 server on loopback (Debian's etcd-server 3.4), for the election's compare-and-swap tests: unlike
kmock, it assigns revisions and refuses a write whose compared revision is stale."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.ports import free_port
from tests.conftest import require

READY_LINE = "ready to serve client requests"
START_SECONDS = 30.0
START_ATTEMPTS = 5
PORT_TAKEN = "address already in use"


@dataclass
class RunningEtcd:
    """A started etcd server: its client URL; :meth:`stop` ends it early (a store that became unreachable)."""

    url: str
    process: subprocess.Popen[str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def etcd_server(directory: Path) -> Iterator[RunningEtcd]:
    """Start etcd with its data in ``directory`` on ephemeral loopback ports.

    etcd cannot report a port it bound itself, so the ports are chosen first; another process may take one of them
    before etcd binds it (the kernel hands the same range to outgoing connections). Such a start is retried on new
    ports, a bounded number of times; any other failure to start fails at once with etcd's own words."""
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None)
    require(
        binary is not None,
        "etcd is not installed (Debian package etcd-server; make test installs it as root)",
    )
    assert binary is not None
    for attempt in range(1, START_ATTEMPTS + 1):
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        process = subprocess.Popen(
            [
                binary,
                "--name=fedagg-test",
                f"--data-dir={directory / f'etcd-{attempt}'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=fedagg-test={peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        running = RunningEtcd(client, process)
        try:
            seen = _until_ready(process)
        except BaseException:
            running.stop()
            raise
        if seen is None:
            break
        running.stop()
        if not any(PORT_TAKEN in line for line in seen) or attempt == START_ATTEMPTS:
            raise AssertionError(f"etcd did not start (attempt {attempt}):\n" + "".join(seen[-20:]))
    try:
        yield running
    finally:
        running.stop()


def _until_ready(process: subprocess.Popen[str]) -> list[str] | None:
    """None once etcd says it serves clients; else the lines it wrote before it exited or stayed silent too long."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr

    def read() -> None:
        for line in stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=START_SECONDS)
        except queue.Empty:
            return seen
        if line is None:
            return seen
        seen.append(line)
        if READY_LINE in line:
            return None


@pytest.fixture(scope="module", name="etcd")
def etcd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One etcd server for a test module (import this fixture into the module); tests use keys of their own."""
    with etcd_server(tmp_path_factory.mktemp("etcd")) as server:
        yield server.url
