"""Helpers shared by commands: formatting, connection options, exit statuses, output formats."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from fedagg.collaborator import (
    AggregatorClient,
    AggregatorError,
    AggregatorUnreachable,
    ClientTls,
    ConnectionFailed,
    RetryPolicy,
)

if TYPE_CHECKING:
    from fedagg.config.schema import Config
    from fedagg.federation.plan import FederationPlan

HelpFormatter = argparse.RawDescriptionHelpFormatter
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Exit statuses of the commands that connect to an aggregator (collaborator, status, metrics, model pull).
EXIT_OK = 0
EXIT_REFUSED = 1  # the aggregator answered with an error status
EXIT_USAGE = 2  # bad options or unreadable local files (argparse uses 2 as well)
EXIT_CONNECTION = 3  # cannot connect, and retrying cannot help (TLS, certificate names, TLS mode)
EXIT_TIMEOUT = 4  # the aggregator stayed unreachable or unavailable for --timeout seconds
EXIT_INTERRUPTED = 130

OUTPUT_FORMATS = ("text", "json")

ENVIRONMENT = {
    "address": "FEDAGG_ADDRESS",
    "ca": "FEDAGG_CA",
    "cert": "FEDAGG_CERT",
    "key": "FEDAGG_KEY",
    "name": "FEDAGG_NAME",
    "server_name": "FEDAGG_SERVER_NAME",
    "insecure": "FEDAGG_INSECURE",
    "federation_uuid": "FEDAGG_FEDERATION_UUID",
    "aggregator_uuid": "FEDAGG_AGGREGATOR_UUID",
}
CONNECTION_EPILOG = """
environment (defaults for the options):
  FEDAGG_ADDRESS  FEDAGG_CA  FEDAGG_CERT  FEDAGG_KEY  FEDAGG_NAME  FEDAGG_SERVER_NAME
  FEDAGG_FEDERATION_UUID  FEDAGG_AGGREGATOR_UUID  FEDAGG_INSECURE (1 or true: --insecure)
  an option given on the command line wins over the environment

connection problems:
  the first failure is reported at once on stderr, naming the address and the cause; transient causes (the
  name does not resolve, nothing listens, the aggregator starting, draining or unavailable) are retried with
  back-off and reported at every retry, until --timeout seconds have passed

