"""Loopback ports for servers that must be told their port before they listen (HAProxy, fedagg's tier port, and in the
tests etcd, Prometheus, OpenFL's aggregator, a plan's agg_addr).

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range it draws from for every
outgoing connection, so between choosing it and the server binding it any client in the suite may take it (seen in
CI: etcd failed with "address already in use"). These ports come from below that range instead, where the kernel
never assigns one by itself; a port that is bound already is skipped."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000
"""Below this are well-known and registered services' usual ports."""
TRIES = 64


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's ephemeral range."""
    first_ephemeral = _first_ephemeral_port()
    below = range(LOWEST_PORT, first_ephemeral)
    if len(below) < TRIES:
        return _kernel_port()
    for port in random.sample(below, TRIES):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free loopback port among {TRIES} tried in {LOWEST_PORT}-{first_ephemeral - 1}")


def _first_ephemeral_port() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _kernel_port() -> int:
    """The fallback where the ephemeral range leaves no room below it: whatever the kernel hands out."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
