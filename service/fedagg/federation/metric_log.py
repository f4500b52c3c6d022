"""The experiment's metric history with live subscribers (what GetMetricStream serves)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

AGGREGATOR_ORIGIN = "aggregator"


@dataclass(frozen=True)
class MetricRecord:
    """A metric reported by a collaborator (``origin`` = its name) or aggregated (``origin`` = "aggregator")."""

    round_number: int
    origin: str
    task: str
    name: str
    value: float
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {**asdict(self), "tags": list(self.tags)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricRecord:
        """Inverse of :meth:`to_json`."""
        return cls(**{**data, "tags": tuple(data["tags"])})


MetricListener = Callable[[MetricRecord | None], None]
"""Receives each new record, then ``None`` once when the experiment has finished."""


class MetricLog:
    """Append-only metric history. Thread-safe; listeners are called with the log's lock released."""

    def __init__(self) -> None:
        # Guards _records, _listeners and _closed; never held across I/O or a listener call (lock order: leaf,
        # taken after the federation's locks).
        self._lock = threading.Lock()
        self._records: list[MetricRecord] = []
        self._listeners: list[MetricListener] = []
        self._closed = False

    def extend(self, records: list[MetricRecord]) -> None:
        """Add records and pass them to every listener."""
        with self._lock:
            self._records.extend(records)
            listeners = list(self._listeners)
        for listener in listeners:
            for record in records:
                listener(record)

    def history(self) -> list[MetricRecord]:
        """Every record so far."""
        with self._lock:
            return list(self._records)

    def subscribe(self, listener: MetricListener) -> tuple[list[MetricRecord], bool, Callable[[], None]]:
        """Atomically take the history and register ``listener`` for what follows.

        Returns ``(history, closed, unsubscribe)``; when ``closed`` the experiment has finished and the listener
        is not registered (the history is complete).
        """
        with self._lock:
            history = list(self._records)
            if self._closed:
                return history, True, lambda: None
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return history, False, unsubscribe

    def close(self) -> None:
        """The experiment has finished: tell listeners the history is complete."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(None)
