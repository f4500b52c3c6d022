"""Collaborator states over real gRPC: a long training step, a held long-poll GetTasks, a restart."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from fedagg.cli import main
from fedagg.cli.observe import status_document
from fedagg.collaborator.client import TasksReply
from fedagg.federation.federation import Federation
from tests.support.pki import Pki
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    ManualClock,
    ServerThread,
    client_for,
    make_federation,
    make_plan,
    restart_federation,
    serving,
)
from tests.support.uploads import run_round

TRAINING_SECONDS = 40


def states(thread: ServerThread, pki: Pki) -> dict[str, dict[str, object]]:
    """``fedagg status -o json``'s collaborators, by name, as an observer reads them over gRPC."""
    with client_for(thread, "observer", pki) as observer:
        document = status_document(observer.experiment_description(), 0.0)
    return {entry.pop("name"): entry for entry in document["collaborators"]}


def held_until(federation: Federation, name: str) -> None:
    """Wait (30 s at most) until ``name``'s call is in progress: the federation's contact book sees it."""
    event = threading.Event()
    for _ in range(3000):
        if next(c for c in federation.describe().collaborators if c.name == name).status == "held":
            return
        event.wait(0.01)
    raise AssertionError(f"{name}'s call never reached the aggregator")


def status_table(thread: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]) -> str:
    """``fedagg status``'s text, as an operator reads it."""
    capsys.readouterr()
    identity = [
        "--ca",
        str(pki.ca),
        "--cert",
        f"{pki.root}/observer.crt",
        "--key",
        f"{pki.root}/observer.key",
    ]
    options = [
        "--federation-uuid",
        FEDERATION_UUID,
        "--aggregator-uuid",
        AGGREGATOR_UUID,
        "--name",
        "observer",
    ]
    assert main(["status", "--address", thread.address, *identity, *options]) == 0
    return capsys.readouterr().out


def test_training_held_waiting_then_quit_and_done_across_a_restart(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = ManualClock()
    plan = make_plan(("one", "two", "three"), 1, sleep_seconds=10)
    federation = make_federation(tmp_path, plan, zero_model(), clock=clock)
    held: list[TasksReply] = []
    with serving(federation, pki, observers=("observer",)) as thread:
        with client_for(thread, "one", pki) as one:
            assert one.get_tasks().tasks, "one trains from now on"
        run_round(federation, 0, {"two": (1.0, 10)}, SHAPES)
        two = client_for(thread, "two", pki)
        waiter = threading.Thread(target=lambda: held.append(two.get_tasks()))
        waiter.start()
        held_until(federation, "two")
        clock.now += TRAINING_SECONDS

        during = states(thread, pki)
        table = status_table(thread, pki, capsys)

        run_round(federation, 0, {"one": (1.0, 10), "three": (2.0, 10)}, SHAPES)
        waiter.join(timeout=30)
        two.close()
        with client_for(thread, "one", pki) as one:
            assert one.get_tasks().quit
    assert held[0].quit, "the held call was answered once training ended"

    assert {name: entry["status"] for name, entry in during.items()} == {
        "one": "training",
        "two": "held",
        "three": "waiting",
    }
    assert during["one"]["current_task"] == "aggregated_model_validation"
    assert during["one"]["training_since"] == during["one"]["last_contact"]
    assert during["two"]["last_contact"] - during["one"]["training_since"] == pytest.approx(
        TRAINING_SECONDS, abs=5
    )
    assert during["three"]["last_contact"] is None
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:]}
    assert re.fullmatch(r"training for 4\ds", " ".join(rows["one"][:3])), table
    assert (rows["two"][0], rows["two"][-2:]) == ("held", ["just", "now"]), table
    assert (rows["three"][0], rows["three"][-1]) == ("waiting", "never"), table

    restarted = restart_federation(tmp_path, plan)
    with serving(restarted, pki, observers=("observer",)) as thread:
        after = states(thread, pki)

    assert {name: (entry["status"], entry["progress"]) for name, entry in after.items()} == {
        "one": ("quit", 1.0),
        "two": ("quit", 1.0),
        "three": ("done", 1.0),
    }
