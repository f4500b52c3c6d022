"""``fedagg status`` and ``fedagg metrics``: watch a running federation (as a collaborator or an observer)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fedagg.cli.commands import Commands, add_command, add_output_option
from fedagg.cli.connection import (
    CONNECTION_EPILOG,
    add_connection_options,
    add_name_option,
    configure_client_logging,
    connect,
)
from fedagg.cli.exits import reported_errors
from fedagg.cli.formatting import ago, print_json, table
from fedagg.cli.leadership import leadership_line, replica_leadership, root_tier, tier_lines
from fedagg.protocol import base_pb2

CONNECT_EXAMPLE = "--address agg.example.org:50051 --ca ca.crt --cert observer.crt --key observer.key"
STATUS_JSON = """
-o json prints one object:
  experiment, status (restoring, pending, in_progress, finished), round, rounds, progress (0 to 1),
  time (Unix seconds when the status was read),
  models: [{name (best, last, init), status (ready, pending)}],
  collaborators: [{name, status, round, progress (share of its tasks of the round done, 0 to 1),
                   current_task, next_task ("" when none),
                   last_contact (Unix seconds of its last call, now while it is in one; null: never since the
                   aggregator started), seconds_since_contact (null: never),
                   training_since (Unix seconds; null unless training)}],
  tasks: [{name, description}],
  leadership (with --ops only): the replica's answer, {election, identity, role (leader, standby), leader,
              term, transitions_seen} (README, Leader election and fencing)
  tier (with --ops on a tier's root only): {round, replicas: [{replica, claimed, delivered, generation (null:
        no partial yet), seconds_since_contact (null: never), lost}]} (README, Scale-out tier)
a collaborator's status: waiting (for its tasks; never called since the aggregator started, or not yet asked),
training (its tasks handed out: it trains current_task since its last call ended), held (in a long-poll GetTasks
that waits for work: a live contact), done (every task of the round in), rejected (its results were unusable),
straggler (left out of the round), silent (not training and no call for 3 sleep periods), quit (kept across
restarts)
"""
METRICS_JSON = """
-o json prints one object per line and metric: round, origin (a collaborator's name, or "aggregator" for
aggregated values), task, metric, value"""


def register(commands: Commands) -> None:
    """Add the commands."""
    for name, summary, handler, timeout, output in (
        (
            "status",
            "show a running experiment's progress (GetExperimentDescription)",
            _status,
            30.0,
            STATUS_JSON,
        ),
        ("metrics", "follow the metric stream until the experiment ends", _metrics, 600.0, METRICS_JSON),
    ):
        parser = add_command(
            commands,
            name,
            summary,
            f"  fedagg {name} {CONNECT_EXAMPLE}\n  fedagg {name} {CONNECT_EXAMPLE} -o json\n",
            more=output + "\n" + CONNECTION_EPILOG,
        )
        add_connection_options(parser, identity_required=False, timeout=timeout)
        add_name_option(parser, "this client's name (its certificate CN)", default="observer")
        parser.add_argument("--experiment", default="", help="experiment name (default: the one served)")
        if name == "status":
            parser.add_argument(
                "--ops",
                metavar="HOST:PORT",
                default="",
                help="also show leadership as this replica's ops port tells it (a leader's or a standby's), and "
                "at a tier's root its ingest replicas",
            )
        add_output_option(parser, "see below")
        parser.set_defaults(handler=handler)


def _status(args: argparse.Namespace) -> int:
    configure_client_logging()
    with reported_errors(), connect(args, args.name) as client:
        experiment = client.experiment_description(args.experiment)
    leadership = replica_leadership(args.ops, args.timeout) if args.ops else None
    tier = root_tier(args.ops, args.timeout) if args.ops else None
    now = time.time()
    if args.output == "json":
        document = status_document(experiment, now)
        if leadership is not None:
            document["leadership"] = leadership
        if tier is not None:
            document["tier"] = tier
        print_json(document)
        return 0
    print(
        f"experiment {experiment.name}: {experiment.status}, round {experiment.current_round} of "
        f"{experiment.total_rounds} ({experiment.progress:.0%})"
    )
    if leadership is not None:
        print(leadership_line(args.ops, leadership))
    if tier is not None:
        print(tier_lines(tier))
    models = ", ".join(f"{m.name} {m.status}" for m in experiment.download_statuses.models)
    print(f"models: {models}\n")
    rows = [
        [
            c.name,
            f"training for {ago(now - c.last_contact).removesuffix(' ago')}"
            if _training_since(c)
            else c.status,
            str(c.round),
            f"{c.progress:.0%}",
            c.current_task or "-",
            c.next_task or "-",
            ago(now - c.last_contact) if c.last_contact else "never",
        ]
        for c in experiment.collaborators
    ]
    print(
        table(
            rows,
            ["collaborator", "status", "round", "tasks done", "current task", "next task", "last contact"],
        )
    )
    return 0


def status_document(experiment: base_pb2.ExperimentDescription, now: float) -> dict[str, Any]:
    """The ``status -o json`` object."""
    return {
        "experiment": experiment.name,
        "status": experiment.status,
        "round": experiment.current_round,
        "rounds": experiment.total_rounds,
        "progress": round(experiment.progress, 6),
        "time": round(now, 3),
        "models": [{"name": m.name, "status": m.status} for m in experiment.download_statuses.models],
        "collaborators": [
            {
                "name": c.name,
                "status": c.status,
                "round": c.round,
                "progress": round(c.progress, 6),
                "current_task": c.current_task,
                "next_task": c.next_task,
                "last_contact": c.last_contact or None,
                "seconds_since_contact": round(max(now - c.last_contact, 0.0), 3) if c.last_contact else None,
                "training_since": _training_since(c),
            }
            for c in experiment.collaborators
        ],
        "tasks": [{"name": t.name, "description": t.description} for t in experiment.tasks],
    }


def _training_since(collaborator: base_pb2.CollaboratorDescription) -> float | None:
    """Since when a training collaborator trains (its last call ended then: it calls again to upload)."""
    return collaborator.last_contact or None if collaborator.status == "training" else None


def _metrics(args: argparse.Namespace) -> int:
    configure_client_logging()
    with reported_errors(), connect(args, args.name) as client:
        for metric in client.metric_stream(args.experiment):
            if args.output == "json":
                print_json(
                    {
                        "round": metric.round,
                        "origin": metric.metric_origin,
                        "task": metric.task_name,
                        "metric": metric.metric_name,
                        "value": metric.metric_value,
                    }
                )
            else:
                print(
                    f"round {metric.round:>3}  {metric.metric_origin:<16} {metric.task_name:<32} "
                    f"{metric.metric_name} = {metric.metric_value:.6g}",
                    flush=True,
                )
    print("the experiment has finished", file=sys.stderr if args.output == "json" else sys.stdout)
    return 0
