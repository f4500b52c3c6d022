"""``fedagg serve``, ``fedagg config check`` and ``fedagg health``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedagg.cli.commands import Commands, add_command
from fedagg.cli.exits import usage_error

if TYPE_CHECKING:
    from fedagg.config.schema import Config

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
  fedagg config check --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml
  fedagg config check fedagg.yaml -o json

Checks every setting and every file the configuration names (state directory, initial model, certificates),
then prints the federation, each listener (the federation port with its TLS mode; the ops and metrics ports,
which are always plaintext), the server certificate's names (SANs: collaborators must dial one of them) and
expiry, what the state volume and the memory need for the initial model and the collaborators (the sizing rule
of helm/fedagg/README.md), and warnings (insecure mode, a certificate expiring within 30 days, a state directory that will be
resumed). Exit status 0 when serve would start with it, 2 naming the key, the value and what was expected
when not.

-o json prints one object:
  ok (true; on an error: {ok: false, error}), federation_uuid, aggregator_uuid, collaborators (names),
  rounds, task_group (null: every group), state_dir, resumes (the state directory holds a checkpoint),
  initial_model (path or null),
  sizing: {summary (the text output's line), model_bytes, model_sized_files, disk_bytes (the state volume's
           peak, before headroom), memory_request_bytes, memory_limit_bytes} (null without an initial model),
  listeners: [{name (federation, ops, metrics), address, port (0: any free port), protocol (grpc, http),
               tls (mtls, tls, insecure; null for the always-plaintext ops and metrics ports),
               plaintext (true or false), security and serves (the text output's words)}],
  certificate: {file, subject, issuer, names (["DNS:host", "IP:addr", ...]), not_after (ISO 8601, UTC),
                days_left} (null in insecure mode),
  warnings: [text], ignored: [OpenFL plan keys without meaning for fedagg]""",
    )
    check.add_argument("file", type=Path, nargs="?", help="fedagg YAML configuration")
    _add_config_options(check, positional=True)
    check.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="text (default) or json: see below"
    )
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


def _config_path(args: argparse.Namespace) -> Path | None:
    """The configuration file: serve's --config or config check's argument."""
    path: Path | None = getattr(args, "config", None) or getattr(args, "file", None)
    return path


def load(args: argparse.Namespace) -> tuple[Config, tuple[str, ...]]:
    """The configuration the options describe (a file, an OpenFL workspace, or both) and the plan keys ignored."""
    from fedagg.config.loading import load_config
    from fedagg.openfl_workspace import load_openfl_workspace

    path = _config_path(args)
    overlay: dict[str, Any] = {}
    ignored: tuple[str, ...] = ()
    if args.openfl_plan or args.openfl_cols:
        if not (args.openfl_plan and args.openfl_cols):
            raise usage_error("--openfl-plan and --openfl-cols go together")
        workspace = load_openfl_workspace(args.openfl_plan, args.openfl_cols, args.openfl_defaults)
        overlay, ignored = workspace.overlay, workspace.ignored
    if path is None and not overlay:
        raise usage_error("give --config FILE, or --openfl-plan and --openfl-cols")
    if args.task_group:
        overlay.setdefault("federation", {})["task_group"] = args.task_group
    return load_config(path, overlay=overlay), ignored


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from fedagg.app import build_aggregator, run_aggregator
    from fedagg.config.operations import LogFormat
    from fedagg.config.topology import Role
    from fedagg.logs import configure_logging

    config, ignored = load(args)
    if args.log_format:
        config = replace(config, logging=replace(config.logging, format=LogFormat(args.log_format)))
    configure_logging(config.logging.level, json_lines=config.logging.format == LogFormat.JSON)
    if ignored:
        logging.getLogger("fedagg.cli").info(
            "OpenFL plan settings ignored (no meaning for fedagg's aggregator): %s", ", ".join(ignored)
        )
    if config.topology.role == Role.INGEST:
        from fedagg.ingest_process import build_ingest, run_ingest

        async def ingest() -> int:  # the replica's channels belong to the loop that runs it
            return await run_ingest(build_ingest(config))

        return asyncio.run(ingest())
    return asyncio.run(run_aggregator(build_aggregator(config)))


def _config_check(args: argparse.Namespace) -> int:
    import json

    from fedagg.app import check_files
    from fedagg.cli.config_report import config_document
    from fedagg.settings import ConfigError

    try:
        config, ignored = load(args)
        try:
            check_files(config)
        except ConfigError as error:
            path = _config_path(args)
            raise (error if path is None else error.located(str(path))) from None
        plan = config.plan()
    except ConfigError as error:
        if args.output == "json":
            problems = [str(problem) for problem in error.problems]
            print(json.dumps({"ok": False, "error": problems[0], "errors": problems}))
        raise
    document = config_document(config, plan, ignored)
    if args.output == "json":
        print(json.dumps(document))
        return 0
    group = f", task group {document['task_group']}" if document["task_group"] else ""
    print(
        f"OK: federation {plan.federation_uuid} (aggregator {plan.aggregator_uuid}), "
        f"{len(plan.collaborators)} collaborators, {plan.rounds_to_train} rounds{group}, "
        f"{config.topology.role.value}, port {document['listeners'][0]['port']}, "
        f"TLS {document['listeners'][0]['tls']}, state {config.storage.state_dir}"
    )
    if ignored:
        print(f"ignored (no meaning for fedagg's aggregator): {', '.join(ignored)}")
    print("listeners:")
    for listener in document["listeners"]:
        port = listener["port"] or "0 (any free port)"
        print(
            f"  {listener['name']:<10} {listener['address']}:{port}  {listener['protocol']}, "
            f"{listener['security']}: {listener['serves']}"
        )
    if (certificate := document["certificate"]) is not None:
        print(
            f"server certificate {certificate['file']}: names {', '.join(certificate['names']) or 'none'}; "
            f"subject {certificate['subject']}; expires {certificate['not_after'][:16].replace('T', ' ')} UTC "
            f"(in {certificate['days_left']:.0f} days)"
        )
    if document["sizing"] is not None:
        print(document["sizing"]["summary"])
    for warning in document["warnings"]:
        print(f"WARNING: {warning}")
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
