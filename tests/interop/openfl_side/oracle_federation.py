"""The federation the oracle's options describe without ``--plan``: OpenFL's ``Aggregator`` as
``Plan.get_server()`` would build it from the default plan, with the straggler policy and the train task's
aggregation asked for.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openfl_versions as versions  # a sibling module: the script directory is on sys.path
from openfl.callbacks import Callback
from openfl.component.aggregator.aggregator import Aggregator
from openfl.component.assigner.random_grouped_assigner import RandomGroupedAssigner
from openfl.federated import Plan
from openfl.interface.aggregation_functions import WeightedAverage
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import utils

TASK_NAMES = ["aggregated_model_validation", "train", "locally_tuned_model_validation"]


def default_tasks(train_aggregation: Any = None) -> dict[str, dict[str, Any]]:
    """The ``tasks`` section of the default plan (tasks_torch.yaml), as ``Plan.get_tasks()`` returns it; the train
    task aggregated by ``train_aggregation`` (default: WeightedAverage)."""
    return {
        "aggregated_model_validation": {
            "function": "validate_task",
            "kwargs": {"apply": "global", "metrics": ["acc"]},
            "aggregation_type": WeightedAverage(),
        },
        "locally_tuned_model_validation": {
            "function": "validate_task",
            "kwargs": {"apply": "local", "metrics": ["acc"]},
            "aggregation_type": WeightedAverage(),
        },
        "train": {
            "function": "train_task",
            "kwargs": {"metrics": ["loss"], "epochs": 1},
            "aggregation_type": train_aggregation or WeightedAverage(),
        },
    }


def straggler_policy(args: argparse.Namespace) -> Any:
    """What ``Plan.get_straggler_handling_policy()`` would build from the arguments.

    1.7.1: a policy instance. 1.8/1.9: a factory (the Aggregator calls it), as their plans build it.
    """
    if versions.LEGACY:
        if args.straggler_policy == "percentage":
            return versions.PercentageBasedStragglerHandling(
                percent_collaborators_needed=args.percent_collaborators_needed,
                minimum_reporting=args.minimum_reporting,
            )
        return versions.CutoffTimeBasedStragglerHandling(
            straggler_cutoff_time=args.straggler_cutoff_time, minimum_reporting=args.minimum_reporting
        )
    factory: Callable[..., Any]
    if args.straggler_policy == "percentage":
        factory = functools.partial(
            versions.PercentagePolicy,
            percent_collaborators_needed=args.percent_collaborators_needed,
            minimum_reporting=args.minimum_reporting,
        )
    elif np.isinf(args.straggler_cutoff_time):
        factory = versions.WaitForAllPolicy
    else:
        factory = functools.partial(
            versions.CutoffTimePolicy,
            straggler_cutoff_time=args.straggler_cutoff_time,
            minimum_reporting=args.minimum_reporting,
        )
    return factory


def straggler_summary(args: argparse.Namespace) -> dict[str, Any]:
    if args.straggler_policy == "percentage":
        return {
            "policy": "percentage",
            "percent_collaborators_needed": args.percent_collaborators_needed,
            "minimum_reporting": args.minimum_reporting,
        }
    cutoff = args.straggler_cutoff_time
    return {
        "policy": "cutoff_time",
        "straggler_cutoff_time": None if np.isinf(cutoff) else cutoff,
        "minimum_reporting": args.minimum_reporting,
    }


def initial_model(init_model: Path) -> tuple[dict[str, np.ndarray], int]:
    """The tensors and round of an initial ModelProto."""
    tensors, round_number = utils.deconstruct_model_proto(
        utils.load_proto(str(init_model)), NoCompressionPipeline()
    )
    return tensors, round_number


def model_names(init_model: Path) -> tuple[list[str], int]:
    """The tensor names and round of an initial ModelProto."""
    tensors, round_number = initial_model(init_model)
    return list(tensors), round_number


def train_aggregation(spec: dict[str, Any], init_model: Path) -> Any:
    """What ``Plan.build`` makes of ``--train-aggregation`` (a plan's ``aggregation_type``). An adaptive function
    without ``params`` gets the initial model as its ``params``, nested lists as a plan's YAML carries them: in
    OpenFL's own use the optimizer starts from the initial model."""
    settings = dict(spec.get("settings", {}))
    if spec["template"].endswith("AdaptiveAggregation") and "params" not in settings:
        tensors, _ = initial_model(init_model)
        settings["params"] = {name: np.asarray(values).tolist() for name, values in tensors.items()}
    return Plan.build(template=spec["template"], settings=settings)


def aggregator_from_arguments(args: argparse.Namespace, callbacks: list[Callback]) -> Aggregator:
    """The Aggregator the options describe (see the module docstring)."""
    collaborators = [c.strip() for c in args.collaborators.split(",") if c.strip()]
    if not collaborators or args.rounds < 1:
        raise SystemExit("need at least one collaborator and one round")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    tasks = default_tasks(
        None if args.train_aggregation is None else train_aggregation(args.train_aggregation, args.init_model)
    )
    assigner = RandomGroupedAssigner(
        task_groups=[{"name": "learning", "percentage": 1.0, "tasks": list(TASK_NAMES)}],
        tasks=tasks,
        authorized_cols=collaborators,
        rounds_to_train=args.rounds,
    )
    extra: dict[str, Any] = {}
    if "persist_checkpoint" in inspect.signature(Aggregator.__init__).parameters:  # 1.8, 1.9
        extra["persistent_db_path"] = str(args.state_dir / "tensor.db")
    return Aggregator(
        aggregator_uuid=args.aggregator_uuid,
        federation_uuid=args.federation_uuid,
        authorized_cols=collaborators,
        init_state_path=str(args.init_model),
        best_state_path=str(args.state_dir / "best.pbuf"),
        last_state_path=str(args.state_dir / "last.pbuf"),
        assigner=assigner,
        use_delta_updates=args.use_delta_updates,
        straggler_handling_policy=straggler_policy(args),
        rounds_to_train=args.rounds,
        single_col_cert_common_name=args.single_col_cert_common_name,
        compression_pipeline=NoCompressionPipeline(),
        db_store_rounds=args.db_store_rounds,
        write_logs=False,
        callbacks=callbacks,
        **extra,
    )
