"""Task assigners: which tasks each collaborator runs in a round (OpenFL's grouped assigners).

Assignments are a pure function of the plan and the round number (the random assigner draws from a generator
seeded with the plan's seed and the round), so a restarted aggregator hands out exactly the same tasks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

import numpy as np

from fedagg.federation.plan import AssignerKind, AssignerSpec, TaskGroup

Assignment = Mapping[str, tuple[str, ...]]


class Assigner(ABC):
    """Maps (collaborator, round) to the tasks it runs, in execution order.

    Each method states its contract in MUST sentences (tests/unit/test_assigner.py's AssignerConformance quotes
    each; tests/unit/test_contracts_plugins.py checks that none is left untested).
    """

    def __init__(self, groups: tuple[TaskGroup, ...], collaborators: tuple[str, ...]) -> None:
        self._groups = groups
        self._collaborators = collaborators
        self._round_assignment = lru_cache(maxsize=8)(self._assign)

    def assignment(self, round_number: int) -> Assignment:
        """Every collaborator's tasks in ``round_number``.

        Every plan collaborator MUST have one group's tasks, in the group's order. The same round MUST always get
        the same assignment, also from a new assigner (a restart). Callers MUST NOT be able to change it.
        """
        return self._round_assignment(round_number)

    def tasks_for(self, collaborator: str, round_number: int) -> tuple[str, ...]:
        """The tasks ``collaborator`` runs in ``round_number``.

        It MUST return ``()`` for a collaborator the plan does not name.
        """
        return self.assignment(round_number).get(collaborator, ())

    def collaborators_for(self, task: str, round_number: int) -> tuple[str, ...]:
        """The collaborators that run ``task`` in ``round_number``.

        It MUST agree with :meth:`assignment`, each collaborator once.
        """
        return tuple(name for name, tasks in self.assignment(round_number).items() if task in tasks)

    def tasks_in_round(self, round_number: int) -> tuple[str, ...]:
        """Every task that runs in ``round_number``.

        It MUST return the tasks of the assignment, each once, in plan order.
        """
        assigned = {task for tasks in self.assignment(round_number).values() for task in tasks}
        ordered = (task for group in self._groups for task in group.tasks)
        return tuple(dict.fromkeys(task for task in ordered if task in assigned))

    def _assign(self, round_number: int) -> Assignment:
        members = self._members(round_number)
        return MappingProxyType(
            {name: group.tasks for group, names in zip(self._groups, members, strict=True) for name in names}
        )

    @abstractmethod
    def _members(self, round_number: int) -> list[tuple[str, ...]]:
        """The collaborators of each group (in group order) in ``round_number``: a function of the round only
        (:meth:`assignment`'s contract holds through it)."""


class StaticGroupedAssigner(Assigner):
    """Fixed groups: the same collaborators run the same tasks every round."""

    def _members(self, round_number: int) -> list[tuple[str, ...]]:
        return [group.collaborators for group in self._groups]


class RandomGroupedAssigner(Assigner):
    """Each round, collaborators are reshuffled and each group gets its percentage of them.

    OpenFL gives every group ``int(percentage * N)`` collaborators and asserts that nobody is left out; here the
    collaborators that rounding leaves over go to the groups with the largest remainders, so every collaborator
    always has a group.
    """

    def __init__(self, groups: tuple[TaskGroup, ...], collaborators: tuple[str, ...], seed: int) -> None:
        super().__init__(groups, collaborators)
        self._seed = seed
        self._sizes = _group_sizes([group.percentage for group in groups], len(collaborators))

    def _members(self, round_number: int) -> list[tuple[str, ...]]:
        rng = np.random.default_rng([self._seed, round_number])
        order = [self._collaborators[i] for i in rng.permutation(len(self._collaborators))]
        members, start = [], 0
        for size in self._sizes:
            members.append(tuple(order[start : start + size]))
            start += size
        return members


def _group_sizes(shares: list[float], count: int) -> list[int]:
    exact = [share * count for share in shares]
    sizes = [math.floor(value + 1e-9) for value in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for index in by_remainder[: count - sum(sizes)]:
        sizes[index] += 1
    return sizes


def make_assigner(spec: AssignerSpec, collaborators: tuple[str, ...]) -> Assigner:
    """Build the assigner a plan describes."""
    if spec.kind == AssignerKind.STATIC_GROUPED:
        return StaticGroupedAssigner(spec.groups, collaborators)
    return RandomGroupedAssigner(spec.groups, collaborators, spec.seed)
