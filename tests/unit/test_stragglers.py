"""Straggler handling policies (spec §3.8): one conformance suite every policy passes, then each one's rules."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec
from fedagg.federation.stragglers import (
    CutoffTimePolicy,
    PercentagePolicy,
    StragglerPolicy,
    make_straggler_policy,
)
from tests.support.conformance import subclasses
from tests.support.servers import make_plan

EXPECTED = range(1, 13)  # collaborators assigned in a round
ELAPSED = (None, 0.0, 0.5, 29.0, 30.0, 31.0, 600.0, 86400.0, 1e9)  # seconds since the round started


class StragglerPolicyConformance:
    """What every straggler policy must do, for each of the plan configurations its subclass lists."""

    policy_class: type[StragglerPolicy]
    specs: tuple[StragglerPolicySpec, ...]

    def policies(self) -> Iterator[tuple[StragglerPolicySpec, StragglerPolicy]]:
        """Each spec (accepted by a plan of the largest round) with the policy the plan builds from it."""
        for spec in self.specs:
            make_plan(tuple(f"c{i}" for i in range(max(EXPECTED))), 1, stragglers=spec)
            yield spec, make_straggler_policy(spec)

    def elapsed(self, policy: StragglerPolicy) -> list[float | None]:
        """ELAPSED and the times around the policy's own cutoff, None (not started) first, then ascending."""
        cutoff = policy.cutoff_seconds()
        around = () if cutoff is None else (cutoff - 1e-3, cutoff, cutoff + 1e-3)
        return [None, *sorted({*(t for t in ELAPSED if t is not None), *around})]

    def test_the_plan_kind_builds_this_policy(self) -> None:
        for spec, policy in self.policies():
            assert type(policy) is self.policy_class, spec

    def test_a_round_with_everyone_done_may_always_end(self) -> None:
        """StragglerPolicy.round_may_end: It MUST return True when every assigned collaborator is done, whatever
        the time."""
        for spec, policy in self.policies():
            for expected in EXPECTED:
                for elapsed in self.elapsed(policy):
                    assert policy.round_may_end(expected, expected, elapsed), (spec, expected, elapsed)

    def test_never_ends_with_fewer_than_minimum_reporting_done(self) -> None:
        """StragglerPolicy.round_may_end: It MUST return False while fewer than ``minimum_reporting`` are done,
        unless everyone is."""
        for spec, policy in self.policies():
            for expected in EXPECTED:
                for done in range(min(spec.minimum_reporting, expected)):
                    for elapsed in self.elapsed(policy):
                        assert not policy.round_may_end(done, expected, elapsed), (
                            spec,
                            done,
                            expected,
                            elapsed,
                        )

    def test_nobody_done_ends_only_a_round_nobody_was_assigned(self) -> None:
        for spec, policy in self.policies():
            for elapsed in self.elapsed(policy):
                assert policy.round_may_end(0, 0, elapsed), (spec, elapsed)
                for expected in EXPECTED:
                    assert not policy.round_may_end(0, expected, elapsed), (spec, expected, elapsed)

    def test_one_more_collaborator_done_never_keeps_a_round_open(self) -> None:
        """StragglerPolicy.round_may_end: One more collaborator done MUST NOT turn True into False."""
        for spec, policy in self.policies():
            for expected in EXPECTED:
                for elapsed in self.elapsed(policy):
                    answers = [policy.round_may_end(done, expected, elapsed) for done in range(expected + 1)]
                    assert answers == sorted(answers), (spec, expected, elapsed, answers)

    def test_more_time_never_keeps_a_round_open(self) -> None:
        """StragglerPolicy.round_may_end: More time MUST NOT turn True into False."""
        for spec, policy in self.policies():
            for expected in EXPECTED:
                for done in range(expected + 1):
                    answers = [policy.round_may_end(done, expected, t) for t in self.elapsed(policy)]
                    assert answers == sorted(answers), (spec, done, expected, answers)

    def test_the_answer_changes_only_at_the_announced_cutoff(self) -> None:
        """StragglerPolicy.cutoff_seconds: The answer of :meth:`round_may_end` MUST change with time only at
        this cutoff (nothing else asks again).

        Nothing asks again unless a collaborator finishes or the cutoff falls due: a policy whose answer changed
        at any other time would leave the round open."""
        for spec, policy in self.policies():
            cutoff = policy.cutoff_seconds()
            for expected in EXPECTED:
                for done in range(expected + 1):
                    before = {
                        policy.round_may_end(done, expected, t)
                        for t in self.elapsed(policy)
                        if cutoff is None or t is None or t < cutoff
                    }
                    after = {
                        policy.round_may_end(done, expected, t)
                        for t in self.elapsed(policy)
                        if cutoff is not None and t is not None and t >= cutoff
                    }
                    assert len(before) == 1, (spec, done, expected)
                    assert len(after) <= 1, (spec, done, expected)

    def test_the_cutoff_is_none_or_a_positive_time(self) -> None:
        """StragglerPolicy.cutoff_seconds: It MUST be None or a positive finite number of seconds."""
        for spec, policy in self.policies():
            cutoff = policy.cutoff_seconds()
            assert cutoff is None or 0 < cutoff < math.inf, (spec, cutoff)


