"""Importing an OpenFL workspace computes the same identity OpenFL's own Plan.parse computes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedagg.config.loading import load_config
from fedagg.openfl_workspace import load_openfl_workspace
from tests.interop.openfl import openfl_python, plan_uuid

pytestmark = pytest.mark.interop

SELF_CONTAINED = {
    "aggregator": {
        "template": "openfl.component.Aggregator",
        "settings": {
            "init_state_path": "save/init.pbuf",
            "best_state_path": "save/best.pbuf",
            "last_state_path": "save/last.pbuf",
            "rounds_to_train": 7,
            "db_store_rounds": 2,
        },
    },
    "network": {
        "template": "openfl.federation.Network",
        "settings": {
            "agg_addr": "localhost",
            "agg_port": 51234,
            "use_tls": True,
            "require_client_auth": True,
            "cert_folder": "cert",
        },
    },
    "assigner": {
        "template": "openfl.component.RandomGroupedAssigner",
        "settings": {
            "task_groups": [
                {"name": "learning", "percentage": 1.0, "tasks": ["aggregated_model_validation", "train"]}
            ]
        },
    },
    "tasks": {
        "aggregated_model_validation": {"function": "validate_task", "kwargs": {"apply": "global"}},
        "train": {
            "function": "train_task",
            "kwargs": {"epochs": 2},
            "aggregation_type": {"template": "openfl.interface.aggregation_functions.Median"},
        },
    },
    "compression_pipeline": {"template": "openfl.pipelines.NoCompressionPipeline"},
}
# The plan of OpenFL's own torch_cnn_histology workspace: everything else comes from plan/defaults/.
WITH_DEFAULTS = {
    "aggregator": {
        "defaults": "plan/defaults/aggregator.yaml",
        "template": "openfl.component.Aggregator",
        "settings": {
            "init_state_path": "save/init.pbuf",
            "best_state_path": "save/best.pbuf",
            "last_state_path": "save/last.pbuf",
            "rounds_to_train": 20,
        },
    },
    "collaborator": {
        "defaults": "plan/defaults/collaborator.yaml",
        "template": "openfl.component.Collaborator",
        "settings": {"delta_updates": False, "opt_treatment": "RESET"},
    },
    "network": {"defaults": "plan/defaults/network.yaml"},
    "tasks": {"defaults": "plan/defaults/tasks_torch.yaml"},
    "assigner": {"defaults": "plan/defaults/assigner.yaml"},
    "compression_pipeline": {"defaults": "plan/defaults/compression_pipeline.yaml"},
}


@pytest.fixture(scope="module")
def python() -> Path:
    return openfl_python()


def workspace(root: Path, plan: dict[str, object], python: Path | None = None) -> tuple[Path, Path]:
    """An fx-style workspace: plan/plan.yaml, plan/cols.yaml and (copied from OpenFL) plan/defaults/."""
    (root / "plan").mkdir(parents=True)
    (root / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    (root / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": ["site-a", "site-b"]}))
    if python is not None:
        defaults = subprocess.run(
            [
                str(python),
                "-c",
                "import openfl, pathlib; print(pathlib.Path(openfl.__file__).parent.parent / "
                "'openfl-workspace' / 'workspace' / 'plan' / 'defaults')",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        shutil.copytree(defaults, root / "plan" / "defaults")
    return root / "plan" / "plan.yaml", root / "plan" / "cols.yaml"


@pytest.mark.parametrize(
    ("plan", "with_defaults"),
    [(SELF_CONTAINED, False), (WITH_DEFAULTS, True)],
    ids=["self_contained", "openfl_defaults"],
)
def test_uuids_equal_openfl_plan_parse(
    tmp_path: Path, python: Path, plan: dict[str, object], with_defaults: bool
) -> None:
    plan_path, cols_path = workspace(tmp_path, plan, python if with_defaults else None)

    expected = plan_uuid(python, plan_path, cols_path)
    overlay = load_openfl_workspace(plan_path, cols_path).overlay

    federation = overlay["federation"]
    assert federation["federation_uuid"] == expected["federation_uuid"]
    assert federation["aggregator_uuid"] == expected["aggregator_uuid"]
    assert federation["collaborators"] == expected["authorized_cols"]
    assert federation["rounds_to_train"] == expected["rounds_to_train"]


def test_imported_workspace_becomes_a_valid_configuration(tmp_path: Path) -> None:
    plan_path, cols_path = workspace(tmp_path, SELF_CONTAINED)

    config = load_config(None, environ={}, overlay=load_openfl_workspace(plan_path, cols_path).overlay)
    plan = config.plan()

    assert plan.collaborators == ("site-a", "site-b")
    assert plan.rounds_to_train == 7
    assert [task.aggregation.kind for task in plan.tasks.values()] == ["weighted_average", "median"]
    assert plan.assigner.groups[0].tasks == ("aggregated_model_validation", "train")
    assert config.server.port == 51234
    assert config.server.tls.files().certificate == tmp_path / "cert" / "server" / "agg_localhost.crt"
    assert config.server.tls.files().root_certificate == tmp_path / "cert" / "cert_chain.crt"
    assert config.federation.initial_model == tmp_path / "save" / "init.pbuf"
    assert config.last_model_path == tmp_path / "save" / "last.pbuf"
