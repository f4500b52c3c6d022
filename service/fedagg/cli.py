"""The ``fedagg`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedagg import __version__
from fedagg.app import build_aggregator, run_aggregator
from fedagg.config import load_config
from fedagg.settings import ConfigError

EXAMPLES = """examples:
  fedagg serve --config fedagg.yaml
  fedagg config check fedagg.yaml
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

    serve = commands.add_parser("serve", help="run the aggregator until the experiment completes")
    serve.add_argument("--config", type=Path, required=True, help="fedagg YAML configuration")
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="work with configuration files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a configuration without serving")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)
    return parser


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logging.basicConfig(
        level=config.logging.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    aggregator = build_aggregator(config)
    return asyncio.run(run_aggregator(aggregator))


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    plan = config.plan()
    print(
        f"{args.file}: OK (federation {plan.federation_uuid}, {len(plan.collaborators)} collaborators, "
        f"{plan.rounds_to_train} rounds)"
    )
    return 0


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
