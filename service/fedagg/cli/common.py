"""Helpers shared by commands: formatting, connection options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from fedagg.collaborator import AggregatorClient, ClientTls

HelpFormatter = argparse.RawDescriptionHelpFormatter
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    examples: str,
) -> argparse.ArgumentParser:
    """A sub-command with its one-line summary and an examples epilog."""
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"examples:\n{examples}",
        formatter_class=HelpFormatter,
    )


def add_connection_options(parser: argparse.ArgumentParser, identity_required: bool = True) -> None:
    """Where the aggregator is and which certificate identifies this client."""
    parser.add_argument("--address", required=True, help="aggregator HOST:PORT (the federation port)")
    parser.add_argument("--ca", type=Path, help="CA certificate that signed the aggregator (PEM)")
    parser.add_argument("--cert", type=Path, help="this client's certificate (PEM, mutual TLS)")
    parser.add_argument("--key", type=Path, help="this client's private key (PEM)")
    parser.add_argument(
        "--server-name", help="expected name in the aggregator's certificate, if not the host"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext (an aggregator with tls.mode insecure)"
    )
    parser.add_argument(
        "--federation-uuid",
        required=identity_required,
        default="",
        help="federation identity (from the aggregator's configuration)",
    )
    parser.add_argument("--aggregator-uuid", default="", help="default: aggregator_<federation-uuid>")


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS material from the options; None for ``--insecure``."""
    if args.insecure:
        return None
    if args.ca is None:
        raise SystemExit("fedagg: --ca is required (or --insecure for a plaintext aggregator)")
    return ClientTls(args.ca, args.cert, args.key, args.server_name)


def connect(args: argparse.Namespace, name: str) -> AggregatorClient:
    """A client for the aggregator the options name."""
    aggregator_uuid = args.aggregator_uuid or f"aggregator_{args.federation_uuid}"
    return AggregatorClient(args.address, name, aggregator_uuid, args.federation_uuid, tls=client_tls(args))


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
