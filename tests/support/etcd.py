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

from tests.conftest import require
from tests.support.prometheus import free_port

READY_LINE = "ready to serve client requests"
START_SECONDS = 30.0


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
    """Start etcd with its data in ``directory`` on ephemeral loopback ports."""
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None)
    require(
        binary is not None,
        "etcd is not installed (Debian package etcd-server; make test installs it as root)",
    )
    assert binary is not None
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            "--name=fedagg-test",
            f"--data-dir={directory / 'etcd'}",
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
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any(READY_LINE in line for line in seen):
            try:
                seen.append(lines.get(timeout=START_SECONDS))
            except queue.Empty:
                raise AssertionError("etcd did not start:\n" + "".join(seen[-20:])) from None
        yield RunningEtcd(client, process)
    finally:
        RunningEtcd(client, process).stop()


@pytest.fixture(scope="module", name="etcd")
def etcd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One etcd server for a test module (import this fixture into the module); tests use keys of their own."""
    with etcd_server(tmp_path_factory.mktemp("etcd")) as server:
        yield server.url
