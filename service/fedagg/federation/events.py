"""What the federation core tells the outside world (metrics exporters, readiness, hooks) as it runs."""

from __future__ import annotations

from dataclasses import dataclass

from fedagg.federation.metric_log import MetricRecord


@dataclass(frozen=True)
class RoundSummary:
    """A finished round."""

    round_number: int
    duration_seconds: float
    aggregation_seconds: float
    contributors: int
    stragglers: tuple[str, ...]
    metrics: tuple[MetricRecord, ...]


class FederationListener:
    """Receives federation events. Methods may be called from any thread and must return quickly.

    The default implementation ignores everything; subclasses override what they need. Labels passed as
    ``reason``, ``operation`` or ``kind`` come from small fixed sets (safe as metric labels).
    """

    def round_started(self, round_number: int) -> None:
        """The first task of ``round_number`` was handed out."""

    def contribution_accepted(self, collaborator: str, task: str, round_number: int, size_bytes: int) -> None:
        """An upload was checked and made durable; it counts once its collaborator is done."""

    def contribution_ignored(self, collaborator: str, task: str, reason: str) -> None:
        """An upload was answered OK but not used (wrong round, duplicate, straggler, after the end)."""

    def contribution_rejected(self, collaborator: str, task: str, reason: str) -> None:
        """An upload was answered OK and excluded from the round because its content is unusable."""

    def tensors_left_out(self, round_number: int, count: int) -> None:
        """``count`` tensors of round ``round_number``'s results that are not in its model were left out of the next
        model (:mod:`fedagg.federation.model_shape`); reported once per round."""

    def metric_names_dropped(self, task: str, count: int) -> None:
        """``count`` metric values of an upload for ``task`` were left out of the metric log: their names are beyond
        ``limits.metric_names_per_task``."""

    def state_file_quarantined(self, kind: str) -> None:
        """A corrupt file of the state directory was moved to ``quarantine/``."""

    def round_finished(self, summary: RoundSummary) -> None:
        """A round was aggregated and checkpointed."""

    def round_end_failed(self, round_number: int) -> None:
        """A round end could not be committed; it will be retried."""

    def checkpoint_saved(self, round_number: int, seconds: float) -> None:
        """A checkpoint was written."""

    def contribution_folded(self, collaborator: str, task: str, round_number: int, seconds: float) -> None:
        """An accepted upload was folded into its round's running sums (on the fold worker) in ``seconds``."""

    def checkpoint_failed(self) -> None:
        """A checkpoint could not be written."""

    def storage_failed(self, operation: str) -> None:
        """The state directory refused an operation (``spool``, ``rejection``, ``round_end``, ``quit``, ...)."""

    def experiment_finished(self, final_round: int) -> None:
        """The last round was aggregated; from now on collaborators get quit jobs."""

    def all_quit_jobs_sent(self) -> None:
        """Every collaborator has received its quit job."""


COLLABORATOR_STATES = ("waiting", "training", "rejected", "held", "done", "straggler", "silent", "quit")
"""A collaborator's state in the current round; every collaborator is in exactly one:

- ``waiting``: its tasks of the round are not handed out yet (it has not asked since they became due, or it never
  called since the aggregator started: a collaborator training across a restart shows here until it uploads);
- ``training``: its tasks are handed out and not all uploaded: it trains (``current_task``) since its last call
  ended (``last_contact``), or downloads or uploads;
- ``rejected``: every task in, some of them unusable (left out of the aggregate);
- ``held``: nothing to train now and in a call: a long-poll GetTasks held until there is work (its results for
  the round are in, or it has no task in it); a live contact;
- ``done``: every task of the round uploaded (or the experiment is over and its quit job is due);
- ``straggler``: left out of the round by the straggler policy;
- ``silent``: not training and no call for 3 sleep periods (one waiting for work asks every sleep period);
- ``quit``: its quit job was sent (recorded in the checkpoint: kept across restarts).
"""


@dataclass(frozen=True)
class CollaboratorStatus:
    """One collaborator's progress, for GetExperimentDescription."""

    name: str
    status: str
    progress: float
    round_number: int
    current_task: str
    next_task: str
    rejected_tasks: tuple[str, ...] = ()
    last_contact: float | None = None
    """When the collaborator last called (Unix time; now while a call is in progress), None if never since the
    aggregator started. For a ``training`` collaborator: since when it trains."""


@dataclass(frozen=True)
class ExperimentStatus:
    """The experiment as a whole, for GetExperimentDescription and the metrics collector."""

    name: str
    status: str
    progress: float
    total_rounds: int
    current_round: int
    collaborators: tuple[CollaboratorStatus, ...]
    tasks: tuple[tuple[str, str], ...]
    models: tuple[tuple[str, str], ...]
    storage_failing: bool = False
    round_end_failing: bool = False
    round_started: float | None = None
    """When the current round's first task was handed out (Unix time), None before."""
    aggregation: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    """Per task, what its aggregator reports after the last round (epsilon, clipping norm, ...)."""
