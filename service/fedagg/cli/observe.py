"""``fedagg status`` and ``fedagg metrics``: watch a running federation (as a collaborator or an observer)."""

from __future__ import annotations

import argparse

from fedagg.cli.common import Commands, add_command, add_connection_options, connect, table
from fedagg.collaborator import AggregatorError

CONNECT_EXAMPLE = "--address agg.example.org:50051 --ca ca.crt --cert observer.crt --key observer.key"


def register(commands: Commands) -> None:
    """Add the commands."""
    for name, summary, handler in (
        ("status", "show a running experiment's progress (GetExperimentDescription)", _status),
        ("metrics", "follow the metric stream until the experiment ends", _metrics),
    ):
        parser = add_command(commands, name, summary, f"  fedagg {name} {CONNECT_EXAMPLE}")
        add_connection_options(parser, identity_required=False)
        parser.add_argument("--name", default="observer", help="this client's name (its certificate CN)")
        parser.add_argument("--experiment", default="", help="experiment name (default: the one served)")
        parser.set_defaults(handler=handler)


def _status(args: argparse.Namespace) -> int:
    with connect(args, args.name) as client:
        try:
            experiment = client.experiment_description(args.experiment)
        except AggregatorError as error:
            raise SystemExit(f"fedagg: {error}") from None
    print(
        f"experiment {experiment.name}: {experiment.status}, round {experiment.current_round} of "
        f"{experiment.total_rounds} ({experiment.progress:.0%})"
    )
    models = ", ".join(f"{m.name} {m.status}" for m in experiment.download_statuses.models)
    print(f"models: {models}\n")
    rows = [
        [c.name, c.status, str(c.round), f"{c.progress:.0%}", c.current_task or "-", c.next_task or "-"]
        for c in experiment.collaborators
    ]
    print(table(rows, ["collaborator", "status", "round", "tasks done", "current task", "next task"]))
    return 0


def _metrics(args: argparse.Namespace) -> int:
    with connect(args, args.name) as client:
        try:
            for metric in client.metric_stream(args.experiment):
                print(
                    f"round {metric.round:>3}  {metric.metric_origin:<16} {metric.task_name:<32} "
                    f"{metric.metric_name} = {metric.metric_value:.6g}",
                    flush=True,
                )
        except AggregatorError as error:
            raise SystemExit(f"fedagg: {error}") from None
    print("the experiment has finished")
    return 0
