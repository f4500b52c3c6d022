"""A real L4 balancer for tests: HAProxy in TCP mode on a loopback port, checking its backends by TCP connect.

While no backend is up it accepts a connection and closes it (no TLS alert), as HAProxy and Gateways do during a
failover: the client sees a bare close.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require

CONFIG = """\
global
    maxconn 512
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch
frontend federation
    bind 127.0.0.1:{port}
    default_backend aggregators
backend aggregators
{servers}
"""


@contextmanager
def balancing(directory: Path, port: int, backends: Sequence[int]) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy on ``127.0.0.1:port`` in front of ``127.0.0.1:<backend>`` for each backend (checked every 100 ms)."""
    binary = shutil.which("haproxy")
    require(
        binary is not None, "haproxy is not installed (Debian package haproxy; make test installs it as root)"
    )
    assert binary is not None
    servers = "\n".join(
        f"    server replica{index} 127.0.0.1:{backend} check inter 100ms fall 1 rise 1"
        for index, backend in enumerate(backends)
    )
    config = directory / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)