exit status:
  0    done
  1    the aggregator refused a call (its status and message are printed)
  2    usage error: bad options, unreadable certificate files
  3    cannot connect and retrying cannot help: TLS verification failed on this client's side (the CA in
       --ca did not sign the aggregator's certificate, or it expired) or on the aggregator's side (it does
       not accept --cert, or needs one), the aggregator's certificate does not carry the name dialled (the
       message lists the names it carries), TLS against a plaintext port or the reverse
  4    gave up: the aggregator stayed unreachable or unavailable for --timeout seconds
  130  interrupted"""


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    examples: str,
    *,
    more: str = "",
) -> argparse.ArgumentParser:
    """A sub-command with its one-line summary and an examples epilog (``more`` is appended to it)."""
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"examples:\n{examples}{more}",
        formatter_class=HelpFormatter,
    )


def _environment(option: str) -> str | None:
    return os.environ.get(ENVIRONMENT[option]) or None


def add_name_option(parser: argparse.ArgumentParser, help_text: str, default: str | None = None) -> None:
    """``--name`` (default ``FEDAGG_NAME``, then ``default``; required when neither is set)."""
    value = _environment("name") or default
    parser.add_argument(
        "--name",
        required=value is None,
        default=value,
        help=f"{help_text} (env FEDAGG_NAME{f'; default {default}' if default else ''})",
    )


def add_connection_options(
    parser: argparse.ArgumentParser, identity_required: bool = True, timeout: float = 600.0
) -> None:
    """Where the aggregator is, which certificate identifies this client, how long to keep trying."""
    address = _environment("address")
    parser.add_argument(
        "--address",
        required=address is None,
        default=address,
        help="aggregator HOST:PORT, the federation port (env FEDAGG_ADDRESS)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=_environment("ca"),
        help="CA certificate that signed the aggregator's certificate (PEM; env FEDAGG_CA)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        default=_environment("cert"),
        help="this client's certificate (PEM, mutual TLS; env FEDAGG_CERT)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=_environment("key"),
        help="this client's private key (PEM; env FEDAGG_KEY)",
    )
    parser.add_argument(
        "--server-name",
        default=_environment("server_name"),
        help="expected name in the aggregator's certificate, if not the host of --address (env FEDAGG_SERVER_NAME)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=(_environment("insecure") or "").lower() in ("1", "true", "yes"),
        help="plaintext (an aggregator with server.tls.mode insecure; env FEDAGG_INSECURE=1)",
    )
    federation = _environment("federation_uuid")
    parser.add_argument(
        "--federation-uuid",
        required=identity_required and federation is None,
        default=federation or "",
        help="federation identity, from the aggregator's configuration (env FEDAGG_FEDERATION_UUID)",
    )
    parser.add_argument(
        "--aggregator-uuid",
        default=_environment("aggregator_uuid") or "",
        help="default: aggregator_<federation-uuid> (env FEDAGG_AGGREGATOR_UUID)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        metavar="SECONDS",
        help=f"give up (exit 4) when the aggregator has been unreachable or unavailable this long "
        f"(default {timeout:g})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def add_output_option(parser: argparse.ArgumentParser, json_help: str) -> None:
    """``-o/--output text|json``."""
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default="text",
        help=f"text (default) or json: {json_help}",
    )


def print_json(document: Any) -> None:
    """One JSON document on one line of stdout."""
    print(json.dumps(document, separators=(",", ":")), flush=True)


CERTIFICATE_PEM = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY_PEM = b"PRIVATE KEY-----"
MAX_PEM_BYTES = 1 << 20
"""How much of a certificate or key file is read to check it (a chain of certificates is a few KiB)."""


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS material from the options, with every file checked; None for ``--insecure``."""
    if args.insecure:
        return None
    if args.ca is None:
        raise _usage("--ca is required (or --insecure for a plaintext aggregator; env FEDAGG_CA)")
    if (args.cert is None) != (args.key is None):
        raise _usage("--cert and --key go together")
    for option, path, marker, kind in (
        ("--ca", args.ca, CERTIFICATE_PEM, "a PEM certificate"),
        ("--cert", args.cert, CERTIFICATE_PEM, "a PEM certificate"),
        ("--key", args.key, PRIVATE_KEY_PEM, "a PEM private key"),
    ):
        if path is None:
            continue
        try:
            with open(path, "rb") as readable:
                text = readable.read(MAX_PEM_BYTES)
        except OSError as error:
            raise _usage(f"{option} {path}: {error.strerror}") from None
        if marker not in text:
            swapped = (
                " (are --cert and --key swapped?)" if option != "--ca" and args.cert and args.key else ""
            )
            raise _usage(f"{option} {path}: not {kind}{swapped}")
    return ClientTls(args.ca, args.cert, args.key, args.server_name)


