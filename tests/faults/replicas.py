"""Two ``fedagg serve`` replicas on one state directory, and when their logs say things happened."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.faults.harness import NAMES, QUIT_REDELIVERY_SECONDS, Setup
from tests.support.pki import Pki
from tests.support.process import write_config
from tests.support.prometheus import free_port

TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def logged_at(log: str, fragment: str) -> datetime:
    """When the first log line holding ``fragment`` was written (local wall clock, millisecond precision)."""
    line = next(line for line in log.splitlines() if fragment in line)
    match = TIMESTAMP.match(line)
    assert match, line
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")


def replicas(
    tmp_path: Path,
    pki: Pki,
    setup: Setup,
    model: Path,
    sections: Callable[[int], dict[str, dict[str, Any]]] = lambda _index: {},
) -> tuple[list[int], list[Path]]:
    """Two replicas' configurations: their own federation ports, one shared state directory, and each replica's
    extra ``sections(index)`` (its election settings)."""
    ports = [free_port(), free_port()]
    configs = []
    for index, port in enumerate(ports):
        directory = tmp_path / f"replica{index}"
        directory.mkdir()
        server = {"port": port, "quit_redelivery_seconds": QUIT_REDELIVERY_SECONDS}
        state = {"state_dir": str(setup.state)}  # one state directory for both
        configs.append(
            write_config(
                directory, pki, NAMES, setup.rounds, model, server=server, storage=state, **sections(index)
            )
        )
    return ports, configs
