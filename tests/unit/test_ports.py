"""The loopback ports handed to servers that must be told their port: never from the kernel's ephemeral range (which
outgoing connections draw from), never one already bound."""

from __future__ import annotations

import random
import socket

import pytest

from bench import ports


def test_a_port_comes_from_below_the_ephemeral_range_and_binds() -> None:
    first_ephemeral = int(ports.EPHEMERAL_RANGE.read_text().split()[0])
    port = ports.free_port()
    assert ports.LOWEST_PORT <= port < first_ephemeral
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


def test_a_bound_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken, socket.socket() as released:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        released.bind(("127.0.0.1", 0))
        bound, free = int(taken.getsockname()[1]), int(released.getsockname()[1])
        released.close()
        monkeypatch.setattr(random, "sample", lambda *_: [bound, free])
        assert ports.free_port() == free
