"""OpenFL's grouped assigners (spec §3.5)."""

from __future__ import annotations

from collections import Counter

import pytest

from fedagg.federation.assigner import make_assigner
from fedagg.federation.errors import PlanError
from fedagg.federation.plan import AssignerKind, AssignerSpec, TaskGroup
from tests.support.servers import make_plan

COLLABORATORS = tuple(f"c{i}" for i in range(7))
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


def test_static_groups_repeat_every_round_in_plan_order() -> None:
    spec = AssignerSpec(
        AssignerKind.STATIC_GROUPED,
        (
            TaskGroup("train", TASKS, collaborators=COLLABORATORS[:4]),
            TaskGroup("eval", (TASKS[0],), collaborators=COLLABORATORS[4:]),
        ),
    )
    assigner = make_assigner(spec, COLLABORATORS)

    for round_number in range(3):
        assert assigner.tasks_for("c0", round_number) == TASKS
        assert assigner.tasks_for("c6", round_number) == (TASKS[0],)
        assert assigner.collaborators_for("train", round_number) == COLLABORATORS[:4]
        assert assigner.tasks_in_round(round_number) == TASKS


def test_random_groups_get_their_share_and_cover_everyone() -> None:
    spec = AssignerSpec(
        AssignerKind.RANDOM_GROUPED,
        (TaskGroup("train", TASKS, percentage=0.5), TaskGroup("eval", (TASKS[0],), percentage=0.5)),
        seed=3,
    )
    assigner = make_assigner(spec, COLLABORATORS)

    memberships = []
    for round_number in range(20):
        assignment = assigner.assignment(round_number)
        assert sorted(assignment) == sorted(COLLABORATORS)
        sizes = Counter(assignment.values())
        assert sorted(sizes.values()) == [3, 4]  # 7 * 0.5 = 3.5: the leftover goes to one group
        memberships.append(tuple(sorted(assigner.collaborators_for("train", round_number))))
    assert len(set(memberships)) > 1, "groups are reshuffled between rounds"


def test_random_groups_are_reproducible_for_a_restart() -> None:
    spec = AssignerSpec(
        AssignerKind.RANDOM_GROUPED,
        (TaskGroup("a", TASKS, percentage=0.3), TaskGroup("b", TASKS[:1], percentage=0.7)),
        seed=11,
    )

    first = [dict(make_assigner(spec, COLLABORATORS).assignment(r)) for r in range(5)]
    second = [dict(make_assigner(spec, COLLABORATORS).assignment(r)) for r in range(5)]

    assert first == second


def test_unknown_collaborator_has_no_tasks() -> None:
    spec = AssignerSpec(AssignerKind.RANDOM_GROUPED, (TaskGroup("all", TASKS, percentage=1.0),))

    assert make_assigner(spec, COLLABORATORS).tasks_for("mallory", 0) == ()


@pytest.mark.parametrize(
    ("groups", "kind", "key"),
    [
        ((TaskGroup("a", TASKS, percentage=0.5),), AssignerKind.RANDOM_GROUPED, "percentage"),
        ((TaskGroup("a", ("nope",), percentage=1.0),), AssignerKind.RANDOM_GROUPED, "tasks"),
        ((TaskGroup("a", TASKS, collaborators=("one",)),), AssignerKind.STATIC_GROUPED, "collaborators"),
        ((), AssignerKind.STATIC_GROUPED, "task_groups"),
    ],
)
def test_plan_refuses_groups_that_cannot_work(
    groups: tuple[TaskGroup, ...], kind: AssignerKind, key: str
) -> None:
    with pytest.raises(PlanError, match=key):
        make_plan(("one", "two"), 1, assigner=AssignerSpec(kind, groups))
