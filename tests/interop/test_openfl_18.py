"""Smoke test: real OpenFL 1.8 collaborators (``fx collaborator start``) train against fedagg.

The workspace is made by 1.8's own ``fx`` exactly as in openfl_19/ (``fx workspace create --template
torch/template``, the numpy task runner, a fixed free port, ``fx plan initialize``): 1.8's default plan, with
its ``openfl.component.WaitForAllPolicy`` straggler template and its persistent-checkpoint keys. fedagg serves
it with ``--openfl-plan``; the models and metrics must be the closed form of the collaborators' numpy runner,
and ``save/last.pbuf``, read by OpenFL 1.8 itself, the final aggregate of round R.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.ports import free_port
from fedagg.pki.federation import write_federation_pki
from tests.interop.fx_workspace import make_fx_workspace, processes, serve_workspace
from tests.interop.openfl import TASKS, CollaboratorSpec, openfl_python
from tests.interop.openfl_results import assert_fedagg_closed_form, assert_last_model, closed_form

pytestmark = pytest.mark.interop

ROUNDS = 3
SPECS = (CollaboratorSpec("one", 1.0, 10, 20), CollaboratorSpec("two", 2.0, 30, 5))


def test_openfl_18_fx_collaborators_train_against_fedagg(tmp_path: Path) -> None:
    python = openfl_python("1.8")
    pki = write_federation_pki(tmp_path / "pki", [spec.name for spec in SPECS], ["localhost"])
    workspace = make_fx_workspace(
        python, tmp_path / "workspace", SPECS, ROUNDS, free_port(), pki.openfl_cert_dir
    )
    plan = workspace.plan_config()
    assert "straggler_handling_policy" not in plan or plan["straggler_handling_policy"]["template"].endswith(
        "WaitForAllPolicy"
    ), plan.get("straggler_handling_policy")
    with processes() as started:
        fedagg = serve_workspace(workspace, tmp_path / "ops", ROUNDS + 1)
        started.append(fedagg.process)
        collaborators = {
            spec.name: workspace.start_collaborator(spec.name, tmp_path / f"{spec.name}.log")
            for spec in SPECS
        }
        started.extend(collaborators.values())
        for name, process in collaborators.items():
            assert process.wait(timeout=180) == 0, (name, (tmp_path / f"{name}.log").read_text()[-3000:])
        assert fedagg.wait(timeout=60) == 0, fedagg.log()[-5000:]

    assert_fedagg_closed_form(workspace, SPECS, "OpenFL 1.8 collaborators")
    models, _ = closed_form(SPECS, ROUNDS)
    final = {"w": np.full((2, 3), models[-1], np.float32), "b": np.full((3,), models[-1], np.float32)}
    assert_last_model(workspace, tmp_path, ROUNDS, final, openfl_reader=True)
    for spec in SPECS:
        (record,) = workspace.records(spec.name)
        assert [entry["round"] for entry in record] == list(range(ROUNDS)), spec.name
        assert all(set(entry["metrics"]) == set(TASKS) for entry in record), spec.name
