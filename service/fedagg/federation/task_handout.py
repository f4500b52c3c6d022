"""Handing out tasks: OpenFL's get_tasks answer for a collaborator, from the round in progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedagg.federation.ledger import RoundLedger
from fedagg.federation.plan import FederationPlan, TaskSpec


@dataclass(frozen=True)
class TaskReply:
    """The answer to GetTasks: tasks, or a sleep, or quit (exclusive, in that priority: quit > sleep > tasks).

    A quit job must be recorded (:meth:`~fedagg.federation.federation.Federation.record_quit`) before it is sent
    when ``quit_recorded`` is False.
    """

    round_number: int
    tasks: tuple[TaskSpec, ...] = ()
    sleep_seconds: int = 0
    quit: bool = False
    quit_recorded: bool = True


def hand_out_tasks(
    plan: FederationPlan, ledger: RoundLedger, collaborator: str, clock: Callable[[], float]
) -> tuple[TaskReply, bool]:
    """Quit once training is over, sleep when nothing is to do, else the tasks left; and whether this hand-out
    started the round. Takes the round lock (no I/O): callable on the event loop."""
    with ledger.round_lock:
        committed = ledger.checkpoint()
        round_ = ledger.round
        if round_ is None:
            return TaskReply(
                committed.round_number, quit=True, quit_recorded=collaborator in committed.quit_sent
            ), False
        pending = (
            () if round_.closing or collaborator in round_.stragglers else round_.pending_tasks(collaborator)
        )
        if not pending:
            return TaskReply(round_.number, sleep_seconds=plan.sleep_seconds), False
        started = round_.started_at is None
        if started:
            round_.started_at = clock()
        round_.handed_out.add(collaborator)
        return TaskReply(round_.number, tasks=tuple(plan.tasks[task] for task in pending)), started
