"""OpenFL's grouped assigners (spec §3.5): one conformance suite every assigner passes, then each one's own rules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter

import pytest

from fedagg.federation.assigner import Assigner, RandomGroupedAssigner, StaticGroupedAssigner, make_assigner
from fedagg.federation.errors import PlanError
from fedagg.federation.plan import AssignerKind, AssignerSpec, TaskGroup, TaskSpec, default_tasks
from tests.support.conformance import subclasses
from tests.support.servers import make_plan

COLLABORATORS = tuple(f"c{i}" for i in range(7))
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")

# Plan order (validation, train, validation) is neither alphabetical nor the order of any single collaborator's
# tasks when the first collaborator is in the validation group, so an ordering mistake shows.
PLAN_TASKS = {**default_tasks(), "final_validation": TaskSpec("final_validation", "validate_task")}
LAYOUT = (
    # name, tasks, share of the collaborators (0: a group nobody is in, like OpenFL 1.9's "evaluation")
    ("evaluation", ("final_validation",), 0.0),
    ("learning", TASKS, 0.6),
    ("validation", (TASKS[0], TASKS[2]), 0.4),
)
SIZES = (1, 2, 7, 50)
ROUNDS = range(12)  # more rounds than an assigner caches


def names(count: int) -> tuple[str, ...]:
    return tuple(f"collaborator-{i:02d}" for i in range(count))


class AssignerConformance(ABC):
    """What every assigner must do; each assigner's test class subclasses this and describes its plan."""

    assigner_class: type[Assigner]

    @abstractmethod
    def spec(self, collaborators: tuple[str, ...]) -> AssignerSpec:
        """An assigner of ``LAYOUT``'s groups for ``collaborators``, as a plan would describe it."""

    def make(self, collaborators: tuple[str, ...]) -> Assigner:
        """The assigner of a valid plan (the plan refuses groups that cannot work)."""
        spec = self.spec(collaborators)
        make_plan(collaborators, 1, tasks=PLAN_TASKS, assigner=spec)
        return make_assigner(spec, collaborators)

    def test_the_plan_kind_builds_this_assigner(self) -> None:
        assert type(self.make(COLLABORATORS)) is self.assigner_class

    @pytest.mark.parametrize("count", SIZES)
    def test_every_collaborator_runs_one_groups_tasks_in_order_every_round(self, count: int) -> None:
        """Assigner.assignment: Every plan collaborator MUST have one group's tasks, in the group's order."""
        collaborators = names(count)
        assigner = self.make(collaborators)
        group_tasks = {tasks for _, tasks, _ in LAYOUT}

        for round_number in ROUNDS:
            assignment = assigner.assignment(round_number)
            assert sorted(assignment) == sorted(collaborators)
            for name in collaborators:
                assert assignment[name] in group_tasks, (round_number, name)
                assert assigner.tasks_for(name, round_number) == assignment[name]

    @pytest.mark.parametrize("count", SIZES)
    def test_tasks_in_round_are_the_union_in_plan_order(self, count: int) -> None:
        """Assigner.tasks_in_round: It MUST return the tasks of the assignment, each once, in plan order."""
        assigner = self.make(names(count))
        plan_order = tuple(dict.fromkeys(task for _, tasks, _ in LAYOUT for task in tasks))

        for round_number in ROUNDS:
            assigned = {task for tasks in assigner.assignment(round_number).values() for task in tasks}
            in_round = assigner.tasks_in_round(round_number)

            assert len(in_round) == len(set(in_round)), in_round
            assert set(in_round) == assigned
            assert in_round == tuple(task for task in plan_order if task in assigned)
            assert "final_validation" not in in_round, "a group nobody is in runs nothing"

    @pytest.mark.parametrize("count", SIZES)
    def test_collaborators_for_agrees_with_the_assignment(self, count: int) -> None:
        """Assigner.collaborators_for: It MUST agree with :meth:`assignment`, each collaborator once."""
        assigner = self.make(names(count))

        for round_number in ROUNDS:
            assignment = assigner.assignment(round_number)
            for task in PLAN_TASKS:
                runners = assigner.collaborators_for(task, round_number)
                assert len(runners) == len(set(runners))
                assert set(runners) == {name for name, tasks in assignment.items() if task in tasks}
                assert bool(runners) == (task in assigner.tasks_in_round(round_number))

    @pytest.mark.parametrize("count", SIZES)
    def test_a_round_always_gets_the_same_assignment_even_after_a_restart(self, count: int) -> None:
        """Assigner.assignment: The same round MUST always get the same assignment, also from a new assigner (a
        restart)."""
        collaborators = names(count)
        assigner = self.make(collaborators)
        first = [dict(assigner.assignment(r)) for r in ROUNDS]
        again = [dict(assigner.assignment(r)) for r in ROUNDS]
        restarted = self.make(collaborators)
        backwards = {r: dict(restarted.assignment(r)) for r in reversed(ROUNDS)}

        assert again == first
        assert [backwards[r] for r in ROUNDS] == first

    def test_an_unknown_collaborator_has_no_tasks(self) -> None:
        """Assigner.tasks_for: It MUST return ``()`` for a collaborator the plan does not name."""
        assigner = self.make(COLLABORATORS)

        for round_number in ROUNDS:
            assert assigner.tasks_for("mallory", round_number) == ()
            assert "mallory" not in assigner.assignment(round_number)
            assert all("mallory" not in assigner.collaborators_for(t, round_number) for t in PLAN_TASKS)

    def test_callers_cannot_change_an_assignment(self) -> None:
        """Assigner.assignment: Callers MUST NOT be able to change it."""
        assigner = self.make(COLLABORATORS)
        assignment = assigner.assignment(0)

        with pytest.raises(TypeError):
            assignment["c0"] = ("train",)  # type: ignore[index]
        assert assigner.tasks_for("c0", 0) != ("train",)


