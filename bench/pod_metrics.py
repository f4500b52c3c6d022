"""A pod's own byte counters, scraped from its Prometheus endpoint while it runs (the last scrape is kept: a pod's
metrics leave with it when it exits)."""

from __future__ import annotations

import re
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = (
    "fedagg_received_bytes_total",
    "fedagg_sent_bytes_total",
    "fedagg_tier_partial_bytes_received_total",
    "fedagg_tier_partial_bytes_sent_total",
)
"""What fedagg counts: its Aggregator service's request and reply bytes (gRPC messages), and the partial sums a
root kept (over all replicas) and a replica delivered."""
_OPS = re.compile(r"ops listening: ops=\S+:\d+ metrics=\S+:(\d+)")


def metrics_port(log: Path) -> int:
    """The metrics port from a ``fedagg serve`` log (it logs its ops ports before it listens for the federation)."""
    match = _OPS.search(log.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no metrics port in {log}")
    return int(match[1])


@dataclass
class MetricsScraper:
    """Scrapes ``http://127.0.0.1:<port>/metrics`` every ``interval`` seconds until stopped; :attr:`last` holds
    :data:`COUNTERS` (summed over labels) from the last scrape that answered."""

    port: int
    interval: float = 0.25
    last: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MetricsScraper:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"scrape-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._scrape()
            if self._stop.wait(self.interval):
                return

    def _scrape(self) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return  # not up yet, or gone: keep the last values
        values = dict.fromkeys(COUNTERS, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in values:
                    values[sample.name] += sample.value
        self.last = values
