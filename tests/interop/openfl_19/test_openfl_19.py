"""Real OpenFL 1.9 collaborators train against fedagg: the default fx plan side by side with OpenFL's aggregator,
1.7.1 and 1.9 collaborators in one federation, ``fx collaborator ping`` (the setup: side_by_side.py).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.ports import free_port
from tests.interop.fx_workspace import (
    FxWorkspace,
    make_fx_workspace,
    processes,
    serve_workspace,
    wait_until,
)
from tests.interop.openfl import TASKS, CollaboratorSpec, openfl_python, start_collaborator
from tests.interop.openfl_19.side_by_side import FINISH_SECONDS, ONE, TWO, count, side_by_side, workspace_from
from tests.interop.openfl_results import (
    assert_fedagg_closed_form,
    assert_last_model,
    closed_form,
    fedagg_models,
)

pytestmark = pytest.mark.interop


# --- the default fx plan ------------------------------------------------------------------------------------


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


# --- OpenFL 1.7.1 and 1.9 collaborators in one federation ---------------------------------------------------


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


# --- fx collaborator ping -----------------------------------------------------------------------------------


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
