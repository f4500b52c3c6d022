"""What a process costs, read from /proc: peak memory (VmHWM, RssAnon, RssFile) and CPU seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20
_TICKS = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, float]:
    """The ``kB`` fields of /proc/PID/status, in MiB (empty once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process so far (its threads included), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class ProcessWatch:
    """Samples a process every ``interval`` seconds until stopped.

    ``peak_hwm`` is the kernel's own high-water mark of resident memory (VmHWM, exact); ``peak_anon`` and
    ``peak_file`` are the largest sampled RssAnon (heap, buffers) and RssFile (mapped files, e.g. model files
    served from the page cache). ``cpu`` is CPU seconds since :meth:`start` (or since :meth:`mark`).
    """

    pid: int
    interval: float = 0.02
    limit_mib: float = 0.0
    """Kill the process (SIGKILL) once its resident memory exceeds this (0: no limit); see :attr:`killed`."""
    killed: bool = False
    peak_hwm: float = 0.0
    peak_anon: float = 0.0
    peak_file: float = 0.0
    baseline_rss: float = 0.0
    cpu_start: float = 0.0
    cpu_last: float = 0.0
    peak_rss: float = 0.0
    peak_rss_at: float = 0.0
    """Wall-clock time (time.time()) of the largest sampled VmRSS; likewise for RssAnon and RssFile."""
    peak_anon_at: float = 0.0
    peak_file_at: float = 0.0
    timeline: list[tuple[float, float, float]] = field(default_factory=list)
    """Every sample: (time.time(), RssAnon, RssFile) in MiB."""
    cpu_timeline: list[tuple[float, float]] = field(default_factory=list)
    """Every sample: (time.time(), CPU seconds so far)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessWatch:
        self.baseline_rss = status(self.pid).get("VmRSS", 0.0)
        self.cpu_start = self.cpu_last = cpu_seconds(self.pid) or 0.0
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{self.pid}")
        self._thread.start()
        return self

    def mark(self) -> None:
        """Count CPU from now on."""
        self.cpu_start = cpu_seconds(self.pid) or self.cpu_last

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def cpu(self) -> float:
        return self.cpu_last - self.cpu_start

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        values = status(self.pid)
        if not values:
            return
        now = time.time()
        self.timeline.append((now, values.get("RssAnon", 0.0), values.get("RssFile", 0.0)))
        self.peak_hwm = max(self.peak_hwm, values.get("VmHWM", 0.0))
        if values.get("VmRSS", 0.0) > self.peak_rss:
            self.peak_rss, self.peak_rss_at = values["VmRSS"], now
        if values.get("RssAnon", 0.0) > self.peak_anon:
            self.peak_anon, self.peak_anon_at = values["RssAnon"], now
        if values.get("RssFile", 0.0) > self.peak_file:
            self.peak_file, self.peak_file_at = values["RssFile"], now
        if self.limit_mib and values.get("VmRSS", 0.0) > self.limit_mib and not self.killed:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.cpu_last = cpu
            self.cpu_timeline.append((now, cpu))

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent between two wall-clock times (time.time()), from the samples around them."""

        def at(moment: float) -> float:
            before = [cpu for sampled, cpu in self.cpu_timeline if sampled <= moment]
            return before[-1] if before else self.cpu_start

        return at(end) - at(start)