def _usage(message: str) -> SystemExit:
    print(f"fedagg: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def configure_client_logging(quiet: bool = False) -> None:
    """Warnings (connection problems among them) on stderr as ``fedagg: ...`` lines; recoveries too."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("fedagg: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("fedagg.collaborator.connection").setLevel(logging.WARNING if quiet else logging.INFO)


def connect(args: argparse.Namespace, name: str) -> AggregatorClient:
    """A client for the aggregator the options name, retrying for ``--timeout`` seconds."""
    tls = client_tls(args)
    aggregator_uuid = args.aggregator_uuid or f"aggregator_{args.federation_uuid}"
    return AggregatorClient(
        args.address,
        name,
        aggregator_uuid,
        args.federation_uuid,
        tls=tls,
        retry=RetryPolicy(give_up_after=args.timeout),
    )


@contextmanager
def reported_errors(who: str = "") -> Iterator[None]:
    """Turn client errors into one ``fedagg: ...`` line on stderr and the documented exit status."""
    prefix = f"fedagg: {who}: " if who else "fedagg: "
    try:
        yield
    except ConnectionFailed as error:
        print(f"{prefix}cannot connect: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONNECTION) from None
    except AggregatorUnreachable as error:
        print(
            f"{prefix}gave up after {error.seconds:.0f}s (--timeout): {error.problem}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_TIMEOUT) from None
    except AggregatorError as error:
        print(f"{prefix}the aggregator refused the call: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_REFUSED) from None


def ago(seconds: float) -> str:
    """A duration as "12s ago", "5m ago", "2h 3m ago", "3d 4h ago"."""
    if seconds < 1:
        return "just now"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s ago"
    if whole < 3600:
        return f"{whole // 60}m ago"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m ago"
    return f"{whole // 86400}d {whole % 86400 // 3600}h ago"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def config_document(config: Config, plan: FederationPlan, ignored: tuple[str, ...]) -> dict[str, Any]:
    """What ``fedagg config check`` reports (its ``-o json`` object; ``security`` and ``serves`` are for text)."""
    import datetime

    from fedagg.collaborator.diagnostics import certificate_facts
    from fedagg.server.tls import TlsMode
    from fedagg.sizing import plan_sizing

    server, ops, tls = config.server, config.ops, config.server.tls
    files = tls.files()
    security = {
        TlsMode.MUTUAL: f"mutual TLS (client certificates signed by {files.root_certificate})",
        TlsMode.SERVER_ONLY: "TLS, server certificate only",
        TlsMode.INSECURE: "PLAINTEXT (insecure)",
    }[tls.mode]
    listeners = [
        _listener("federation", server.bind_address, server.port, "grpc", tls.mode.value, security),
        _listener("ops", ops.bind_address, ops.port, "grpc", None, "plaintext"),
        _listener("metrics", ops.metrics_bind_address, ops.metrics_port, "http", None, "plaintext"),
    ]
    warnings: list[str] = []
    certificate: dict[str, Any] | None = None
    if tls.mode == TlsMode.INSECURE:
        warnings.append(
            "server.tls.mode is insecure: the federation port is plaintext and unauthenticated, so anyone who "
            "reaches it can read the model and act as any collaborator; use it only on a trusted network "
            "(collaborators connect with --insecure)"
        )
    elif (facts := certificate_facts(files.certificate.read_bytes())) is not None and facts.not_after:
        days_left = (facts.not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        certificate = {
            "file": str(files.certificate),
            "subject": facts.subject,
            "issuer": facts.issuer,
            "names": list(facts.names),
            "not_after": facts.not_after.isoformat(),
            "days_left": round(days_left, 1),
        }
        if days_left < 30:
            warnings.append(f"the server certificate {files.certificate} expires in {days_left:.0f} days")
        if not facts.names:
            warnings.append(
                f"the server certificate {files.certificate} carries no names (SANs); collaborators check the "
                "name they dial against them"
            )
    if tls.mode == TlsMode.SERVER_ONLY:
        warnings.append(
            "server.tls.mode is tls (server-only): collaborators present no certificate, so they are told apart "
            "only by the names they claim; prefer mtls"
        )
    resumes = (config.storage.state_dir / "checkpoint.json").is_file()
    if resumes:
        warnings.append(
            f"the state directory {config.storage.state_dir} holds a checkpoint: serve resumes that federation "
            "and does not start from federation.initial_model; to start over, empty the state directory"
        )
    initial_model = config.federation.initial_model
    sizing = None if initial_model is None else plan_sizing(plan, initial_model)
    return {
        "ok": True,
        "federation_uuid": plan.federation_uuid,
        "aggregator_uuid": plan.aggregator_uuid,
        "collaborators": list(plan.collaborators),
        "rounds": plan.rounds_to_train,
        "task_group": config.federation.task_group or None,
        "state_dir": str(config.storage.state_dir),
        "resumes": resumes,
        "initial_model": str(initial_model) if initial_model else None,
        "sizing": None if sizing is None else sizing.to_json(),
        "listeners": listeners,
        "certificate": certificate,
        "warnings": warnings,
        "ignored": list(ignored),
    }


_SERVES = {
    "federation": "OpenFL's aggregator service, health, reflection",
    "ops": "gRPC health and reflection",
    "metrics": "Prometheus /metrics",
}


def _listener(
    name: str, address: str, port: int, protocol: str, tls: str | None, security: str
) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "port": port,
        "protocol": protocol,
        "tls": tls,
        "plaintext": tls in (None, "insecure"),
        "security": security,
        "serves": _SERVES[name],
    }
