"""The same four OpenFL collaborators (same plan, data and initial model) trained three ways at once: through a root
and two ingest replicas behind HAProxy, by a standalone ``fedagg serve``, and by OpenFL's own aggregator
(tests/interop/openfl_side/oracle_aggregator.py, of the collaborators' OpenFL version). Each way has its own
collaborator processes; each keeps every round's model (fedagg: ``rounds_kept``; OpenFL's: ``round-<r>.npz``).

The train task's aggregation is given as an OpenFL plan gives it (:class:`Method`); fedagg's is what a plan import
makes of it (``openfl_aggregation``), OpenFL's is what ``Plan.build`` makes of it, an adaptive optimizer's
``params`` being the initial model (OpenFL's own use).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedagg.federation.aggregators.registry import openfl_aggregation
from tests.faults.harness import Aggregator, OpenflCollaborators, Setup, make_setup, stop
from tests.interop.openfl import CollaboratorSpec, start_oracle
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.tier.conftest import COLLABORATORS, REPLICAS
from tests.tier.serving import Tier, finish_tier_processes, running_tier

SPECS = tuple(
    CollaboratorSpec(name, step, train_size, valid_size)
    for name, step, train_size, valid_size in zip(
        COLLABORATORS, (1.0, 2.0, 0.5, 3.0), (10, 30, 25, 7), (20, 5, 10, 15), strict=True
    )
)
"""Unequal steps and data sizes, so that the weights matter."""
FINISH_SECONDS = 240
"""How long a way may take to train (three federations of four OpenFL processes share a small machine)."""
TEMPLATE = "openfl.interface.aggregation_functions."


@dataclass(frozen=True)
class Method:
    """The train task's ``aggregation_type`` as an OpenFL plan gives it (class name under ``TEMPLATE``, settings)."""

    function: str
    settings: dict[str, Any] = field(default_factory=dict)

    def openfl(self) -> dict[str, Any]:
        return {"template": TEMPLATE + self.function, "settings": dict(self.settings)}

    def fedagg_plan(self) -> dict[str, Any]:
        """fedagg's ``federation`` tasks and assigner: the default plan's, train aggregated as a plan import makes
        it (the task group spelled out: a written config's keys are sorted)."""
        kind, settings = openfl_aggregation(TEMPLATE + self.function, self.settings)
        tasks = {
            "aggregated_model_validation": validation("global"),
            "train": {
                "function": "train_task",
                "kwargs": {"metrics": ["loss"], "epochs": 1},
                "aggregation": kind,
                "aggregation_settings": settings,
            },
            "locally_tuned_model_validation": validation("local"),
        }
        group = {"name": "learning", "tasks": list(tasks), "percentage": 1.0}
        return {"tasks": tasks, "assigner": {"task_groups": [group]}}


def validation(model: str) -> dict[str, Any]:
    """A validation task of the ``global`` (received) or ``local`` (trained) model."""
    return {"function": "validate_task", "kwargs": {"apply": model, "metrics": ["acc"]}}


WEIGHTED_AVERAGE = Method("WeightedAverage")
ADAM = Method(
    "AdamAdaptiveAggregation",
    {"learning_rate": 0.1, "betas": [0.8, 0.99], "initial_accumulator_value": 0.01, "epsilon": 1e-5},
)


@dataclass(frozen=True)
class ThreeWays:
    """Where each way kept its models: the tier (its root's state), the standalone pod's state, OpenFL's output."""

    tier: Tier
    standalone: Setup
    oracle_output: Path


def train_three_ways(directory: Path, pki: Pki, python: Path, method: Method, rounds: int) -> ThreeWays:
    """Start OpenFL's aggregator, a standalone fedagg and the tier, each with its own four collaborators of
    ``python``'s OpenFL, and wait until each way ran to its end (every collaborator had its quit job, every
    aggregator process exited 0)."""
    model = write_zero_model(directory)
    federation = {
        "collaborators": list(COLLABORATORS),
        "rounds_kept": rounds + 1,
        **method.fedagg_plan(),
    }
    oracle_dir, oracle_output = directory / "oracle", directory / "oracle" / "output"
    oracle_output.mkdir(parents=True)
    (directory / "standalone").mkdir()
    (directory / "tier").mkdir()
    standalone = make_setup(directory / "standalone", pki, rounds, model, federation=federation)
    started: list[Aggregator | OpenflCollaborators] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: stop(*started))  # kills what still runs, keeps the fedagg logs
        oracle, port = start_oracle(
            python,
            list(COLLABORATORS),
            rounds,
            model,
            FEDERATION_UUID,
            AGGREGATOR_UUID,
            pki,
            oracle_dir / "state",
            oracle_output,
            train_aggregation=method.openfl(),
            sleep_time=1,
        )
        stack.callback(oracle.kill)
        # OpenflCollaborators reads only a setup's directory (their logs) and port.
        oracle_setup = Setup(oracle_dir, oracle_output / "summary.json", port, rounds)
        started.append(OpenflCollaborators(oracle_setup, pki, python, specs=SPECS))
        single = Aggregator(standalone.config, name="standalone")
        started.append(single)
        single.wait_for_federation()
        started.append(OpenflCollaborators(standalone, pki, python, specs=SPECS))
        tier = stack.enter_context(
            running_tier(directory / "tier", pki, rounds, model, REPLICAS, COLLABORATORS, **federation)
        )
        started.extend((tier.root, *tier.replicas.values()))
        started.append(OpenflCollaborators(tier.setup, pki, python, specs=SPECS))

        for each in started:
            if isinstance(each, OpenflCollaborators):
                each.wait(FINISH_SECONDS)
        assert oracle.wait(60) == 0, (oracle_output / "oracle.log").read_text()[-5000:]
        single.wait_finished(60)
        finish_tier_processes(tier)
    return ThreeWays(tier, standalone, oracle_output)