class TestStaticGrouped(AssignerConformance):
    assigner_class = StaticGroupedAssigner

    def spec(self, collaborators: tuple[str, ...]) -> AssignerSpec:
        joinable = [index for index, (_, _, share) in enumerate(LAYOUT) if share > 0]
        members: list[list[str]] = [[] for _ in LAYOUT]
        for position, name in enumerate(collaborators):
            members[joinable[position % len(joinable)]].append(name)
        return AssignerSpec(
            AssignerKind.STATIC_GROUPED,
            tuple(
                TaskGroup(name, tasks, collaborators=tuple(group))
                for (name, tasks, _), group in zip(LAYOUT, members, strict=True)
            ),
        )

    def test_static_groups_repeat_every_round_in_plan_order(self) -> None:
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


class TestRandomGrouped(AssignerConformance):
    assigner_class = RandomGroupedAssigner

    def spec(self, collaborators: tuple[str, ...]) -> AssignerSpec:
        return AssignerSpec(
            AssignerKind.RANDOM_GROUPED,
            tuple(TaskGroup(name, tasks, percentage=share) for name, tasks, share in LAYOUT),
            seed=5,
        )

    def test_random_groups_get_their_share_and_cover_everyone(self) -> None:
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

    def test_random_groups_are_reproducible_for_a_restart(self) -> None:
        spec = AssignerSpec(
            AssignerKind.RANDOM_GROUPED,
            (TaskGroup("a", TASKS, percentage=0.3), TaskGroup("b", TASKS[:1], percentage=0.7)),
            seed=11,
        )

        first = [dict(make_assigner(spec, COLLABORATORS).assignment(r)) for r in range(5)]
        second = [dict(make_assigner(spec, COLLABORATORS).assignment(r)) for r in range(5)]

        assert first == second

    def test_the_seed_decides_the_grouping(self) -> None:
        collaborators = names(50)
        spec = self.spec(collaborators)
        reseeded = make_assigner(AssignerSpec(spec.kind, spec.groups, seed=spec.seed + 1), collaborators)
        assigner = self.make(collaborators)

        assert [dict(reseeded.assignment(r)) for r in ROUNDS] != [
            dict(assigner.assignment(r)) for r in ROUNDS
        ]


def test_every_assigner_kind_has_a_conformance_class() -> None:
    tested = {cls().spec(COLLABORATORS).kind for cls in subclasses(AssignerConformance)}

    assert tested >= set(AssignerKind)


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
