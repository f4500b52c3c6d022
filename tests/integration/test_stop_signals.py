"""Stopping ``fedagg serve`` from a terminal: Ctrl-C skips the endpoint wait, a second signal exits at once, and
the last line is a summary."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.models import write_zero_model
from tests.support.process import FedaggProcess, write_config

LONG_DRAIN = {"drain_seconds": 120, "grace_seconds": 180}
"""A drain far longer than any wait below: a process that exits within them did not wait it out."""


def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, None, ("one",), 2, write_zero_model(tmp_path), ops=LONG_DRAIN)


def test_ctrl_c_skips_the_endpoint_wait_and_ends_with_a_summary(tmp_path: Path) -> None:
    with FedaggProcess(config(tmp_path)) as process:
        process.wait_for_federation()

        process.process.send_signal(signal.SIGINT)

        assert process.wait(timeout=60) == 0
    assert "refusing new calls in 0.0s" in process.log()
    summary = process.lines[-1]
    assert (
        "summary: 0 of 2 rounds trained; best validate_agg metric none yet; models: best none yet, last none yet"
        in (summary)
    )


def test_a_second_signal_exits_at_once_and_says_so(tmp_path: Path) -> None:
    with FedaggProcess(config(tmp_path)) as process:
        process.wait_for_federation()
        process.terminate()  # SIGTERM: waits drain_seconds for endpoints
        process.wait_for_line("refusing new calls in 120.0s")

        process.process.send_signal(signal.SIGINT)

        assert process.wait(timeout=60) == 128 + signal.SIGINT
    assert "SIGINT again: exiting at once without draining" in process.lines[-1]
