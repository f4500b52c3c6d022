"""The experiment as observers see it (GetExperimentDescription, ``fedagg status``, the metrics collector)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.events import CollaboratorStatus, ExperimentStatus
from fedagg.federation.plan import FederationPlan
from fedagg.federation.rounds import Round

SILENT_PERIODS = 3
"""A collaborator that is not training, not in a call and has not called for this many sleep periods is ``silent``:
one that waits for work asks for it every sleep period (OpenFL's clients sleep ``sleep_seconds`` between GetTasks);
one that trains makes no call until it uploads, so it is never silent."""


@dataclass
class Contact:
    """When a collaborator last called (monotonic clock) and how many of its calls are in progress."""

    last: float = 0.0
    calls: int = 0


@dataclass(frozen=True)
class Contacts:
    """Every collaborator's contact, with the monotonic and wall clocks read at the same moment."""

    by_collaborator: dict[str, Contact] = field(default_factory=dict)
    now: float = 0.0
    wall_now: float = 0.0

    def wall_time(self, monotonic: float) -> float:
        """A monotonic instant as Unix time."""
        return self.wall_now - (self.now - monotonic)

    def in_call(self, name: str) -> bool:
        """Whether a call of the collaborator is in progress (a held GetTasks, a download, an upload)."""
        contact = self.by_collaborator.get(name)
        return contact is not None and contact.calls > 0

    def silent_for(self, name: str) -> float | None:
        """Seconds since the collaborator's last call ended (0 while one is in progress), None if it never called."""
        contact = self.by_collaborator.get(name)
        if contact is None:
            return None
        return 0.0 if contact.calls else self.now - contact.last

    def last_contact(self, name: str) -> float | None:
        """When the collaborator last called (Unix time; now while a call is in progress), None if it never did."""
        contact = self.by_collaborator.get(name)
        if contact is None:
            return None
        return self.wall_now if contact.calls else self.wall_time(contact.last)


def restoring_status(plan: FederationPlan) -> ExperimentStatus:
    """The status before the state has been restored."""
    return ExperimentStatus(plan.name, "restoring", 0.0, plan.rounds_to_train, 0, (), _tasks(plan), ())


def experiment_status(
    plan: FederationPlan,
    committed: Checkpoint,
    round_: Round,
    contacts: Contacts,
    *,
    storage_failing: bool = False,
    round_end_failing: bool = False,
    figures: Mapping[str, Mapping[str, float]] | None = None,
) -> ExperimentStatus:
    """Status, progress and per-collaborator state (call with the federation's round lock held)."""
    finished = committed.round_number >= plan.rounds_to_train
    if finished:
        status = "finished"
    elif round_.number == committed.first_round and round_.started_at is None:
        status = "pending"
    else:
        status = "in_progress"
    silent_after = SILENT_PERIODS * plan.sleep_seconds
    collaborators = tuple(
        _collaborator_status(round_, committed, name, finished, contacts, silent_after)
        for name in plan.collaborators
    )
    models = (
        ("best", "ready" if committed.best_round is not None else "pending"),
        ("last", "ready" if committed.last_round is not None else "pending"),
        ("init", "ready"),
    )
    done_rounds = round_.number - committed.first_round
    progress = done_rounds / max(1, plan.rounds_to_train - committed.first_round)
    return ExperimentStatus(
        plan.name,
        status,
        min(progress, 1.0),
        plan.rounds_to_train,
        round_.number,
        collaborators,
        _tasks(plan, figures or {}),
        models,
        storage_failing=storage_failing,
        round_end_failing=round_end_failing,
        round_started=None if round_.started_at is None else contacts.wall_time(round_.started_at),
        aggregation=tuple(
            (task, tuple(sorted(reported.items()))) for task, reported in sorted((figures or {}).items())
        ),
    )


def _tasks(
    plan: FederationPlan, figures: Mapping[str, Mapping[str, float]] | None = None
) -> tuple[tuple[str, str], ...]:
    described = []
    for task in plan.tasks.values():
        text = f"runs {task.function} ({task.aggregation})"
        reported = (figures or {}).get(task.name)
        if reported:
            text += "; " + ", ".join(f"{name} {value:.6g}" for name, value in sorted(reported.items()))
        described.append((task.name, text))
    return tuple(described)


def _collaborator_status(
    round_: Round, committed: Checkpoint, name: str, finished: bool, contacts: Contacts, silent_after: float
) -> CollaboratorStatus:
    assigned = round_.assignment.get(name, ())
    pending = round_.pending_tasks(name)
    rejected = round_.rejected_tasks(name)
    over = name in committed.quit_sent or finished
    progress = 1.0 if over or not assigned else (len(assigned) - len(pending)) / len(assigned)
    status = _state(round_, committed, name, finished, contacts, silent_after)
    current = pending[0] if pending and not finished else ""
    following = pending[1] if len(pending) > 1 and not finished else ""
    return CollaboratorStatus(
        name, status, progress, round_.number, current, following, rejected, contacts.last_contact(name)
    )


def _state(
    round_: Round, committed: Checkpoint, name: str, finished: bool, contacts: Contacts, silent_after: float
) -> str:
    """One of :data:`~fedagg.federation.events.COLLABORATOR_STATES` (see there), first that applies."""
    pending = round_.pending_tasks(name)
    if name in committed.quit_sent:
        return "quit"
    if finished:
        return "done"
    if name in round_.stragglers:
        return "straggler"
    if pending and name in round_.handed_out:
        return "training"
    if not pending and round_.rejected_tasks(name):
        return "rejected"
    if contacts.in_call(name):
        return "held"
    if (silent := contacts.silent_for(name)) is not None and silent > silent_after:
        return "silent"
    return "waiting" if pending else "done"
