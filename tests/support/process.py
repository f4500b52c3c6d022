"""Running ``fedagg serve`` as a real subprocess on ephemeral loopback ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.support.pki import Pki
from tests.support.servers import FEDERATION_UUID

ROOT = Path(__file__).resolve().parents[2]
LIMIT_OPEN_FILES = (
    "-c",
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])",
)
"""``python -c`` that sets the open-file limit (soft and hard) to its first argument, then runs the rest."""

_OPS = re.compile(r"ops listening: ops=\S+:(\d+) metrics=\S+:(\d+)")
_FEDERATION = re.compile(r"federation listening: federation=\S+:(\d+)")


def write_config(
    directory: Path,
    pki: Pki | None,
    collaborators: tuple[str, ...],
    rounds: int,
    initial_model: Path,
    **sections: dict[str, Any],
) -> Path:
    """A fedagg config on 127.0.0.1 with ephemeral ports; ``sections`` are merged over the defaults."""
    config: dict[str, Any] = {
        "federation": {
            "federation_uuid": FEDERATION_UUID,
            "collaborators": list(collaborators),
            "rounds_to_train": rounds,
            "initial_model": str(initial_model),
            "sleep_seconds": 1,
        },
        "server": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "auth_failure_max_delay": 0,
            "tls": {"certificate_dir": str(pki.server_dir)} if pki else {"mode": "insecure"},
        },
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
            "drain_seconds": 0.5,
            "grace_seconds": 10,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
        "storage": {"state_dir": str(directory / "state")},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = directory / "fedagg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class FedaggProcess:
    """``fedagg serve`` in a subprocess; its log lines are collected and its ports parsed from them."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        environment: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        """``open_files``: the process's soft and hard limit on open files (None: inherited)."""
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {})}
        limited = [] if open_files is None else [*LIMIT_OPEN_FILES, str(open_files)]
        self.process = subprocess.Popen(
            [sys.executable, *limited, "-m", "fedagg.cli", "serve", "--config", str(config), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environment,
        )
        self.lines: list[str] = []
        self._log_ended = False
        self.ops_port = self.metrics_port = self.federation_port = 0
        self._new_line = threading.Condition()
        self._ops_ready = threading.Event()
        self._federation_ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            if match := _OPS.search(line):
                self.ops_port, self.metrics_port = int(match[1]), int(match[2])
                self._ops_ready.set()
            if match := _FEDERATION.search(line):
                self.federation_port = int(match[1])
                self._federation_ready.set()
        self._ops_ready.set()
        self._federation_ready.set()
        with self._new_line:
            self._log_ended = True  # wake whoever waits for a line that will never come
            self._new_line.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30) -> str:
        """The first log line matching ``pattern`` (a regular expression), as soon as it is written."""
        expression = re.compile(pattern)
        with self._new_line:
            self._new_line.wait_for(
                lambda: any(expression.search(line) for line in self.lines) or self._log_ended,
                timeout,
            )
            match = next((line for line in self.lines if expression.search(line)), None)
        assert match is not None, f"no log line matches {pattern!r}:\n{self.log()}"
        return match

    def wait_for_ops(self, timeout: float = 30) -> FedaggProcess:
        assert self._ops_ready.wait(timeout), self.log()
        assert self.ops_port, f"fedagg exited before listening:\n{self.log()}"
        return self

    def wait_for_federation(self, timeout: float = 30) -> FedaggProcess:
        assert self._federation_ready.wait(timeout), self.log()
        assert self.federation_port, f"fedagg exited before listening:\n{self.log()}"
        return self

    @property
    def address(self) -> str:
        return f"localhost:{self.federation_port}"

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def log(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> FedaggProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
