"""The ``fedagg`` command line: one module per command group."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence

# The fedagg command itself (the console script, or "python -m fedagg.cli", whose argv[0] is "-m" while this
# package is imported), not a program that imports it: set before grpc is imported (below), or grpc-core's own
# stderr lines ("I1207 ... Handshake failed ...") precede a client command's one-line message. serve keeps them:
# they are the only trace of a failed TLS handshake on the server (gRPC has no hook for one).
if sys.argv[1:2] != ["serve"] and (
    sys.argv[0] == "-m" or os.path.basename(sys.argv[0]).removesuffix(".exe") == "fedagg"
):
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from fedagg import __version__
from fedagg.cli import certs, collaborate, demo, models, observe, serve
from fedagg.settings import ConfigError

SERVER_EXTRA_MODULES = frozenset(
    {"grpc_health", "grpc_reflection", "prometheus_client", "kubernetes", "yaml", "cryptography"}
)
SITE_EXTRA_MODULES = frozenset({"cryptography"})
"""What a collaborator site needs beyond the base install: ``certs request`` (its key and CSR)."""
EXAMPLES = """examples:
  fedagg demo                                          a federation end to end on this machine
  fedagg certs --out pki --collaborators one,two       a CA and certificates for a federation
  fedagg serve --config fedagg.yaml                    run an aggregator
  fedagg serve --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml   serve an OpenFL workspace
  fedagg status --address agg.example.org:50051 --ca ca.crt --cert me.crt --key me.key
  fedagg model show state/last.pbuf

Run "fedagg COMMAND --help" for a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The complete argument parser."""
    parser = argparse.ArgumentParser(
        prog="fedagg",
        description="fedagg: a federated-learning aggregator that speaks OpenFL's aggregator protocol.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fedagg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, demo, collaborate, certs, models, observe):
        module.register(commands)
    return parser


def install_spec(extra: str) -> str:
    """A requirement pip can install fedagg with ``extra`` from: fedagg is on no package index, so the source this
    copy was installed from (its PEP 610 ``direct_url.json``) when known."""
    try:
        recorded = importlib.metadata.distribution("fedagg").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        recorded = None
    url = json.loads(recorded).get("url") if recorded else None
    return f"fedagg[{extra}] @ {url}" if url else f"<a fedagg checkout or wheel>[{extra}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedagg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        for problem in error.problems:
            print(f"fedagg: configuration error: {problem}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        module = (error.name or "").split(".")[0]
        if module not in SERVER_EXTRA_MODULES:
            raise
        needs = "a collaborator site's" if module in SITE_EXTRA_MODULES else "the aggregator's"
        extra = "site" if module in SITE_EXTRA_MODULES else "server"
        print(
            f"fedagg: {args.command} needs {needs} dependencies: pip install '{install_spec(extra)}' ({error})",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("fedagg: interrupted", file=sys.stderr)
        return 130