class TestCutoffTimePolicy(StragglerPolicyConformance):
    policy_class = CutoffTimePolicy
    specs = (
        StragglerPolicySpec(),
        StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=1),
        StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=3),
        StragglerPolicySpec(cutoff_seconds=0.25, minimum_reporting=2),
        StragglerPolicySpec(cutoff_seconds=math.inf, minimum_reporting=4),
    )

    def test_default_waits_for_everyone(self) -> None:
        policy = make_straggler_policy(StragglerPolicySpec())

        assert not policy.round_may_end(done=2, expected=3, elapsed=1e9)
        assert policy.round_may_end(done=3, expected=3, elapsed=None)
        assert policy.cutoff_seconds() is None

    def test_cutoff_time_needs_the_minimum_after_the_cutoff(self) -> None:
        policy = make_straggler_policy(StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=2))

        assert policy.cutoff_seconds() == 30
        assert not policy.round_may_end(done=2, expected=4, elapsed=29.9)
        assert not policy.round_may_end(done=1, expected=4, elapsed=31)
        assert policy.round_may_end(done=2, expected=4, elapsed=30)
        assert not policy.round_may_end(done=3, expected=4, elapsed=None)


class TestPercentagePolicy(StragglerPolicyConformance):
    policy_class = PercentagePolicy
    specs = (
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE),
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, percent_needed=0.5, minimum_reporting=1),
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, percent_needed=0.75, minimum_reporting=3),
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, percent_needed=0.01, minimum_reporting=2),
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, cutoff_seconds=30, percent_needed=0.3),
    )

    def test_percentage_ends_once_enough_are_done(self) -> None:
        policy = make_straggler_policy(
            StragglerPolicySpec(
                StragglerPolicyKind.PERCENTAGE, math.inf, minimum_reporting=1, percent_needed=0.5
            )
        )

        assert not policy.round_may_end(done=1, expected=4, elapsed=None)
        assert policy.round_may_end(done=2, expected=4, elapsed=None)
        assert policy.cutoff_seconds() is None

    @pytest.mark.parametrize(
        ("percent", "expected", "needed"), [(0.55, 100, 55), (0.14, 50, 7), (0.28, 25, 7)]
    )
    def test_a_share_that_is_a_whole_number_of_collaborators_is_enough(
        self, percent: float, expected: int, needed: int
    ) -> None:
        policy = make_straggler_policy(
            StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, percent_needed=percent)
        )

        assert policy.round_may_end(done=needed, expected=expected, elapsed=None)


def test_every_straggler_policy_kind_has_a_conformance_class() -> None:
    tested = {spec.kind for cls in subclasses(StragglerPolicyConformance) for spec in cls.specs}

    assert tested >= set(StragglerPolicyKind)
