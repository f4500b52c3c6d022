"""The experiment as observers see it (GetExperimentDescription, ``fedagg status``, the metrics collector)."""

from __future__ import annotations

from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.events import CollaboratorStatus, ExperimentStatus
from fedagg.federation.plan import FederationPlan
from fedagg.federation.rounds import Round


def restoring_status(plan: FederationPlan) -> ExperimentStatus:
    """The status before the state has been restored."""
    return ExperimentStatus(plan.name, "restoring", 0.0, plan.rounds_to_train, 0, (), _tasks(plan), ())


def experiment_status(
    plan: FederationPlan,
    committed: Checkpoint,
    round_: Round,
    *,
    storage_failing: bool = False,
    round_end_failing: bool = False,
) -> ExperimentStatus:
    """Status, progress and per-collaborator state (call with the federation's state lock held)."""
    finished = committed.round_number >= plan.rounds_to_train
    if finished:
        status = "finished"
    elif round_.number == committed.first_round and round_.started_at is None:
        status = "pending"
    else:
        status = "in_progress"
    collaborators = tuple(
        _collaborator_status(round_, committed, name, finished) for name in plan.collaborators
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
        _tasks(plan),
        models,
        storage_failing=storage_failing,
        round_end_failing=round_end_failing,
    )


def _tasks(plan: FederationPlan) -> tuple[tuple[str, str], ...]:
    return tuple((task.name, f"runs {task.function} ({task.aggregation})") for task in plan.tasks.values())


def _collaborator_status(
    round_: Round, committed: Checkpoint, name: str, finished: bool
) -> CollaboratorStatus:
    assigned = round_.assignment.get(name, ())
    pending = round_.pending_tasks(name)
    rejected = round_.rejected_tasks(name)
    progress = 1.0 if not assigned else (len(assigned) - len(pending)) / len(assigned)
    if name in committed.quit_sent:
        status = "quit"
    elif finished:
        status = "finishing"
    elif name in round_.stragglers:
        status = "straggler"
    elif not pending:
        status = "rejected" if rejected else "done"
    elif name in round_.handed_out:
        status = "training"
    else:
        status = "waiting"
    current = pending[0] if pending and not finished else ""
    following = pending[1] if len(pending) > 1 and not finished else ""
    return CollaboratorStatus(name, status, progress, round_.number, current, following, rejected)
