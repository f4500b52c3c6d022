"""A real Prometheus server (Debian package) scraping targets on loopback, with a small query client."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.ports import free_port
from tests.conftest import require


def promtool() -> str:
    path = shutil.which("promtool")
    require(
        path is not None,
        "promtool is not installed (Debian package prometheus; make test installs it as root)",
    )
    assert path is not None
    return path


class PrometheusServer:
    """Prometheus scraping ``targets`` every second; stopped on exit."""

    def __init__(self, directory: Path, targets: Sequence[str], rule_files: Sequence[Path] = ()) -> None:
        binary = shutil.which("prometheus")
        require(binary is not None, "prometheus is not installed (Debian package prometheus)")
        assert binary is not None
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "fedagg", "static_configs": [{"targets": list(targets)}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """Evaluate an instant query; return the result vector."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expression: str, timeout: float = 60) -> float:
        """Poll until ``expression`` returns a value (scrapes are asynchronous); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.value(expression)
            if value is not None:
                return value
            time.sleep(0.5)
        raise AssertionError(f"no data for {expression} after {timeout}s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self._log.close()

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
