"""A retrying impostor (OpenFL 1.9 retries every refusal every 5 s, forever) cannot flood the log."""

from __future__ import annotations

import pytest

from fedagg.server.refusals import RefusalLog
from tests.support.servers import ManualClock


def test_one_line_per_caller_and_reason_per_interval_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    refusals = RefusalLog(interval=60, clock=clock)

    logged = [refusals.refused("mallory", "unknown_collaborator", "not authorized") for _ in range(12)]
    other = refusals.refused("mallory", "wrong_federation", "wrong federation")
    clock.now += 60
    again = refusals.refused("mallory", "unknown_collaborator", "not authorized")

    assert logged == [True] + [False] * 11
    assert (other, again) == (True, True)
    assert caplog.text.count("refused caller mallory") == 3
    assert "(11 more refusals since the last report)" in caplog.text


def test_callers_that_change_names_cannot_grow_the_table() -> None:
    refusals = RefusalLog(capacity=16, clock=ManualClock())

    for index in range(1000):
        refusals.refused(f"impostor-{index}", "unknown_collaborator", "not authorized")

    assert len(refusals._seen) == 16
