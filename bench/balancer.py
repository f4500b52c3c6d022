"""HAProxy in TCP mode for the tier benchmark: the collaborators' single address in front of the pods, and one
byte-counting frontend per ingest replica in front of the root, with its stats socket for the byte counters.

The counters are bytes on the wire (TLS records, HTTP/2 frames and gRPC messages), the same for every pod: fedagg's
Prometheus byte counters cover only its Aggregator service (not the Tier service's claims, model fetches and
partials), and /proc/PID/io does not count gRPC's socket I/O (recvmsg/sendmsg are not read/write).
"""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port
from bench.procfs import ProcessWatch

CONFIG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level user
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend federation
    bind 127.0.0.1:{port}
    default_backend pods
backend pods
{servers}
{root_links}"""
ROOT_LINK = """\
frontend root-{replica}
    bind 127.0.0.1:{port}
    default_backend root-of-{replica}
backend root-of-{replica}
    server root 127.0.0.1:{root_port}
"""
NOT_INSTALLED = "haproxy is not installed (Debian package haproxy): the tier benchmark needs it"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


@dataclass(frozen=True)
class Traffic:
    """Bytes one side of a link received and sent."""

    received: int
    sent: int


@dataclass
class Balancer:
    """A running HAProxy: the federation's port, each replica's port to the root, and its stats socket."""

    process: subprocess.Popen[bytes]
    port: int
    root_ports: dict[str, int]
    stats: Path
    watch: ProcessWatch

    def counters(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat``: every row by (proxy, server) (``FRONTEND``/``BACKEND`` for the proxy's totals)."""
        with socket.socket(socket.AF_UNIX) as link:
            link.connect(str(self.stats))
            link.sendall(b"show stat\n")
            chunks = []
            while chunk := link.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(text.splitlines())}

    def pod_traffic(self) -> tuple[dict[str, Traffic], dict[str, Traffic]]:
        """(what each pod behind the federation port exchanged with the collaborators, what each replica
        exchanged with the root through its own frontend), from the pods' side. HAProxy counts ``bin`` in the
        request direction (client to server) and ``bout`` in the reply direction, on frontends and servers."""
        rows = self.counters()
        federation = {
            server: Traffic(int(row["bin"]), int(row["bout"]))
            for (proxy, server), row in rows.items()
            if proxy == "pods" and server not in ("FRONTEND", "BACKEND")
        }
        links = {replica: rows[(f"root-{replica}", "FRONTEND")] for replica in self.root_ports}
        root = {replica: Traffic(int(row["bout"]), int(row["bin"])) for replica, row in links.items()}
        return federation, root

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.watch.stop()


def start_balancer(
    directory: Path, pods: dict[str, int], root_port: int | None = None, replicas: Sequence[str] = ()
) -> Balancer:
    """HAProxy on a free loopback port in front of ``pods`` ({name: port}, round-robin by connection), and for each
    of ``replicas`` a frontend of its own in front of the root's ``root_port``."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError(NOT_INSTALLED)
    port = free_port()
    root_ports = {replica: free_port() for replica in replicas}
    stats = directory / "haproxy.sock"
    config = directory / "haproxy.cfg"
    config.write_text(
        CONFIG.format(
            stats=stats,
            port=port,
            servers="\n".join(f"    server {name} 127.0.0.1:{backend}" for name, backend in pods.items()),
            root_links="".join(
                ROOT_LINK.format(replica=replica, port=link, root_port=root_port)
                for replica, link in root_ports.items()
            ),
        )
    )
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused {config}: {check.stdout}{check.stderr}")
    log = (directory / "haproxy.log").open("wb")
    process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not stats.exists():  # HAProxy creates its stats socket once it is configured and listening
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"haproxy did not start; see {directory / 'haproxy.log'}")
        time.sleep(0.05)
    return Balancer(process, port, root_ports, stats, ProcessWatch(process.pid).start())
