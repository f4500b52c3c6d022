"""Straggler handling policies (spec §3.8)."""

from __future__ import annotations

import math

from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec
from fedagg.federation.stragglers import make_straggler_policy


def test_default_waits_for_everyone() -> None:
    policy = make_straggler_policy(StragglerPolicySpec())

    assert not policy.round_may_end(done=2, expected=3, elapsed=1e9)
    assert policy.round_may_end(done=3, expected=3, elapsed=None)
    assert policy.cutoff_seconds() is None


def test_cutoff_time_needs_the_minimum_after_the_cutoff() -> None:
    policy = make_straggler_policy(StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=2))

    assert policy.cutoff_seconds() == 30
    assert not policy.round_may_end(done=2, expected=4, elapsed=29.9)
    assert not policy.round_may_end(done=1, expected=4, elapsed=31)
    assert policy.round_may_end(done=2, expected=4, elapsed=30)
    assert not policy.round_may_end(done=3, expected=4, elapsed=None)


def test_percentage_ends_once_enough_are_done() -> None:
    policy = make_straggler_policy(
        StragglerPolicySpec(StragglerPolicyKind.PERCENTAGE, math.inf, minimum_reporting=1, percent_needed=0.5)
    )

    assert not policy.round_may_end(done=1, expected=4, elapsed=None)
    assert policy.round_may_end(done=2, expected=4, elapsed=None)
    assert policy.cutoff_seconds() is None
