"""Straggler handling: when a round may close before every assigned collaborator has finished."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec


class StragglerPolicy(ABC):
    """Decides whether a round may end given how many collaborators are done and how long it has run."""

    def __init__(self, minimum_reporting: int) -> None:
        self._minimum_reporting = minimum_reporting

    def round_may_end(self, done: int, expected: int, elapsed: float | None) -> bool:
        """Whether a round whose ``expected`` collaborators include ``done`` finished ones may end now;
        ``elapsed`` is seconds since the round's first task was handed out (None before that).

        It MUST return True when every assigned collaborator is done, whatever the time. It MUST return False
        while fewer than ``minimum_reporting`` are done, unless everyone is. One more collaborator done MUST NOT
        turn True into False. More time MUST NOT turn True into False.
        """
        if done >= expected:
            return True
        return done >= self._minimum_reporting and self._enough(done, expected, elapsed)

    def cutoff_seconds(self) -> float | None:
        """Seconds after the round starts at which :meth:`round_may_end` must be asked again, if any.

        The answer of :meth:`round_may_end` MUST change with time only at this cutoff (nothing else asks again).
        It MUST be None or a positive finite number of seconds.
        """
        return None

    @abstractmethod
    def _enough(self, done: int, expected: int, elapsed: float | None) -> bool:
        """The policy's own rule, asked with at least ``minimum_reporting`` and fewer than ``expected`` done
        (:meth:`round_may_end`'s contract holds through it)."""


class CutoffTimePolicy(StragglerPolicy):
    """OpenFL's CutoffTimeBasedStragglerHandling: after the cutoff, whoever is not done is a straggler."""

    def __init__(self, cutoff_seconds: float, minimum_reporting: int) -> None:
        super().__init__(minimum_reporting)
        self._cutoff = cutoff_seconds

    def cutoff_seconds(self) -> float | None:
        return None if math.isinf(self._cutoff) else self._cutoff

    def _enough(self, done: int, expected: int, elapsed: float | None) -> bool:
        return elapsed is not None and elapsed >= self._cutoff


class PercentagePolicy(StragglerPolicy):
    """OpenFL's PercentageBasedStragglerHandling: the round ends once a share of collaborators is done."""

    def __init__(self, percent_needed: float, minimum_reporting: int) -> None:
        super().__init__(minimum_reporting)
        self._percent = percent_needed

    def _enough(self, done: int, expected: int, elapsed: float | None) -> bool:
        # A whole number of collaborators: 55% of 100 is 55, though 0.55 * 100 is 55.00000000000001 in floating
        # point (OpenFL compares the float, and so needs 56).
        return done >= math.ceil(self._percent * expected - 1e-9)


def make_straggler_policy(spec: StragglerPolicySpec) -> StragglerPolicy:
    """Build the policy a plan describes."""
    if spec.kind == StragglerPolicyKind.PERCENTAGE:
        return PercentagePolicy(spec.percent_needed, spec.minimum_reporting)
    return CutoffTimePolicy(spec.cutoff_seconds, spec.minimum_reporting)
