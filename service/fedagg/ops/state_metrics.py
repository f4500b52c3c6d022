"""Gauges that describe the federation's current state (round, collaborators by state, experiment state, the state
volume), read from the federation at scrape time by a collector, so they can never drift from the truth."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fedagg.federation.events import COLLABORATOR_STATES, ExperimentStatus

log = logging.getLogger(__name__)

EXPERIMENT_STATES = ("restoring", "pending", "in_progress", "finished", "draining")


def _collaborator_families(status: ExperimentStatus) -> Iterator[Metric]:
    """Per-collaborator series, bounded by the plan's collaborator list."""
    states = GaugeMetricFamily(
        "fedagg_collaborator_state",
        "1 for each collaborator's state in the current round (silent: not training, no call for 3 sleep periods).",
        labels=["collaborator", "state"],
    )
    contacts = GaugeMetricFamily(
        "fedagg_collaborator_last_contact_timestamp_seconds",
        "When each collaborator last called the aggregator (absent until it has called).",
        labels=["collaborator"],
    )
    for collaborator in status.collaborators:
        for state in COLLABORATOR_STATES:
            states.add_metric([collaborator.name, state], 1.0 if collaborator.status == state else 0.0)
        if collaborator.last_contact is not None:
            contacts.add_metric([collaborator.name], collaborator.last_contact)
    yield states
    yield contacts


AGGREGATION_FIGURES = {
    "epsilon": (
        "fedagg_privacy_epsilon",
        "Privacy spent so far by the task's server-side differential privacy: epsilon at fedagg_privacy_delta.",
    ),
    "delta": ("fedagg_privacy_delta", "The delta that fedagg_privacy_epsilon is reported for."),
    "noise_stddev": (
        "fedagg_privacy_noise_stddev",
        "Standard deviation of the Gaussian noise added to the task's last aggregate.",
    ),
    "clipping_norm": (
        "fedagg_update_clipping_norm",
        "The clipping norm of the task's next round (adaptive).",
    ),
    "left_out": (
        "fedagg_contributions_left_out",
        "Contributions the task's robust aggregation (Krum, Multi-Krum, Bulyan) left out of the last aggregate.",
    ),
    "clipped_share": (
        "fedagg_updates_clipped_ratio",
        "Share of the task's contributions whose update was clipped in the last round.",
    ),
}
"""An aggregator's reported figures with a metric of their own; any other figure is a fedagg_aggregator_figure."""


def _aggregation_families(status: ExperimentStatus) -> Iterator[Metric]:
    """What each task's aggregator reports (bounded by the plan's tasks and the aggregator's figures)."""
    families = {
        figure: GaugeMetricFamily(name, text, labels=["task"])
        for figure, (name, text) in AGGREGATION_FIGURES.items()
    }
    other = GaugeMetricFamily(
        "fedagg_aggregator_figure",
        "A figure a (plug-in) aggregator reports after each round, by task and figure.",
        labels=["task", "figure"],
    )
    for task, figures in status.aggregation:
        for figure, value in figures:
            if figure in families:
                families[figure].add_metric([task], value)
            else:
                other.add_metric([task, figure], value)
    yield from families.values()
    yield other


class FederationStateCollector(Collector):
    """Gauges read from the federation at scrape time."""

    def __init__(
        self,
        status: Callable[[], ExperimentStatus],
        draining: Callable[[], bool],
        state_dir: Path | None = None,
    ) -> None:
        self._status = status
        self._draining = draining
        self._state_dir = state_dir

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status()
            draining = self._draining()
        except Exception:  # a collector must never fail a scrape
            log.exception("reading the federation state for /metrics failed")
            return
        yield from self._families(status, draining)

    def _families(self, status: ExperimentStatus, draining: bool) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fedagg_round",
            "Current round (equals rounds to train once finished).",
            value=status.current_round,
        )
        yield GaugeMetricFamily(
            "fedagg_rounds_to_train", "Rounds the experiment trains.", value=status.total_rounds
        )
        collaborators = GaugeMetricFamily(
            "fedagg_collaborators",
            "Collaborators by state in the current round (a partition: the states add up to the authorized).",
            labels=["state"],
        )
        for state in COLLABORATOR_STATES:
            collaborators.add_metric([state], sum(1 for c in status.collaborators if c.status == state))
        yield collaborators
        yield GaugeMetricFamily(
            "fedagg_collaborators_authorized",
            "Collaborators the plan authorizes.",
            value=len(status.collaborators),
        )
        yield GaugeMetricFamily(
            "fedagg_storage_failing",
            "1 while the state directory refuses writes (readiness is NOT_SERVING meanwhile).",
            value=float(status.storage_failing),
        )
        yield GaugeMetricFamily(
            "fedagg_round_end_failing",
            "1 while a round end waits for a retry after a failure (readiness is NOT_SERVING meanwhile).",
            value=float(status.round_end_failing),
        )
        state = "draining" if draining else status.status
        experiment = GaugeMetricFamily(
            "fedagg_experiment_state", "1 for the experiment's current state.", labels=["state"]
        )
        for name in EXPERIMENT_STATES:
            experiment.add_metric([name], 1.0 if name == state else 0.0)
        yield experiment
        yield GaugeMetricFamily(
            "fedagg_round_started_timestamp_seconds",
            "When the current round's first task was handed out (0 before; reset by a restart).",
            value=status.round_started or 0.0,
        )
        yield from _collaborator_families(status)
        yield from _aggregation_families(status)
        yield from self._volume_families()

    def _volume_families(self) -> Iterator[Metric]:
        if self._state_dir is None:
            return
        try:
            volume = os.statvfs(self._state_dir)
        except OSError:
            return
        yield GaugeMetricFamily(
            "fedagg_state_volume_size_bytes",
            "Size of the file system holding the state directory.",
            value=volume.f_blocks * volume.f_frsize,
        )
        yield GaugeMetricFamily(
            "fedagg_state_volume_available_bytes",
            "Bytes the aggregator may still write to the state directory's file system.",
            value=volume.f_bavail * volume.f_frsize,
        )

    def describe(self) -> Iterator[Metric]:
        """The families :meth:`collect` yields (their names are fixed), so the registry refuses duplicates."""
        yield from self.collect()
