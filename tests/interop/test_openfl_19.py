"""Real OpenFL 1.9 collaborators against fedagg, side by side with OpenFL 1.9's own aggregator.

The workspaces are made by 1.9's own ``fx`` (``fx workspace create --template torch/template``, then ``fx plan
initialize``), so the plan is the default 1.9 plan with fx's defaults merged into it (its 0% ``evaluation``
task group, ``persist_checkpoint``, ``enable_atomic_connections``, ...). The only changes (see
``make_fx_workspace``): a fixed free loopback port instead of ``agg_port: auto`` (set before fx hashes the
plan), ``client_reconnect_interval: 1``, and openfl_side/numpy_task.py as the task runner and data loader (no
torch, no data; every value the aggregators produce has a closed form). The first test builds its workspace
from scratch; the others copy one fx made for the module and set their port, rounds, collaborators and plan
changes (``copy_fx_workspace``: what fx would have produced, without its OpenFL processes).

fedagg serves a workspace with ``fedagg serve --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml``
(plus a ``--config`` with loopback, ephemeral ops ports and ``sleep_seconds: 1``); the oracle is OpenFL's
``Aggregator`` built by ``Plan.get_aggregator()`` from a copy of the workspace that differs only in its port
(oracle_aggregator.py ``--plan``, told to answer idle collaborators ``sleep_time: 1`` instead of 10, like
fedagg). The collaborators are ``fx collaborator start -n NAME`` in the respective workspace;
openfl_side/collaborator.py processes play impostors and collaborators of other versions. Per-round models
and aggregated metrics must be equal (rtol 1e-6), and fedagg's ``save/last.pbuf`` (the plan's
``last_state_path``) must hold round R. A 1.9 collaborator asserts the aggregator and federation uuids on
every reply, so each run also proves that fedagg serves the identity OpenFL derives from the plan.

Every wait polls with a timeout; OpenFL processes are CPU-heavy to start (about 3 s of imports each), which
dominates the run time on a small machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedagg.pki.federation import write_federation_pki
from tests.interop.fx_workspace import (
    FxWorkspace,
    copy_fx_workspace,
    free_port,
    make_fx_workspace,
    processes,
    serve_workspace,
    start_plan_oracle,
    wait_until,
)
from tests.interop.openfl import TASKS, CollaboratorSpec, openfl_python, start_collaborator
from tests.interop.openfl_results import (
    assert_fedagg_closed_form,
    assert_last_model,
    assert_metrics_equal,
    assert_models_closed_form,
    assert_models_equal,
    closed_form,
    fedagg_metrics,
    fedagg_models,
    oracle_metrics,
    oracle_models,
)
from tests.support.process import FedaggProcess

pytestmark = pytest.mark.interop

ONE = CollaboratorSpec("one", 1.0, 10, 20)
TWO = CollaboratorSpec("two", 2.0, 30, 5)
LAST_TASK = "locally_tuned_model_validation"
PERCENTAGE_POLICY = "openfl.component.aggregator.straggler_handling.PercentagePolicy"
FINISH_SECONDS = 180
Processes = list[subprocess.Popen[Any]]


@pytest.fixture(scope="module")
def python() -> Path:
    return openfl_python("1.9")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fedagg certs``' OpenFL layout (cert_chain.crt, server/agg_localhost.*, client/col_<name>.*)."""
    pki = write_federation_pki(
        tmp_path_factory.mktemp("pki"), ["one", "two", "three", "mallory"], ["localhost"]
    )
    return pki.openfl_cert_dir


