"""Real OpenFL 1.9 collaborators against fedagg and OpenFL's aggregator when things go wrong: stragglers left out
by the plan's policy, a collaborator killed mid-round, impostors (the setup: side_by_side.py).
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.interop.fx_workspace import (
    FxWorkspace,
    processes,
    wait_until,
)
from tests.interop.openfl import CollaboratorSpec, start_collaborator
from tests.interop.openfl_19.side_by_side import (
    FINISH_SECONDS,
    LAST_TASK,
    ONE,
    TWO,
    count,
    side_by_side,
    workspace_from,
)
from tests.interop.openfl_results import (
    assert_fedagg_closed_form,
    assert_models_closed_form,
    closed_form,
    oracle_models,
)

pytestmark = pytest.mark.interop


PERCENTAGE_POLICY = "openfl.component.aggregator.straggler_handling.PercentagePolicy"


# --- stragglers left out by the plan's policy ---------------------------------------------------------------

# A 1.9 straggler template (PercentagePolicy, 50%): a round ends as soon as one collaborator has all its
# tasks in. Both stall before their last task in every round, "two" twice as long as "one" (longer than a
# whole round of "one"), so "one" always finishes first while "two" has uploaded train of the round it is in
# (partial work both aggregators must leave out): every model is "one"'s alone, G(r+1) = s (r+1)(r+2)/2,
# while any share of "two" (step 100) would show at once.
ONE_STALL = 3.0
TWO_STALL = 6.0


def test_percentage_policy_template_leaves_out_stragglers_like_openfl(
    template: FxWorkspace, tmp_path: Path
) -> None:
    one = replace(ONE, stall_before_task=LAST_TASK, stall_seconds=ONE_STALL)
    two = replace(TWO, step=100.0, stall_before_task=LAST_TASK, stall_seconds=TWO_STALL)

    def percentage(plan: dict[str, Any]) -> None:
        plan["straggler_handling_policy"] = {
            "template": PERCENTAGE_POLICY,
            "settings": {"percent_collaborators_needed": 0.5, "minimum_reporting": 1},
        }

    with processes() as started:
        workspace = workspace_from(template, tmp_path / "fedagg", (one, two), 3, edit=percentage)
        run = side_by_side(workspace, tmp_path, started)
        collaborators = {
            side: [run.start(side, "one", started), run.start(side, "two", started)]
            for side in ("fedagg", "oracle")
        }
        run.finish(collaborators)

    run.assert_same_results()
    assert_fedagg_closed_form(run.fedagg_workspace, (one,), "one's alone")
    models, _ = closed_form((one,), run.rounds)
    assert_models_closed_form(oracle_models(run.oracle_output, run.rounds), models, "OpenFL: one's alone")
    summary = json.loads((run.oracle_output / "summary.json").read_text())
    assert summary["participants"] == {
        str(r): {"done": ["one"], "stragglers": ["two"]} for r in range(run.rounds)
    }
    finished = re.findall(r"round (\d+) finished: (\d+) contributor", run.fedagg.log())
    assert finished == [(str(r), "1") for r in range(run.rounds)], finished
    for side, workspace in run.workspaces().items():
        (record,) = workspace.records("two")
        assert any("trained" in entry for entry in record), (side, "two uploaded train in a round", record)
        assert all(entry.get("stalled") == [LAST_TASK] for entry in record), (side, record)


# --- a collaborator killed after its train upload -----------------------------------------------------------

OWN_RESULTS_FETCH = re.compile(
    r"Fetching latest layer from aggregator \('(\w+)', 'one', (\d+), False, \('one', 'trained'\)\)"
)


@pytest.mark.parametrize(
    ("delta", "kill_round"),
    [(False, 1), (True, 0)],
    ids=["full_updates_round_1", "delta_updates_round_0"],
)
def test_collaborator_killed_after_train_upload_fetches_its_own_results(
    template: FxWorkspace, tmp_path: Path, delta: bool, kill_round: int
) -> None:
    """SIGKILL "one" right after its train upload of ``kill_round``; restarted, it gets only the task left
    (local validation), fetches its own trained tensors back (``GetAggregatedTensor`` tags ``[one, trained]``)
    and the round completes: the models are the undisturbed ones of OpenFL's aggregator (and the closed form).

    With the plan's ``use_delta_updates: false`` (the template's) every upload is whole; with ``true`` (1.9's
    default collaborator.yaml) a 1.9 collaborator sends round 0's train as a delta from the initial model
    (tags ``[compressed, delta, trained]``), so what it gets back must be the delta applied."""
    stalling = replace(ONE, stall_before_task=LAST_TASK, stall_seconds=600, stall_round=kill_round)
    with processes() as started:

        def updates(plan: dict[str, Any]) -> None:
            plan["collaborator"]["settings"]["use_delta_updates"] = delta

        workspace = workspace_from(template, tmp_path / "fedagg", (ONE, TWO), 2, edit=updates)
        run = side_by_side(workspace, tmp_path, started)
        run.fedagg_workspace.set_profile(stalling)
        collaborators = {side: [run.start(side, "two", started)] for side in ("fedagg", "oracle")}
        collaborators["oracle"].append(run.start("oracle", "one", started))  # undisturbed
        first = run.start("fedagg", "one", started, "one-killed")

        def stalled() -> bool:
            records = run.fedagg_workspace.records("one")
            return bool(records) and any(entry.get("stalled") for entry in records[0])

        wait_until(
            stalled, 120, f"one uploading round {kill_round}'s train, then stalling before its last task"
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        run.fedagg_workspace.set_profile(ONE)  # the restarted process does not stall
        collaborators["fedagg"].append(run.start("fedagg", "one", started, "one-restarted"))
        run.finish(collaborators)

    run.assert_same_results()
    assert_fedagg_closed_form(run.fedagg_workspace, (ONE, TWO), "undisturbed")
    killed, restarted = run.fedagg_workspace.records("one")
    assert [entry["round"] for entry in killed] == list(range(kill_round + 1))
    assert set(killed[-1]["metrics"]) == {"aggregated_model_validation", "train"}, "killed mid-round"
    assert [entry["round"] for entry in restarted] == list(range(kill_round, run.rounds))
    assert set(restarted[0]["metrics"]) == {LAST_TASK}, "only the task left, no retraining"
    log = run.fedagg_workspace.plain_log(run.log("fedagg", "one-restarted")).read_text()
    fetched = {
        name for name, round_number in OWN_RESULTS_FETCH.findall(log) if int(round_number) == kill_round
    }
    assert fetched == {"b", "w"}, ("own results fetched", log[-3000:])
    # What the same plan makes a 1.9 collaborator upload (seen by the oracle): a delta or the whole tensors.
    uploads = json.loads((run.oracle_output / "summary.json").read_text())["uploads"]
    (train,) = [
        u for u in uploads if (u["collaborator"], u["task"], u["round"]) == ("one", "train", kill_round)
    ]
    weights = [tensor for tensor in train["tensors"] if tensor["name"] in ("w", "b")]
    assert [("delta" in tensor["tags"]) for tensor in weights] == [delta, delta], train


# --- impostors ----------------------------------------------------------------------------------------------


def test_impostors_are_refused_while_the_others_train(
    python: Path, template: FxWorkspace, tmp_path: Path
) -> None:
    """Two 1.9 impostors (CN "mallory", not in cols.yaml; and "mallory"'s certificate claiming to be "one")
    get UNAUTHENTICATED from fedagg and, 1.9 clients retrying every error forever, keep trying until
    killed; "one" and "two" train meanwhile, and the results are OpenFL's (its run has no impostors)."""
    specs = (ONE, TWO)
    impostors = (("mallory", "mallory"), ("one", "mallory"))  # (name claimed, certificate used)
    refused = "error code StatusCode.UNAUTHENTICATED"
    with processes() as started:
        run = side_by_side(workspace_from(template, tmp_path / "fedagg", specs, 2), tmp_path, started)
        federation_uuid, aggregator_uuid = run.fedagg_workspace.uuids()
        fakes = {
            claimed: start_collaborator(
                python,
                CollaboratorSpec(claimed, 1000.0, 10, 10),
                run.fedagg_workspace.port,
                federation_uuid,
                aggregator_uuid,
                None,
                False,
                tmp_path / f"impostor-{claimed}.json",
                tmp_path / f"impostor-{claimed}.log",
                tls=run.fedagg_workspace.client_tls(certificate),
                timeout=FINISH_SECONDS,
            )
            for claimed, certificate in impostors
        }
        started.extend(fakes.values())
        collaborators = {"oracle": [run.start("oracle", spec.name, started) for spec in specs]}

        def refusals(claimed: str) -> int:
            return count(tmp_path / f"impostor-{claimed}.log", refused)

        wait_until(
            lambda: all(refusals(claimed) >= 2 for claimed in fakes), 60, "both impostors refused twice"
        )
        collaborators["fedagg"] = [run.start("fedagg", spec.name, started) for spec in specs]
        run.finish(collaborators)
        for claimed, process in fakes.items():
            assert process.poll() is None, (claimed, "a refused 1.9 collaborator keeps retrying")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            log = (tmp_path / f"impostor-{claimed}.log").read_text()
            assert "Received Tasks" not in log, (claimed, log[-3000:])

    run.assert_same_results()
    assert_fedagg_closed_form(run.fedagg_workspace, specs, "the honest ones")
    assert "refused caller" in run.fedagg.log(), run.fedagg.log()[-3000:]
