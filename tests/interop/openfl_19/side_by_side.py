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

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ports import free_port
from tests.interop.fx_workspace import (
    FxWorkspace,
    copy_fx_workspace,
    serve_workspace,
    start_plan_oracle,
)
from tests.interop.openfl import CollaboratorSpec
from tests.interop.openfl_results import (
    assert_last_model,
    assert_metrics_equal,
    assert_models_equal,
    fedagg_metrics,
    fedagg_models,
    oracle_metrics,
    oracle_models,
)
from tests.support.process import FedaggProcess

ONE = CollaboratorSpec("one", 1.0, 10, 20)
TWO = CollaboratorSpec("two", 2.0, 30, 5)
LAST_TASK = "locally_tuned_model_validation"


FINISH_SECONDS = 180
Processes = list[subprocess.Popen[Any]]


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
