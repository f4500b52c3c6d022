"""``fedagg collaborator``: the reference collaborator (softmax regression on synthetic non-IID data)."""

from __future__ import annotations

import argparse
import logging

from fedagg.cli.common import Commands, add_command, add_connection_options, connect
from fedagg.collaborator import AggregatorError, Collaborator
from fedagg.collaborator.participant import TaskEvent
from fedagg.collaborator.reference import DatasetSpec, SoftmaxRegressionRunner, site_seed


def register(commands: Commands) -> None:
    """Add the command."""
    parser = add_command(
        commands,
        "collaborator",
        "train the reference model against an aggregator",
        """\
  fedagg collaborator --name one --address localhost:50051 --federation-uuid myfed_0123abcd \\
      --ca pki/collaborators/one/ca.crt --cert pki/collaborators/one/tls.crt --key pki/collaborators/one/tls.key""",
    )
    parser.add_argument("--name", required=True, help="collaborator name (its certificate CN)")
    add_connection_options(parser)
    parser.add_argument("--delta-updates", action="store_true", help="send weight changes instead of weights")
    parser.add_argument(
        "--features", type=int, default=DatasetSpec.features, help="input features (model size)"
    )
    parser.add_argument("--classes", type=int, default=DatasetSpec.classes, help="classes")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(handler=_collaborate)


def _collaborate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    spec = DatasetSpec(classes=args.classes, features=args.features)
    runner = SoftmaxRegressionRunner(spec, site_seed(args.name), epochs=args.epochs)

    def report(event: TaskEvent) -> None:
        if not args.quiet:
            metrics = " ".join(f"{name}={value:.4f}" for name, value in event.metrics.items())
            print(f"{event.collaborator}: round {event.round_number} {event.task} {metrics}", flush=True)

    with connect(args, args.name) as client:
        collaborator = Collaborator(client, runner, delta_updates=args.delta_updates, on_task_done=report)
        try:
            collaborator.run()
        except AggregatorError as error:
            raise SystemExit(f"fedagg: {args.name}: {error}") from None
    if not args.quiet:
        print(f"{args.name}: quit after {collaborator.rounds_completed} rounds", flush=True)
    return 0
