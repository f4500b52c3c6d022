"""Two ``fedagg serve`` replicas on one state directory, and when their logs say things happened."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.ports import free_port
from tests.faults.harness import NAMES, QUIT_REDELIVERY_SECONDS, Setup
from tests.support.pki import Pki
from tests.support.process import write_config

TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def logged_at(log: str, fragment: str) -> datetime:
    """When the first log line holding ``fragment`` was written (local wall clock, millisecond precision)."""
    line = next(line for line in log.splitlines() if fragment in line)
    match = TIMESTAMP.match(line)
    assert match, line
    return _parsed(match[1])


def _parsed(timestamp: str) -> datetime:
    return datetime.strptime(timestamp, "%Y-%m-%d %H:%M:%S,%f")


RETRYING = "Attempting to connect to aggregator"
"""What an OpenFL collaborator logs before it waits to retry a failed call."""


def resumed_at(log: str, since: datetime) -> datetime | None:
    """When an OpenFL collaborator whose log is ``log`` got on after the outage that began at ``since``: the
    first line it logged after its last retry wait (None if it never had to retry)."""
    stamped = [(_parsed(match[1]), line) for line in log.splitlines() if (match := TIMESTAMP.match(line))]
    after = [(moment, line) for moment, line in stamped if moment >= since]
    retries = [index for index, (_, line) in enumerate(after) if RETRYING in line]
    if not retries or retries[-1] + 1 == len(after):
        return None
    return after[retries[-1] + 1][0]


def replicas(
    tmp_path: Path,
    pki: Pki,
    setup: Setup,
    model: Path,
    sections: Callable[[int], dict[str, dict[str, Any]]] | None = None,
) -> tuple[list[int], list[Path]]:
    """Two replicas' configurations: their own federation ports, one shared state directory, and each replica's
    extra ``sections(index)`` (its election settings), if any."""
    ports = [free_port(), free_port()]
    configs = []
    for index, port in enumerate(ports):
        directory = tmp_path / f"replica{index}"
        directory.mkdir()
        server = {"port": port, "quit_redelivery_seconds": QUIT_REDELIVERY_SECONDS}
        state = {"state_dir": str(setup.state)}  # one state directory for both
        configs.append(
            write_config(
                directory,
                pki,
                NAMES,
                setup.rounds,
                model,
                server=server,
                storage=state,
                **(sections(index) if sections else {}),
            )
        )
    return ports, configs


def elected_on(
    etcd_url: str, lease: str, lease_seconds: int = 3
) -> Callable[[int], dict[str, dict[str, Any]]]:
    """Each replica's ``ha`` section: an election on the etcd server at ``etcd_url`` with short timings, replica
    ``i`` named ``replica<i>``."""

    def sections(index: int) -> dict[str, dict[str, Any]]:
        return {
            "ha": {
                "enabled": True,
                "backend": "etcd",
                "etcd_endpoint": etcd_url,
                "lease_name": lease,
                "identity": f"replica{index}",
                "lease_seconds": lease_seconds,
                "renew_deadline_seconds": lease_seconds * 2 / 3,
                "retry_seconds": 0.2,
            }
        }

    return sections
