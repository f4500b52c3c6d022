"""One aggregator per state directory: a second ``fedagg serve`` on the same state waits, saying who holds it, and
takes over when the first exits (a replaced Job's pods overlapping on one volume)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config

WAITING = r"state directory .* is in use by another fedagg process \(pid (\d+) on "


def test_a_second_aggregator_waits_for_the_first_then_takes_over(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path))
    with FedaggProcess(config) as first:
        first.wait_for_federation()
        with FedaggProcess(config) as second:
            line = second.wait_for_line(WAITING)
            assert f"pid {first.process.pid} on " in line
            assert not second.federation_port, "the second aggregator listened while the first held the state"

            first.terminate()
            assert first.wait() == 0
            second.wait_for_federation()
            second.terminate()
            assert second.wait() == 0
    assert "restored checkpoint checkpoint.json: round 0" in second.log(), second.log()


def test_a_waiting_aggregator_stops_at_once_on_sigterm(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path))
    with FedaggProcess(config) as first:
        first.wait_for_federation()
        with FedaggProcess(config) as second:
            second.wait_for_line(WAITING)
            second.terminate()
            assert second.wait(timeout=30) == 0
            assert first.process.poll() is None, "the first aggregator must be untouched"
        first.terminate()
        assert first.wait() == 0
