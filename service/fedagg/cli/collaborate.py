"""``fedagg collaborator``: the reference collaborator (softmax regression on synthetic non-IID data)."""

from __future__ import annotations

import argparse
import sys

from fedagg.cli.commands import Commands, add_command
from fedagg.cli.connection import (
    CONNECTION_EPILOG,
    add_connection_options,
    add_name_option,
    configure_client_logging,
    connect,
)
from fedagg.cli.exits import EXIT_USAGE, reported_errors
from fedagg.collaborator import Collaborator
from fedagg.collaborator.participant import TaskEvent
from fedagg.collaborator.reference import DatasetSpec, ModelMismatch, SoftmaxRegressionRunner, site_seed


def register(commands: Commands) -> None:
    """Add the command."""
    parser = add_command(
        commands,
        "collaborator",
        "train the reference model against an aggregator",
        """\
  fedagg collaborator --name one --address localhost:50051 --federation-uuid myfed_0123abcd \\
      --ca pki/collaborators/one/ca.crt --cert pki/collaborators/one/tls.crt --key pki/collaborators/one/tls.key
  FEDAGG_ADDRESS=localhost:50051 FEDAGG_FEDERATION_UUID=myfed_0123abcd FEDAGG_CA=pki/ca/ca.crt \\
      fedagg collaborator --name one --cert pki/collaborators/one/tls.crt --key pki/collaborators/one/tls.key

The reference model is softmax regression: tensors softmax/weights (FEATURES x CLASSES) and softmax/bias
(CLASSES), float32; "fedagg model init --reference" writes a matching initial model.""",
        more=CONNECTION_EPILOG,
    )
    add_name_option(parser, "collaborator name (its certificate CN)")
    add_connection_options(parser)
    parser.add_argument("--delta-updates", action="store_true", help="send weight changes instead of weights")
    parser.add_argument(
        "--features",
        type=int,
        default=DatasetSpec.features,
        help=f"input features (model size; default {DatasetSpec.features})",
    )
    parser.add_argument(
        "--classes", type=int, default=DatasetSpec.classes, help=f"classes (default {DatasetSpec.classes})"
    )
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing but errors and connection problems"
    )
    parser.set_defaults(handler=_collaborate)


def _collaborate(args: argparse.Namespace) -> int:
    configure_client_logging(quiet=args.quiet)
    spec = DatasetSpec(classes=args.classes, features=args.features)
    runner = SoftmaxRegressionRunner(spec, site_seed(args.name), epochs=args.epochs)

    def report(event: TaskEvent) -> None:
        if not args.quiet:
            metrics = " ".join(f"{name}={value:.4f}" for name, value in event.metrics.items())
            print(f"{event.collaborator}: round {event.round_number} {event.task} {metrics}", flush=True)

    with reported_errors(args.name), connect(args, args.name) as client:
        collaborator = Collaborator(client, runner, delta_updates=args.delta_updates, on_task_done=report)
        try:
            collaborator.run()
        except ModelMismatch as error:
            print(f"fedagg: {args.name}: {error}", file=sys.stderr, flush=True)
            return EXIT_USAGE
    if not args.quiet:
        print(f"{args.name}: quit after {collaborator.rounds_completed} rounds", flush=True)
    return 0
