"""Shutdown hooks: what runs after the last quit job, in order, each within its own time budget.

A failing hook (error, refusal, timeout) is logged and counted; it never hangs the exit and never touches the
models, which are written before any hook runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """How the experiment ended, as the hooks report it."""

    state: str
    final_round: int
    best_metric: float | None
    best_model: Path | None
    last_model: Path | None


class ShutdownHook(ABC):
    """One step after the experiment; :meth:`run` must finish within :attr:`timeout` seconds."""

    name: str
    timeout: float

    @abstractmethod
    async def run(self, completion: Completion) -> None:
        """Do the hook's work; raise on failure."""


class CommandHook(ShutdownHook):
    """Runs a user command with the model paths in its environment."""

    name = "command"

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout

    async def run(self, completion: Completion) -> None:
        environment = {
            **os.environ,
            "FEDAGG_STATE": completion.state,
            "FEDAGG_FINAL_ROUND": str(completion.final_round),
            "FEDAGG_BEST_MODEL": str(completion.best_model or ""),
            "FEDAGG_LAST_MODEL": str(completion.last_model or ""),
            "FEDAGG_BEST_METRIC": "" if completion.best_metric is None else repr(completion.best_metric),
        }
        process = await asyncio.create_subprocess_exec(*self.argv, env=environment)
        try:
            code = await asyncio.wait_for(process.wait(), self.timeout)
        except (TimeoutError, asyncio.CancelledError):  # timed out here, or given up on by run_hooks
            process.kill()
            await asyncio.shield(process.wait())
            raise
        if code != 0:
            raise RuntimeError(f"{self.argv[0]} exited with status {code}")


async def run_hooks(
    hooks: Sequence[ShutdownHook], completion: Completion, on_failure: Callable[[str], None]
) -> list[str]:
    """Run every hook in order; return the names of those that failed."""
    failed = []
    for hook in hooks:
        try:
            await asyncio.wait_for(hook.run(completion), hook.timeout)
        except Exception as error:
            reason = "timed out" if isinstance(error, TimeoutError) else str(error) or type(error).__name__
            log.error("shutdown hook %s failed: %s", hook.name, reason)
            on_failure(hook.name)
            failed.append(hook.name)
        else:
            log.info("shutdown hook %s done", hook.name)
    return failed
