"""Reaching an aggregator from the command line: the connection options, their environment, the client."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from fedagg.cli.exits import usage_error
from fedagg.collaborator import AggregatorClient, ClientTls, RetryPolicy

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
    for option, help_text in (
        ("ca", "CA certificate that signed the aggregator's certificate (PEM; env FEDAGG_CA)"),
        ("cert", "this client's certificate (PEM, mutual TLS; env FEDAGG_CERT)"),
        ("key", "this client's private key (PEM; env FEDAGG_KEY)"),
    ):
        parser.add_argument(f"--{option}", type=Path, default=_environment(option), help=help_text)
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


CERTIFICATE_PEM = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY_PEM = b"PRIVATE KEY-----"
MAX_PEM_BYTES = 1 << 20
"""How much of a certificate or key file is read to check it (a chain of certificates is a few KiB)."""


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS material from the options, with every file checked; None for ``--insecure``."""
    if args.insecure:
        return None
    if args.ca is None:
        raise usage_error("--ca is required (or --insecure for a plaintext aggregator; env FEDAGG_CA)")
    if (args.cert is None) != (args.key is None):
        raise usage_error("--cert and --key go together")
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
            raise usage_error(f"{option} {path}: {error.strerror}") from None
        if marker not in text:
            swapped = (
                " (are --cert and --key swapped?)" if option != "--ca" and args.cert and args.key else ""
            )
            raise usage_error(f"{option} {path}: not {kind}{swapped}")
    return ClientTls(args.ca, args.cert, args.key, args.server_name)


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
