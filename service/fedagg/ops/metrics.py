"""The Prometheus exporter's federation metrics (``fedagg_*``).

Counters and histograms are fed by federation and server events (:class:`FederationMetrics` is a
:class:`~fedagg.federation.events.FederationListener`); gauges that describe the current state are in
:mod:`fedagg.ops.state_metrics`, the election's in :mod:`fedagg.ops.leader_metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from fedagg import __version__
from fedagg.federation.contribution import RejectionReason
from fedagg.federation.events import (
    FederationListener,
    RoundSummary,
)
from fedagg.federation.intake import IgnoreReason
from fedagg.server.auth import REFUSAL_REASONS
from fedagg.server.observer import Limit
from fedagg.server.tls import CertificateBundle, CertificateError

log = logging.getLogger(__name__)

QUARANTINE_KINDS = ("upload", "rejection", "close_decision", "checkpoint", "model", "metrics")
STORAGE_OPERATIONS = ("spool", "rejection", "round_end", "quit")
BACKGROUND_TASKS = ("round_clock",)
OTHER_TASK = "(not in the plan)"
ROUND_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
WORK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, float("inf"))


class FederationMetrics(FederationListener):
    """Counters and histograms of what happens in the federation. Thread-safe."""

    def __init__(
        self, registry: CollectorRegistry, per_collaborator: bool = False, tasks: Collection[str] = ()
    ) -> None:
        self._tasks = frozenset(tasks)
        self.rounds_completed = Counter("fedagg_rounds_completed", "Rounds aggregated.", registry=registry)
        self.round_duration = Histogram(
            "fedagg_round_duration_seconds",
            "From a round's first task to its end.",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )
        self.aggregation_duration = Histogram(
            "fedagg_aggregation_duration_seconds",
            "Time to compute a round's aggregates.",
            buckets=WORK_BUCKETS,
            registry=registry,
        )
        self.task_results = Counter(
            "fedagg_task_results",
            "Task results received, by task and outcome (accepted, ignored, rejected).",
            ["task", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "fedagg_contributions_rejected",
            "Uploads excluded from their round because their content is unusable, by reason.",
            ["reason"],
            registry=registry,
        )
        self.ignored = Counter(
            "fedagg_contributions_ignored",
            "Uploads answered OK but not used (wrong round, duplicate, straggler...), by reason.",
            ["reason"],
            registry=registry,
        )
        self.quarantined = Counter(
            "fedagg_state_files_quarantined",
            "Corrupt state files moved to quarantine/, by kind.",
            ["kind"],
            registry=registry,
        )
        self.round_end_failures = Counter(
            "fedagg_round_end_failures",
            "Round ends that could not be committed (retried).",
            registry=registry,
        )
        self.storage_errors = Counter(
            "fedagg_storage_errors",
            "Operations the state directory refused, by operation.",
            ["operation"],
            registry=registry,
        )
        self.held_tasks = Gauge(
            "fedagg_get_tasks_held",
            "GetTasks calls held until their collaborator has work (long poll).",
            registry=registry,
        )
        self.reply_bytes = Gauge(
            "fedagg_reply_bytes_in_flight",
            "Bytes of tensor replies built and not yet delivered (at most server.reply_bytes_in_flight).",
            registry=registry,
        )
        self.downloads_waiting = Gauge(
            "fedagg_downloads_waiting",
            "GetAggregatedTensor calls waiting for the reply byte budget (server.reply_bytes_in_flight).",
            registry=registry,
        )
        self.left_out_tensors = Counter(
            "fedagg_tensors_left_out",
            "Tensors outside the model that were left out of the next model (sent by one collaborator only, or "
            "beyond the model size cap).",
            registry=registry,
        )
        self.dropped_metric_values = Counter(
            "fedagg_metric_values_dropped",
            "Metric values left out of the metric log because their task reports limits.metric_names_per_task "
            "names already, by task.",
            ["task"],
            registry=registry,
        )
        self.limit_breaches = Counter(
            "fedagg_limit_breaches",
            "Times a caller ran into one of the server's named limits (its call refused, ended or trimmed), "
            "by limit (README: Limits).",
            ["limit"],
            registry=registry,
        )
        for limit in Limit:
            self.limit_breaches.labels(limit.value)  # every series exists from the start, at 0
        self.hold_duration = Histogram(
            "fedagg_get_tasks_hold_seconds",
            "How long held GetTasks calls waited before they were answered.",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )
        self.background_errors = Counter(
            "fedagg_background_errors",
            "Exceptions in background tasks (which keep running), by task.",
            ["task"],
            registry=registry,
        )
        self.aggregated_metric = Gauge(
            "fedagg_aggregated_metric",
            "Latest aggregated model metric.",
            ["task", "metric"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "fedagg_received_bytes", "Bytes of requests received.", registry=registry
        )
        self.sent_bytes = Counter("fedagg_sent_bytes", "Bytes of replies sent.", registry=registry)
        self.auth_failures = Counter(
            "fedagg_auth_failures", "Callers refused, by reason.", ["reason"], registry=registry
        )
        self.checkpoint_last_success = Gauge(
            "fedagg_checkpoint_last_success_timestamp_seconds",
            "When the last checkpoint was written.",
            registry=registry,
        )
        self.checkpoint_duration = Histogram(
            "fedagg_checkpoint_duration_seconds",
            "Time to write a checkpoint.",
            buckets=WORK_BUCKETS,
            registry=registry,
        )
        self.checkpoint_failures = Counter(
            "fedagg_checkpoint_failures", "Checkpoints that could not be written.", registry=registry
        )
        self.certificate_expiry = Gauge(
            "fedagg_tls_certificate_expiry_timestamp_seconds",
            "Expiry of the serving TLS certificate.",
            registry=registry,
        )
        self.certificate_reloads = Counter(
            "fedagg_certificate_reloads", "Certificate rotations, by outcome.", ["outcome"], registry=registry
        )
        self.tls_handshakes = Counter(
            "fedagg_tls_handshakes",
            "TLS handshakes started on the federation port (each new connection; gRPC reports no outcome: a "
            "failed one is a handshake without a call after it, see grpc_server_started_total).",
            registry=registry,
        )
        self.hook_failures = Counter(
            "fedagg_hook_failures", "Shutdown hooks that failed.", ["hook"], registry=registry
        )
        self.collaborator_results = (
            Counter(
                "fedagg_collaborator_task_results",
                "Task results accepted, by collaborator.",
                ["collaborator", "task"],
                registry=registry,
            )
            if per_collaborator
            else None
        )
        Info("fedagg_build", "Build information.", registry=registry).info({"version": __version__})
        for outcome in ("loaded", "rejected"):
            self.certificate_reloads.labels(outcome)
        for counter, labels in (
            (self.auth_failures, REFUSAL_REASONS),
            (self.rejected, tuple(RejectionReason)),
            (self.ignored, tuple(IgnoreReason)),
            (self.quarantined, QUARANTINE_KINDS),
            (self.storage_errors, STORAGE_OPERATIONS),
            (self.background_errors, BACKGROUND_TASKS),
        ):
            for label in labels:
                counter.labels(label)
        self.checkpoint_failures.inc(0)
        self.round_end_failures.inc(0)

    # Federation events -------------------------------------------------------------------------------------

    def contribution_accepted(self, collaborator: str, task: str, round_number: int, size_bytes: int) -> None:
        self.task_results.labels(self._task(task), "accepted").inc()
        if self.collaborator_results is not None:
            self.collaborator_results.labels(collaborator, task).inc()

    def contribution_ignored(self, collaborator: str, task: str, reason: str) -> None:
        self.task_results.labels(self._task(task), "ignored").inc()
        self.ignored.labels(reason).inc()

    def contribution_rejected(self, collaborator: str, task: str, reason: str) -> None:
        self.task_results.labels(self._task(task), "rejected").inc()
        self.rejected.labels(reason).inc()

    def state_file_quarantined(self, kind: str) -> None:
        self.quarantined.labels(kind).inc()

    def round_end_failed(self, round_number: int) -> None:
        self.round_end_failures.inc()

    def storage_failed(self, operation: str) -> None:
        self.storage_errors.labels(operation).inc()

    def _task(self, task: str) -> str:
        """A task label from the plan (a client's unknown task name must not create new series)."""
        return task if task in self._tasks else OTHER_TASK

    def round_finished(self, summary: RoundSummary) -> None:
        self.rounds_completed.inc()
        self.round_duration.observe(summary.duration_seconds)
        self.aggregation_duration.observe(summary.aggregation_seconds)
        for record in summary.metrics:
            self.aggregated_metric.labels(record.task, record.name).set(record.value)

    def checkpoint_saved(self, round_number: int, seconds: float) -> None:
        self.checkpoint_last_success.set(time.time())
        self.checkpoint_duration.observe(seconds)

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures.inc()

    # Server and operations events ------------------------------------------------------------------------------

    def auth_failed(self, reason: str) -> None:
        """A caller was refused."""
        self.auth_failures.labels(reason).inc()

    def bytes_received(self, count: int) -> None:
        """Request bytes arrived."""
        self.received_bytes.inc(count)

    def bytes_sent(self, count: int) -> None:
        """Reply bytes left."""
        self.sent_bytes.inc(count)

    def certificate_loaded(self, bundle: CertificateBundle) -> None:
        """A certificate went live (at start or by rotation)."""
        self.certificate_expiry.set(bundle.not_after.timestamp())
        self.certificate_reloads.labels("loaded").inc()

    def certificate_rejected(self, error: CertificateError) -> None:
        """A rotation was refused."""
        self.certificate_reloads.labels("rejected").inc()

    def tls_handshake_started(self) -> None:
        """A TLS handshake began on the federation port."""
        self.tls_handshakes.inc()

    def hook_configured(self, hook: str) -> None:
        """Create a hook's failure series at zero, so that increase() sees its first failure."""
        self.hook_failures.labels(hook)

    def hook_failed(self, hook: str) -> None:
        """A shutdown hook failed or timed out."""
        self.hook_failures.labels(hook).inc()

    def background_failed(self, task: str) -> None:
        """A background task raised (and keeps running)."""
        self.background_errors.labels(task).inc()

    def tasks_held(self, change: int) -> None:
        """Held GetTasks calls went up or down."""
        self.held_tasks.inc(change)

    def tasks_hold_ended(self, seconds: float) -> None:
        """A held GetTasks call was answered."""
        self.hold_duration.observe(seconds)

    def replies_in_flight(self, size: int, waiting: int) -> None:
        """The reply budget's bytes in flight or queue changed."""
        self.reply_bytes.set(size)
        self.downloads_waiting.set(waiting)

    def tensors_left_out(self, round_number: int, count: int) -> None:
        """Tensors outside the model were left out of the next model."""
        self.left_out_tensors.inc(count)

    def metric_names_dropped(self, task: str, count: int) -> None:
        """Metric values beyond the task's metric names were left out."""
        self.dropped_metric_values.labels(self._task(task)).inc(count)

    def limit_breached(self, limit: Limit) -> None:
        """A caller ran into a named limit."""
        self.limit_breaches.labels(limit.value).inc()