@pytest.fixture(scope="module")
def template(python: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> FxWorkspace:
    """A workspace fx made (create + initialize) that the tests copy and adapt (``copy_fx_workspace``);
    nothing ever runs in it. The first test builds its own, from scratch."""
    return make_fx_workspace(
        python, tmp_path_factory.mktemp("fx") / "template", (ONE, TWO), None, free_port(), certs
    )


def workspace_from(
    template: FxWorkspace,
    root: Path,
    specs: tuple[CollaboratorSpec, ...],
    rounds: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> FxWorkspace:
    return copy_fx_workspace(template, root, free_port(), specs=specs, rounds=rounds, edit=edit)


@dataclass
class SideBySide:
    """The same plan served by fedagg and by OpenFL 1.9's aggregator (two workspaces, two ports)."""

    directory: Path
    fedagg_workspace: FxWorkspace
    oracle_workspace: FxWorkspace
    fedagg: FedaggProcess
    oracle: subprocess.Popen[str]

    @property
    def rounds(self) -> int:
        return self.fedagg_workspace.rounds

    @property
    def oracle_output(self) -> Path:
        return self.directory / "oracle-output"

    def workspaces(self) -> dict[str, FxWorkspace]:
        return {"fedagg": self.fedagg_workspace, "oracle": self.oracle_workspace}

    def log(self, side: str, name: str) -> Path:
        return self.directory / f"{side}-{name}.log"

    def start(self, side: str, name: str, started: Processes, log_name: str = "") -> subprocess.Popen[Any]:
        """``fx collaborator start -n NAME`` in one side's workspace."""
        workspace = self.workspaces()[side]
        process = workspace.start_collaborator(name, self.log(side, log_name or name))
        started.append(process)
        return process

    def finish(self, collaborators: dict[str, Processes]) -> None:
        """Wait for the given collaborators (exit 0), then both aggregators (exit 0)."""
        for side, group in collaborators.items():
            codes = [process.wait(timeout=FINISH_SECONDS) for process in group]
            assert codes == [0] * len(group), (side, codes, self.logs(side))
        assert self.fedagg.wait(timeout=60) == 0, self.fedagg.log()[-5000:]
        assert self.oracle.wait(timeout=60) == 0, (self.oracle_output / "oracle.log").read_text()[-5000:]

    def logs(self, side: str) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob(f"{side}-*.log"))
        )

    def assert_same_results(self, openfl_reader: bool = False) -> None:
        """fedagg's per-round models and aggregated metrics equal OpenFL's; its last.pbuf holds round R."""
        rounds, state = self.rounds, self.fedagg_workspace.state_dir
        expected = oracle_models(self.oracle_output, rounds)
        assert_models_equal(fedagg_models(state, rounds), expected, "fedagg vs OpenFL")
        assert_metrics_equal(
            fedagg_metrics(state, rounds), oracle_metrics(self.oracle_output), "fedagg vs OpenFL"
        )
        assert_last_model(self.fedagg_workspace, self.directory, rounds, expected[-1], openfl_reader)


def side_by_side(fedagg_workspace: FxWorkspace, directory: Path, started: Processes) -> SideBySide:
    """fedagg serves ``fedagg_workspace``; OpenFL's aggregator a copy of it that differs only in its port."""
    oracle_workspace = copy_fx_workspace(fedagg_workspace, directory / "oracle", free_port())
    fedagg = serve_workspace(fedagg_workspace, directory / "fedagg-ops", fedagg_workspace.rounds + 1)
    started.append(fedagg.process)
    oracle, port = start_plan_oracle(oracle_workspace, directory / "oracle-output")
    started.append(oracle)
    assert port == oracle_workspace.port
    return SideBySide(directory, fedagg_workspace, oracle_workspace, fedagg, oracle)


def count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.exists() else 0


# 1 ---------------------------------------------------------------------------------------------------------


def test_default_fx_plan_trains_like_openfl(python: Path, certs: Path, tmp_path: Path) -> None:
    """The default 1.9 workspace plan as fx wrote it (even its rounds), served by fedagg: OpenFL's results."""
    specs = (ONE, TWO)
    with processes() as started:
        workspace = make_fx_workspace(python, tmp_path / "fedagg", specs, None, free_port(), certs)
        run = side_by_side(workspace, tmp_path, started)
        plan = run.fedagg_workspace.plan_config()
        groups = {group["name"]: group["percentage"] for group in plan["assigner"]["settings"]["task_groups"]}
        assert groups == {"learning": 1.0, "evaluation": 0}, "1.9's default assigner, with its 0% group"
        assert plan["aggregator"]["settings"]["persist_checkpoint"] is True
        assert plan["network"]["settings"]["agg_addr"] == "localhost"
        assert run.rounds == 2, "the template's rounds_to_train"

        collaborators = {
            side: [run.start(side, spec.name, started) for spec in specs] for side in ("fedagg", "oracle")
        }
        run.finish(collaborators)

    run.assert_same_results(openfl_reader=True)
    assert_fedagg_closed_form(run.fedagg_workspace, specs, "closed form")
    for side, workspace in run.workspaces().items():
        for spec in specs:
            (record,) = workspace.records(spec.name)
            assert [entry["round"] for entry in record] == list(range(run.rounds)), (side, spec.name)
            assert all(set(entry["metrics"]) == set(TASKS) for entry in record), (side, spec.name)


# 2 ---------------------------------------------------------------------------------------------------------

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


# 3 ---------------------------------------------------------------------------------------------------------

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


