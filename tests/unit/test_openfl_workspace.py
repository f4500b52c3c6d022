"""OpenFL 1.9 workspaces: what of a 1.9 plan fedagg uses, ignores or refuses (issue 9)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedagg.config.loading import load_config
from fedagg.federation.plan import AssignerKind, StragglerPolicyKind
from fedagg.openfl_workspace import load_openfl_workspace
from fedagg.settings import ConfigError
from tests.support.models import write_zero_model

ROOT = Path(__file__).resolve().parents[2]
FEDAGG = (sys.executable, "-m", "fedagg.cli")
TASKS = ["aggregated_model_validation", "train", "locally_tuned_model_validation"]
# The shape of a plan as OpenFL 1.9's `fx plan initialize` leaves it (its defaults merged).
PLAN_19: dict[str, Any] = {
    "aggregator": {
        "template": "openfl.component.Aggregator",
        "settings": {
            "rounds_to_train": 3,
            "db_store_rounds": 2,
            "init_state_path": "save/init.pbuf",
            "best_state_path": "save/best.pbuf",
            "last_state_path": "save/last.pbuf",
            "persist_checkpoint": True,
            "persistent_db_path": "local_state/tensor.db",
        },
    },
    "assigner": {
        "template": "openfl.component.RandomGroupedAssigner",
        "settings": {
            "task_groups": [
                {"name": "learning", "percentage": 1.0, "tasks": TASKS},
                {"name": "evaluation", "percentage": 0, "tasks": TASKS[:1]},
            ]
        },
    },
    "collaborator": {
        "template": "openfl.component.Collaborator",
        "settings": {"opt_treatment": "CONTINUE_LOCAL", "use_delta_updates": True, "db_store_rounds": 1},
    },
    "compression_pipeline": {"template": "openfl.pipelines.NoCompressionPipeline", "settings": {}},
    "network": {
        "template": "openfl.federation.Network",
        "settings": {
            "agg_addr": "localhost",
            "agg_port": "auto",
            "hash_salt": "auto",
            "use_tls": True,
            "client_reconnect_interval": 5,
            "require_client_auth": True,
            "cert_folder": "cert",
            "enable_atomic_connections": False,
            "transport_protocol": "grpc",
        },
    },
    "straggler_handling_policy": {"template": "openfl.component.WaitForAllPolicy", "settings": {}},
    "tasks": {
        "aggregated_model_validation": {"function": "validate_task", "kwargs": {"apply": "global"}},
        "locally_tuned_model_validation": {"function": "validate_task", "kwargs": {"apply": "local"}},
        "train": {"function": "train_task", "kwargs": {"epochs": 1}},
        "settings": {},
    },
}


def workspace(root: Path, plan: dict[str, Any]) -> tuple[Path, Path]:
    (root / "plan").mkdir(parents=True, exist_ok=True)
    (root / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    (root / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": ["alpha", "beta", "gamma"]}))
    return root / "plan" / "plan.yaml", root / "plan" / "cols.yaml"


def variant(path: str, value: Any) -> dict[str, Any]:
    """PLAN_19 with ``value`` at the dotted ``path``."""
    plan = copy.deepcopy(PLAN_19)
    *parents, last = path.split(".")
    node = plan
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return plan


def test_the_default_19_plan_is_served_with_its_zero_percent_evaluation_group(tmp_path: Path) -> None:
    plan_path, cols_path = workspace(tmp_path, PLAN_19)

    imported = load_openfl_workspace(plan_path, cols_path)
    plan = load_config(None, environ={}, overlay=imported.overlay).plan()

    assert [(group.name, group.percentage) for group in plan.assigner.groups] == [
        ("learning", 1.0),
        ("evaluation", 0.0),
    ]
    assert (plan.rounds_to_train, plan.evaluation) == (3, False)
    assert plan.stragglers.kind == StragglerPolicyKind.CUTOFF_TIME
    assert math.isinf(plan.stragglers.cutoff_seconds), "WaitForAllPolicy waits for everyone"
    assert imported.ignored == (
        "aggregator.settings.persist_checkpoint",
        "aggregator.settings.persistent_db_path",
        "network.settings.enable_atomic_connections",
    )
    assert imported.overlay["storage"]["state_dir"] == str(tmp_path / "local_state" / "fedagg")


@pytest.mark.parametrize(
    "module",
    ["openfl.component", "openfl.component.aggregator", "openfl.component.aggregator.straggler_handling"],
)
@pytest.mark.parametrize(
    ("name", "settings", "expected"),
    [
        ("WaitForAllPolicy", {}, (StragglerPolicyKind.CUTOFF_TIME, math.inf, 1, 1.0)),
        (
            "CutoffTimePolicy",
            {"straggler_cutoff_time": 30, "minimum_reporting": 2},
            (StragglerPolicyKind.CUTOFF_TIME, 30.0, 2, 1.0),
        ),
        (
            "PercentagePolicy",
            {"percent_collaborators_needed": 0.5, "minimum_reporting": 1},
            (StragglerPolicyKind.PERCENTAGE, math.inf, 1, 0.5),
        ),
    ],
)
def test_the_19_straggler_policies(
    tmp_path: Path, module: str, name: str, settings: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    plan_path, cols_path = workspace(
        tmp_path, variant("straggler_handling_policy", {"template": f"{module}.{name}", "settings": settings})
    )

    spec = load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay).plan()

    stragglers = spec.stragglers
    assert (
        stragglers.kind,
        stragglers.cutoff_seconds,
        stragglers.minimum_reporting,
        stragglers.percent_needed,
    ) == expected


def test_the_evaluation_task_group_is_one_round_of_validation_for_everyone(tmp_path: Path) -> None:
    plan_path, cols_path = workspace(tmp_path, variant("assigner.settings.selected_task_group", "evaluation"))

    plan = load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay).plan()

    assert (plan.rounds_to_train, plan.evaluation) == (1, True)
    (group,) = plan.assigner.groups
    assert (group.name, group.percentage, group.tasks) == ("evaluation", 1.0, tuple(TASKS[:1]))
    assert plan.assigner.kind == AssignerKind.RANDOM_GROUPED


def test_an_unknown_task_group_is_a_config_error(tmp_path: Path) -> None:
    plan_path, cols_path = workspace(tmp_path, variant("assigner.settings.selected_task_group", "testing"))

    with pytest.raises(
        ConfigError, match=r"federation.task_group: got 'testing', expected the name of one task group"
    ):
        load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay)


REFUSED = {
    "secure_aggregation": ("aggregator.settings.secure_aggregation", True),
    "rest": ("network.settings.transport_protocol", "rest"),
    "flower": ("connector", {"template": "openfl.component.ConnectorFlower", "settings": {}}),
    "interop_mode": ("collaborator.settings.interop_mode", True),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_features_fedagg_does_not_implement_are_refused_at_start(tmp_path: Path, case: str) -> None:
    key, value = REFUSED[case]
    plan_path, cols_path = workspace(tmp_path, variant(key, value))

    for command in ("config", "serve"):
        arguments = ["check"] if command == "config" else []
        result = subprocess.run(
            [*FEDAGG, command, *arguments, "--openfl-plan", str(plan_path), "--openfl-cols", str(cols_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

        assert result.returncode == 2, result.stderr
        assert f"{plan_path}: {key}: got " in result.stderr
        assert "Traceback" not in result.stderr


def test_config_check_lists_the_ignored_keys_and_the_task_group(tmp_path: Path) -> None:
    plan_path, cols_path = workspace(tmp_path, variant("network.settings.use_tls", False))
    (tmp_path / "save").mkdir()
    write_zero_model(tmp_path / "save")

    result = subprocess.run(
        [
            *FEDAGG,
            "config",
            "check",
            "--openfl-plan",
            str(plan_path),
            "--openfl-cols",
            str(cols_path),
            "--task-group",
            "evaluation",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "3 collaborators, 1 rounds, task group evaluation" in result.stdout
    assert f"state {tmp_path / 'local_state' / 'fedagg'}" in result.stdout
    assert (
        "ignored (no meaning for fedagg's aggregator): aggregator.settings.persist_checkpoint, "
        "aggregator.settings.persistent_db_path, network.settings.enable_atomic_connections"
    ) in result.stdout


AGGREGATION_FUNCTIONS = "openfl.interface.aggregation_functions."
PLAN_AGGREGATIONS = {
    "WeightedAverage": ({}, "weighted_average", {}),
    "Median": ({}, "median", {}),
    "GeometricMedian": ({}, "geometric_median", {}),
    "FedCurvWeightedAverage": ({}, "fedcurv_weighted_average", {}),
    "AdagradAdaptiveAggregation": (
        {"learning_rate": 0.05, "initial_accumulator_value": 0.1, "epsilon": 1e-6},
        "adagrad",
        {"learning_rate": 0.05, "initial_accumulator_value": 0.1, "epsilon": 1e-6},
    ),
    "AdamAdaptiveAggregation": (
        {"learning_rate": 0.02, "betas": [0.8, 0.99], "params": {"w": [[0.0, 0.0]], "b": [0.0]}},
        "adam",
        {"learning_rate": 0.02, "betas": [0.8, 0.99], "params": ["b", "w"]},
    ),
    "YogiAdaptiveAggregation": ({"epsilon": 1e-3}, "yogi", {"epsilon": 1e-3}),
}


@pytest.mark.parametrize("function", list(PLAN_AGGREGATIONS))
def test_every_openfl_aggregation_function_is_served_with_its_settings(tmp_path: Path, function: str) -> None:
    settings, kind, expected = PLAN_AGGREGATIONS[function]
    aggregation = {"template": AGGREGATION_FUNCTIONS + function, "settings": settings}
    plan_path, cols_path = workspace(tmp_path, variant("tasks.train.aggregation_type", aggregation))

    plan = load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay).plan()

    spec = plan.tasks["train"].aggregation
    assert (spec.kind, dict(spec.settings)) == (kind, expected)
    assert plan.tasks["aggregated_model_validation"].aggregation.kind == "weighted_average"


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        (
            {"template": AGGREGATION_FUNCTIONS + "FedBaggingAggregation"},
            "expected one of ['AdagradAdaptiveAggregation'",
        ),
        (
            {"template": AGGREGATION_FUNCTIONS + "AdamAdaptiveAggregation", "settings": {"learning_rte": 1}},
            "expected settings of adam",
        ),
    ],
    ids=["unknown function", "misspelt setting"],
)
def test_an_unusable_aggregation_type_names_the_plan_key(
    tmp_path: Path, aggregation: dict[str, Any], expected: str
) -> None:
    plan_path, cols_path = workspace(tmp_path, variant("tasks.train.aggregation_type", aggregation))

    with pytest.raises(ConfigError, match=r"tasks\.train\.aggregation") as raised:
        load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay).plan()
    assert expected in str(raised.value)
