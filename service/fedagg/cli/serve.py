"""``fedagg serve``, ``fedagg config check`` and ``fedagg health``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedagg.cli.common import Commands, add_command

if TYPE_CHECKING:
    from fedagg.config import Config

LOG_FORMATS = ("text", "json")


def register(commands: Commands) -> None:
    """Add the commands of this module."""
    serve = add_command(
        commands,
        "serve",
        "run the aggregator until every collaborator got its quit job",
        """\
  fedagg serve --config fedagg.yaml
  fedagg serve --config fedagg.yaml --log-format json
  fedagg serve --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml --config ops.yaml""",
    )
    _add_config_options(serve)
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="override logging.format")
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="work with configuration files")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = add_command(
        actions,
        "check",
        "validate a configuration without serving",
        """\
  fedagg config check fedagg.yaml
  fedagg config check --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml""",
    )
    check.add_argument("file", type=Path, nargs="?", help="fedagg YAML configuration")
    _add_config_options(check, positional=True)
    check.set_defaults(handler=_config_check)

    health = add_command(
        commands,
        "health",
        "query gRPC health: exit 0 if SERVING (container health checks)",
        """\
  fedagg health                                        liveness on localhost:50052
  fedagg health --service openfl.aggregator.Aggregator readiness""",
    )
    health.add_argument("--address", default="localhost:50052", help="ops port (default: localhost:50052)")
    health.add_argument(
        "--service", default="", help='"" or liveness (default), or openfl.aggregator.Aggregator'
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    health.set_defaults(handler=_health)


def _add_config_options(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if not positional:
        parser.add_argument("--config", type=Path, help="fedagg YAML configuration")
    parser.add_argument("--openfl-plan", type=Path, help="an OpenFL workspace's plan/plan.yaml")
    parser.add_argument("--openfl-cols", type=Path, help="its plan/cols.yaml (authorized collaborators)")
    parser.add_argument(
        "--openfl-defaults",
        type=Path,
        help="where plan 'defaults:' paths resolve (default: the workspace root)",
    )
    parser.add_argument(
        "--task-group",
        help="run only this task group for every collaborator (federation.task_group; OpenFL's "
        "--task_group): 'evaluation' validates the initial model in one round",
    )


def load(args: argparse.Namespace) -> tuple[Config, tuple[str, ...]]:
    """The configuration the options describe (a file, an OpenFL workspace, or both) and the plan keys ignored."""
    from fedagg.config import load_config
    from fedagg.openfl_plan import load_openfl_workspace

    path = getattr(args, "config", None) or getattr(args, "file", None)
    overlay: dict[str, Any] = {}
    ignored: tuple[str, ...] = ()
    if args.openfl_plan or args.openfl_cols:
        if not (args.openfl_plan and args.openfl_cols):
            raise SystemExit("fedagg: --openfl-plan and --openfl-cols go together")
        workspace = load_openfl_workspace(args.openfl_plan, args.openfl_cols, args.openfl_defaults)
        overlay, ignored = workspace.overlay, workspace.ignored
    if path is None and not overlay:
        raise SystemExit("fedagg: give --config FILE, or --openfl-plan and --openfl-cols")
    if args.task_group:
        overlay.setdefault("federation", {})["task_group"] = args.task_group
    return load_config(path, overlay=overlay), ignored


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from fedagg.app import build_aggregator, run_aggregator
    from fedagg.config import LogFormat
    from fedagg.logs import configure_logging

    config, ignored = load(args)
    if args.log_format:
        config = replace(config, logging=replace(config.logging, format=LogFormat(args.log_format)))
    configure_logging(config.logging.level, json_lines=config.logging.format == LogFormat.JSON)
    if ignored:
        logging.getLogger("fedagg.cli").info(
            "OpenFL plan settings ignored (no meaning for fedagg's aggregator): %s", ", ".join(ignored)
        )
    return asyncio.run(run_aggregator(build_aggregator(config)))


def _config_check(args: argparse.Namespace) -> int:
    from fedagg.app import check_files

    config, ignored = load(args)
    check_files(config)
    plan = config.plan()
    group = f", task group {config.federation.task_group}" if config.federation.task_group else ""
    print(
        f"OK: federation {plan.federation_uuid} (aggregator {plan.aggregator_uuid}), "
        f"{len(plan.collaborators)} collaborators, {plan.rounds_to_train} rounds{group}, "
        f"port {config.server.port}, TLS {config.server.tls.mode.value}, state {config.storage.state_dir}"
    )
    if ignored:
        print(f"ignored (no meaning for fedagg's aggregator): {', '.join(ignored)}")
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

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
