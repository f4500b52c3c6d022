"""Operations never fail silently: the metrics collector never raises, background tasks survive their errors.

Regressions of issue 8, defect 9: /metrics answered 500 while a restore ran, and the straggler-deadline watcher
died on its first exception.
"""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fedagg.federation.events import ExperimentStatus, FederationListener
from fedagg.federation.progress_health import FederationHealth
from fedagg.ops.state_metrics import FederationStateCollector
from fedagg.server import round_clock
from fedagg.server.round_clock import RoundClock
from tests.support.runners import zero_model
from tests.support.servers import make_federation, make_plan


def scrape(status: object) -> str:
    registry = CollectorRegistry()
    registry.register(FederationStateCollector(status, lambda: False))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_metrics_report_restoring_while_the_state_is_restored(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(("one",), 1), zero_model(), restore=False)

    text = scrape(federation.describe)

    assert 'fedagg_experiment_state{state="restoring"} 1.0' in text
    assert "fedagg_storage_failing 0.0" in text


def test_a_failing_status_never_fails_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> ExperimentStatus:
        raise RuntimeError("state unreadable")

    text = scrape(broken)

    assert "fedagg_round " not in text
    assert "reading the federation state for /metrics failed" in caplog.text


def test_the_round_clock_keeps_ticking_after_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation = make_federation(tmp_path, make_plan(("one",), 1), zero_model())
    monkeypatch.setattr(round_clock, "TICK_SECONDS", 0.001)
    ticks: list[int] = []
    errors: list[str] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 1:
            raise OSError("the disk hiccuped")

    monkeypatch.setattr(federation, "tick", tick)

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            task = asyncio.create_task(RoundClock(federation, executor, errors.append).run())
            while len(ticks) < 3:
                await asyncio.sleep(0.001)
            task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=10))

    assert errors == ["round_clock"]
    assert len(ticks) >= 3


def test_a_success_elsewhere_does_not_clear_a_failing_spool() -> None:
    """Issue 16, item 12: readiness came back while the spool still refused writes (a checkpoint succeeded)."""
    health = FederationHealth(FederationListener())
    health.storage_failed("spool", OSError(errno.EROFS, "Read-only file system"))
    health.storage_ok("quit")
    assert not health.healthy
    health.storage_ok("spool")
    assert health.healthy
    health.storage_failed("spool", OSError(errno.EROFS, "Read-only file system"))
    health.storage_ok()  # the disk probe, which writes in every directory of the state
    assert health.healthy