# 4 ---------------------------------------------------------------------------------------------------------


def test_openfl_171_and_19_collaborators_in_one_federation(
    python: Path, template: FxWorkspace, tmp_path: Path
) -> None:
    """One fedagg serves a 1.9 workspace to a 1.7.1 collaborator (delta updates), a 1.9 ``fx`` collaborator
    (full updates, the plan's) and a 1.9 collaborator with delta updates: the closed-form models."""
    python_171 = openfl_python("1.7.1")
    three = CollaboratorSpec("three", 3.0, 20, 10)
    specs = (ONE, TWO, three)
    rounds = 3
    workspace = workspace_from(template, tmp_path / "fedagg", specs, rounds)
    federation_uuid, aggregator_uuid = workspace.uuids()
    with processes() as started:
        fedagg = serve_workspace(workspace, tmp_path / "fedagg-ops", rounds + 1)
        started.append(fedagg.process)
        scripted = {
            spec.name: start_collaborator(
                collaborator_python,
                spec,
                workspace.port,
                federation_uuid,
                aggregator_uuid,
                None,
                True,
                tmp_path / f"{spec.name}.json",
                tmp_path / f"{spec.name}.log",
                tls=workspace.client_tls(spec.name),
            )
            for spec, collaborator_python in ((ONE, python_171), (three, python))
        }
        started.extend(scripted.values())
        fx_two = workspace.start_collaborator("two", tmp_path / "two.log")
        started.append(fx_two)
        for name, process in (*scripted.items(), ("two", fx_two)):
            assert process.wait(timeout=FINISH_SECONDS) == 0, (
                name,
                (tmp_path / f"{name}.log").read_text()[-3000:],
            )
        assert fedagg.wait(timeout=60) == 0, fedagg.log()[-5000:]

    assert_fedagg_closed_form(workspace, specs, "1.7.1 + 1.9")
    models, _ = closed_form(specs, rounds)
    shapes = {name: array.shape for name, array in fedagg_models(workspace.state_dir, rounds)[-1].items()}
    assert_last_model(
        workspace,
        tmp_path,
        rounds,
        {name: np.full(shape, models[-1], np.float32) for name, shape in shapes.items()},
        openfl_reader=False,
    )
    for spec in (ONE, three):
        result = json.loads((tmp_path / f"{spec.name}.json").read_text())
        assert [entry["round"] for entry in result["rounds"]] == list(range(rounds)), spec.name
    (record,) = workspace.records("two")
    assert [entry["round"] for entry in record] == list(range(rounds))


# 5 ---------------------------------------------------------------------------------------------------------


def test_fx_collaborator_ping(template: FxWorkspace, tmp_path: Path) -> None:
    """``fx collaborator ping`` gets fedagg's Ping answer and exits 0; against a port where nothing listens it
    never succeeds (1.9 retries every error forever), so it is killed."""
    workspace = workspace_from(template, tmp_path / "fedagg", (ONE, TWO), 1)
    wrong = workspace.plan_config()
    wrong["network"]["settings"]["agg_port"] = free_port()
    (workspace.root / "plan" / "wrong-port.yaml").write_text(yaml.safe_dump(wrong))
    with processes() as started:
        fedagg = serve_workspace(workspace, tmp_path / "fedagg-ops", 2)
        started.append(fedagg.process)

        ping = workspace.run("collaborator", "ping", "-n", "one", timeout=60)
        output = ping.stdout + ping.stderr
        assert ping.returncode == 0, output[-5000:]
        assert "Aggregator pong!" in output, output[-5000:]
        assert f"The Aggregator is reachable at localhost:{workspace.port}" in output, output[-5000:]
        assert "TLS connection established." in output, output[-5000:]

        log = tmp_path / "ping-wrong-port.log"
        failing = workspace.start(log, "collaborator", "ping", "-n", "one", "-p", "plan/wrong-port.yaml")
        started.append(failing)
        plain = workspace.plain_log(log)
        wait_until(
            lambda: count(plain, "error code StatusCode.UNAVAILABLE") >= 2 or failing.poll() is not None,
            60,
            "two failed pings",
        )
        assert failing.poll() is None, ("a failed ping must not end the command", log.read_text()[-3000:])
        assert "pong" not in plain.read_text()
        failing.send_signal(signal.SIGKILL)
        failing.wait(timeout=10)

        fedagg.terminate()  # nobody trained: stop it the way Kubernetes does
        assert fedagg.wait(timeout=60) == 0, fedagg.log()[-5000:]


# 6 ---------------------------------------------------------------------------------------------------------


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
