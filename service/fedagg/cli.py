"""The ``fedagg`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedagg import __version__
from fedagg.app import build_aggregator, run_aggregator
from fedagg.config import Config, LogFormat, load_config
from fedagg.logs import configure_logging
from fedagg.settings import ConfigError

EXAMPLES = """examples:
  fedagg serve --config fedagg.yaml                   run an aggregator
  fedagg serve --config fedagg.yaml --log-format json
  fedagg config check fedagg.yaml                     validate a configuration
  fedagg health --address localhost:50052             exit 0 when the process is live
  fedagg health --service openfl.aggregator.Aggregator   exit 0 when ready for collaborators
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedagg",
        description="Federated-learning aggregator that speaks OpenFL's aggregator protocol.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fedagg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the aggregator until the experiment completes",
        description="Run the aggregator until every collaborator got its quit job.",
    )
    serve.add_argument("--config", type=Path, required=True, help="fedagg YAML configuration")
    serve.add_argument("--log-format", choices=[f.value for f in LogFormat], help="override logging.format")
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="work with configuration files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a configuration without serving")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)

    health = commands.add_parser(
        "health",
        help="query gRPC health (for container health checks and scripts)",
        description="Exit 0 if the service reports SERVING, 1 otherwise.",
    )
    health.add_argument("--address", default="localhost:50052", help="ops port (default: localhost:50052)")
    health.add_argument(
        "--service", default="", help='"" or liveness (default), or openfl.aggregator.Aggregator'
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    health.set_defaults(handler=_health)
    return parser


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.log_format:
        config = replace(config, logging=replace(config.logging, format=LogFormat(args.log_format)))
    _configure_logging(config)
    aggregator = build_aggregator(config)
    return asyncio.run(run_aggregator(aggregator))


def _configure_logging(config: Config) -> None:
    configure_logging(config.logging.level, json_lines=config.logging.format == LogFormat.JSON)


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    plan = config.plan()
    print(
        f"{args.file}: OK (federation {plan.federation_uuid}, {len(plan.collaborators)} collaborators, "
        f"{plan.rounds_to_train} rounds)"
    )
    return 0


def _health(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.service or 'liveness'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedagg`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"fedagg: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
