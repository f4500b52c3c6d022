"""The shutdown hooks' conformance suite: what every hook must do, whatever its target (a command, an API server).

A hook's test class subclasses :class:`HookConformance` and provides :meth:`~HookConformance.target`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest

from fedagg.ops.hooks import Completion, ShutdownHook, run_hooks

COMPLETION = Completion(
    "finished", 5, 2 / 3, Path("/var/lib/fedagg/best.pbuf"), Path("/var/lib/fedagg/last.pbuf")
)
COMPLETIONS = [
    pytest.param(
        COMPLETION,
        {
            "state": "finished",
            "final_round": "5",
            "best_metric": "0.6666666666666666",  # every digit: the hook's reader gets the same float back
            "best_model": "/var/lib/fedagg/best.pbuf",
            "last_model": "/var/lib/fedagg/last.pbuf",
        },
        id="best-model",
    ),
    pytest.param(
        Completion("stopped", 0, None, None, Path("/data/last model.pbuf")),
        {
            "state": "stopped",
            "final_round": "0",
            "best_metric": "",
            "best_model": "",
            "last_model": "/data/last model.pbuf",
        },
        id="no-metric",
    ),
]
PATIENT_TIMEOUT = 30.0  # for targets that answer: failing fast must not depend on the timeout
MARGIN = 2.0  # a hung target is given up within its hook's timeout plus this
LINGER = 0.5  # what a given-up hook started must stop this soon after run_hooks returns


class Behaviour(Enum):
    """What the hook's target (a command, an API server) does."""

    WORKS = "works"
    FAILS = "fails"
    HANGS = "hangs"


@dataclass
class HookTarget:
    """A hook wired to a target that behaves as asked, and what can be observed of that target."""

    hook: ShutdownHook
    received: Callable[[], dict[str, str] | None]
    """The completion fields the target got (as the hook encodes them: strings, "" for none), None if none."""
    still_running: Callable[[], bool]
    """Whether anything the hook started (a process, a thread) is still running."""


@dataclass
class Outcome:
    failed: list[str]
    reported: list[str]
    seconds: float


@dataclass
class RecordingHook(ShutdownHook):
    """A hook that only records that it ran: the one after the hook under test."""

    name: str = "recording"
    timeout: float = 5.0
    completions: list[Completion] = field(default_factory=list)

    async def run(self, completion: Completion) -> None:
        self.completions.append(completion)


def run_all(hooks: Sequence[ShutdownHook], completion: Completion = COMPLETION) -> Outcome:
    reported: list[str] = []
    started = time.monotonic()
    failed = asyncio.run(run_hooks(hooks, completion, reported.append))
    return Outcome(failed, reported, time.monotonic() - started)


def failure_reasons(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Each failed hook's reason as run_hooks logged it."""
    return {
        str(record.args[0]): str(record.args[1])  # type: ignore[index]
        for record in caplog.records
        if record.name == "fedagg.ops.hooks" and record.msg == "shutdown hook %s failed: %s"
    }


def eventually(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition`` holds at some point in the next ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class HookConformance(ABC):
    """What every shutdown hook must do; each hook's test class subclasses this and provides its targets."""

    hook_class: type[ShutdownHook]
    hang_timeout = 1.0

    @abstractmethod
    def target(self, behaviour: Behaviour, timeout: float) -> AbstractContextManager[HookTarget]:
        """A hook of ``hook_class`` with ``timeout``, wired to a target that ``behaviour``s."""

    def test_the_target_builds_this_hook(self) -> None:
        with self.target(Behaviour.WORKS, PATIENT_TIMEOUT) as target:
            assert type(target.hook) is self.hook_class

    def test_the_name_is_not_empty_and_stable(self) -> None:
        with self.target(Behaviour.WORKS, PATIENT_TIMEOUT) as target:
            before = target.hook.name
            run_all([target.hook])
            after = target.hook.name

        assert isinstance(before, str)
        assert before.strip() == before != ""
        assert after == before == self.hook_class.name, "metrics are labelled with the name when built"

    def test_run_returns_normally_when_the_target_works(self) -> None:
        with self.target(Behaviour.WORKS, PATIENT_TIMEOUT) as target:
            result = asyncio.run(target.hook.run(COMPLETION))
            received = target.received()

        assert result is None
        assert received is not None

    @pytest.mark.parametrize(("completion", "fields"), COMPLETIONS)
    def test_the_target_receives_the_completion(self, completion: Completion, fields: dict[str, str]) -> None:
        with self.target(Behaviour.WORKS, PATIENT_TIMEOUT) as target:
            outcome = run_all([target.hook], completion)
            received = target.received()

        assert outcome.failed == outcome.reported == []
        assert received == fields

    def test_a_failing_target_is_reported_and_the_next_hook_runs(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="fedagg.ops.hooks")
        after = RecordingHook()
        with self.target(Behaviour.FAILS, PATIENT_TIMEOUT) as target:
            outcome = run_all([target.hook, after])

        assert outcome.failed == outcome.reported == [self.hook_class.name]
        assert failure_reasons(caplog).get(self.hook_class.name) not in (None, "timed out")
        assert after.completions == [COMPLETION]

    def test_a_hanging_target_is_given_up_within_the_timeout(self) -> None:
        after = RecordingHook()
        with self.target(Behaviour.HANGS, self.hang_timeout) as target:
            outcome = run_all([target.hook, after])

        assert outcome.failed == outcome.reported == [self.hook_class.name]
        assert outcome.seconds < self.hang_timeout + MARGIN
        assert after.completions == [COMPLETION]

    def test_a_hook_given_up_on_leaves_nothing_running(self) -> None:
        with self.target(Behaviour.HANGS, self.hang_timeout) as target:
            outcome = run_all([target.hook])
            stopped = eventually(lambda: not target.still_running(), LINGER)

        assert outcome.failed == [self.hook_class.name]
        assert stopped, f"{self.hook_class.name} hook's work outlived its timeout"
