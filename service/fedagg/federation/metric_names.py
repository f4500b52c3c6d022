"""Bounded metric names: a collaborator's metric names are data, not a way to create metric series.

Each distinct metric name of a task is a series: in the metric log (GetMetricStream), in the round's aggregated
metrics and in the ``fedagg_aggregated_metric{task, metric}`` gauge. A task may report at most
``limits.metric_names_per_task`` names over the experiment, first come first served; values of any other name
are left out of the accepted upload's contribution (so of the metric log and of the aggregates), never creating a
series, and counted (:meth:`~fedagg.federation.events.FederationListener.metric_names_dropped`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from fedagg.federation.events import FederationListener
from fedagg.federation.metric_log import MetricRecord
from fedagg.federation.rounds import AcceptedUpload

log = logging.getLogger(__name__)


class MetricNames:
    """The metric names each task has reported (module docstring).

    Single-owner: used only with the federation's commit lock held (commits, and the start-up that replays them in
    the same order), so it needs no lock of its own.
    """

    def __init__(self, per_task: int, listener: FederationListener) -> None:
        self._per_task = per_task
        self._listener = listener
        self._by_task: dict[str, set[str]] = {}

    def note(self, history: Iterable[MetricRecord]) -> None:
        """Take the names of the metric history a restart resumes with."""
        for record in history:
            self._admits(record.task, record.name)

    def bounded(self, upload: AcceptedUpload) -> AcceptedUpload:
        """``upload`` without the metric values whose names are beyond the task's bound (counted)."""
        contribution = upload.contribution
        kept = tuple(
            metric for metric in contribution.metrics if self._admits(contribution.task, metric.name)
        )
        dropped = len(contribution.metrics) - len(kept)
        if not dropped:
            return upload
        log.warning(
            "%s's upload for %r: %d metric value(s) left out: their names are beyond "
            "limits.metric_names_per_task (%d)",
            contribution.collaborator,
            contribution.task,
            dropped,
            self._per_task,
        )
        self._listener.metric_names_dropped(contribution.task, dropped)
        return replace(upload, contribution=replace(contribution, metrics=kept))

    def _admits(self, task: str, name: str) -> bool:
        names = self._by_task.setdefault(task, set())
        if name not in names and len(names) < self._per_task:
            names.add(name)
        return name in names
