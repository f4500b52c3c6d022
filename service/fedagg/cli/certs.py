"""``fedagg certs``: a CA and every certificate a federation needs, in fedagg's, Kubernetes' and OpenFL's layouts.

``fedagg certs --out D --collaborators ...`` makes everything centrally (the CA, the aggregator's and every
site's key); its actions serve federations whose sites keep their own keys: ``request`` (on a site: its key
and a CSR), ``sign`` (on the CA holder: a certificate for a CSR) and ``add`` (more sites from an existing CA,
keys made centrally). A refused name, CSR or CA directory is one line on stderr and exit status 2 (an
unwritable file: status 1), never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from pathlib import Path

from fedagg.cli.commands import Commands, add_command

USAGE_ERROR = 2
IO_ERROR = 1


class CertsError(Exception):
    """A refused invocation (exit status 2): the message names the option and the value."""


def register(commands: Commands) -> None:
    """Add the command and its actions."""
    parser = add_command(
        commands,
        "certs",
        "create a CA, the aggregator's and the collaborators' certificates; make and sign certificate requests",
        """\
  fedagg certs --out pki --collaborators one,two,three
  fedagg certs --out pki --collaborators site-a,site-b --hosts fedagg.example.org,10.0.0.7 --observers dashboard
  kubectl apply -f pki/kubernetes/fedagg-tls.yaml      # the aggregator's kubernetes.io/tls secret

  sites that keep their own keys (the key never leaves the site):
  fedagg certs request --name site-c --out site-c      # on site-c: site-c/tls.key and site-c/site-c.csr
  fedagg certs sign --ca pki site-c.csr                # on the CA holder: pki/collaborators/site-c/{tls,ca}.crt
  fedagg certs add --ca pki --collaborators site-d     # one more site from the same CA, key made here

Names (collaborators, observers) are letters, digits, '.', '_' and '-', starting and ending with a letter or
digit, at most 64 characters; hosts are IP addresses or DNS names. Run "fedagg certs ACTION --help" for an
action's options.""",
    )
    parser.usage = (
        "%(prog)s --out DIR --collaborators NAMES [--hosts HOSTS] [--observers NAMES] [--days N]"
        " [--secret-name NAME]\n       %(prog)s {request,sign,add} ..."
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory to create (must not exist or be empty); required without an action",
    )
    parser.add_argument(
        "--collaborators", help="comma-separated names (become certificate CNs); required without an action"
    )
    parser.add_argument(
        "--hosts",
        default="localhost,127.0.0.1",
        help="names and addresses collaborators dial (certificate SANs; default localhost,127.0.0.1)",
    )
    parser.add_argument(
        "--observers", default="", help="comma-separated observer names (status, metrics, models)"
    )
    parser.add_argument("--days", type=_days, default=365, help="validity in days (default 365)")
    parser.add_argument("--secret-name", default="fedagg-tls", help="name of the Kubernetes Secret manifest")
    parser.set_defaults(handler=_guarded(_certs))
    actions = parser.add_subparsers(
        dest="certs_action", metavar="ACTION", title="actions (instead of the options above)"
    )
    _register_request(actions)
    _register_sign(actions)
    _register_add(actions)


def _register_request(actions: Commands) -> None:
    request = add_command(
        actions,
        "request",
        "on a collaborator site: make its private key and a certificate signing request (CSR)",
        """\
  fedagg certs request --name site-a --out site-a
      writes site-a/tls.key (mode 0600: it stays here) and site-a/site-a.csr (send this to the CA holder)
      and prints the CSR's SHA-256 fingerprint: tell it to the CA holder over another channel
  # the CA holder runs "fedagg certs sign --ca pki site-a.csr" and sends back tls.crt and ca.crt;
  # put both in site-a/, then train:
  fedagg collaborator --name site-a --address fedagg.example.org:50051 --federation-uuid myfed_0123abcd \\
      --ca site-a/ca.crt --cert site-a/tls.crt --key site-a/tls.key
  # OpenFL site: copy site-a/tls.key to cert/client/col_site-a.key, tls.crt to cert/client/col_site-a.crt
  # and ca.crt to cert/cert_chain.crt in the workspace
  # without fedagg's server extra (cryptography), openssl makes an equivalent request:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=site-a \\
      -keyout site-a/tls.key -out site-a/site-a.csr""",
    )
    request.add_argument(
        "--name", required=True, help="the collaborator's (or observer's) name: the certificate's CN"
    )
    request.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the site's directory (created, mode 0700); must not hold a tls.key yet",
    )
    request.set_defaults(handler=_guarded(_request))


def _register_sign(actions: Commands) -> None:
    sign = add_command(
        actions,
        "sign",
        "on the CA holder: sign a collaborator's CSR (its private key is never needed)",
        """\
  fedagg certs sign --ca pki site-a.csr
      checks the CSR (its signature, its CN, its key) and writes pki/collaborators/site-a/tls.crt and
      ca.crt: send both to site-a, and compare the printed SHA-256 with the one site-a reported
  fedagg certs sign --ca pki/ca site-a.csr --name site-a --out outbox/site-a --days 90
  fedagg certs sign --ca pki cert/col_site-a.csr       # a CSR from OpenFL's fx collaborator generate-cert-request
  # then authorize it: add site-a to federation.collaborators (or to the workspace's plan/cols.yaml)""",
    )
    sign.add_argument(
        "--ca",
        type=Path,
        required=True,
        help="the directory 'fedagg certs' made (or its ca/ holding ca.crt and ca.key)",
    )
    sign.add_argument(
        "request", type=Path, metavar="CSR", help="the site's certificate signing request (PEM or DER)"
    )
    sign.add_argument(
        "--out",
        type=Path,
        help="where to write tls.crt and ca.crt (default: collaborators/<CN>/ in the CA's directory)",
    )
    sign.add_argument("--name", help="refuse the CSR unless its CN is this name")
    sign.add_argument(
        "--days", type=_days, default=365, help="validity in days (default 365; never past the CA's own)"
    )
    sign.set_defaults(handler=_guarded(_sign))


def _register_add(actions: Commands) -> None:
    add = add_command(
        actions,
        "add",
        "add collaborators or observers to an existing CA, keys made here, in the same layouts",
        """\
  fedagg certs add --ca pki --collaborators site-c,site-d
      writes pki/collaborators/<name>/{tls.crt,tls.key,ca.crt} and pki/openfl/cert/client/col_<name>.*
  fedagg certs add --ca pki --observers grafana --days 90
  # sites that should make their own keys: "fedagg certs request" there, "fedagg certs sign" here""",
    )
    add.add_argument(
        "--ca",
        type=Path,
        required=True,
        help="the directory 'fedagg certs' made (or its ca/ holding ca.crt and ca.key)",
    )
    add.add_argument("--collaborators", default="", help="comma-separated names to add (certificate CNs)")
    add.add_argument("--observers", default="", help="comma-separated observer names to add")
    add.add_argument(
        "--days", type=_days, default=365, help="validity in days (default 365; never past the CA's own)"
    )
    add.set_defaults(handler=_guarded(_add))


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a whole number of days") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"got {days}, expected 1 to 36500 days")
    return days


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with refusals printed as one line (``fedagg certs: error: ...``) and an exit status."""

    def run(args: argparse.Namespace) -> int:
        prog = "fedagg certs" + (f" {args.certs_action}" if args.certs_action else "")
        try:
            return handler(args)
        except CertsError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return USAGE_ERROR
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            print(f"{prog}: error: {where}{error.strerror or error}", file=sys.stderr)
            return IO_ERROR

    return run


def _split(text: str, option: str) -> list[str]:
    """Comma-separated values; an empty entry (``a,,b``, a trailing comma) is an error, not skipped."""
    if not text.strip():
        return []
    names = [name.strip() for name in text.split(",")]
    if "" in names:
        raise CertsError(f"argument {option}: empty name in {text!r}")
    return names


def _checked_names(text: str, option: str, kind: str) -> list[str]:
    from fedagg.pki.errors import PkiError
    from fedagg.pki.names import check_names

    names = _split(text, option)
    try:
        return check_names(names, kind)
    except PkiError as error:
        raise CertsError(f"argument {option}: {error}") from None


def _distinct(collaborators: list[str], observers: list[str]) -> None:
    lowered = {name.lower(): name for name in collaborators}
    for name in observers:
        if name.lower() in lowered:
            raise CertsError(
                f"argument --observers: {name!r} is also a collaborator ({lowered[name.lower()]!r}); "
                "each name gets one certificate directory"
            )


def _certs(args: argparse.Namespace) -> int:
    from fedagg.pki.errors import InvalidName
    from fedagg.pki.federation import write_federation_pki
    from fedagg.pki.names import check_host, check_secret_name

    if args.out is None or args.collaborators is None:
        raise CertsError(
            "--out and --collaborators are required (or an action: request, sign, add; see --help)"
        )
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise CertsError(f"argument --out: {str(args.out)!r} exists and is not empty; choose a new directory")
    collaborators = _checked_names(args.collaborators, "--collaborators", "collaborator")
    if not collaborators:
        raise CertsError("argument --collaborators: needs at least one name")
    observers = _checked_names(args.observers, "--observers", "observer")
    _distinct(collaborators, observers)
    hosts = _split(args.hosts, "--hosts")
    if not hosts:
        raise CertsError("argument --hosts: needs at least one name or address")
    try:
        for host in hosts:
            check_host(host)
    except InvalidName as error:
        raise CertsError(f"argument --hosts: {error}") from None
    try:
        check_secret_name(args.secret_name)
    except InvalidName as error:
        raise CertsError(f"argument --secret-name: {error}") from None
    pki = write_federation_pki(
        args.out, collaborators, hosts, observers, datetime.timedelta(days=args.days), args.secret_name
    )
    print(f"CA:            {pki.ca_certificate} (its key is next to it: keep it safe)")
    print(f"aggregator:    {pki.aggregator_dir}/  (server.tls.certificate_dir; SANs {','.join(hosts)})")
    for name, directory in pki.collaborator_dirs.items():
        print(f"client {name}: {directory}/")
    print(f"Kubernetes:    {pki.kubernetes_secret}")
    print(f"OpenFL layout: {pki.openfl_cert_dir}/ (cert_chain.crt, server/agg_<host>.*, client/col_<name>.*)")
    return 0


def _request(args: argparse.Namespace) -> int:
    from fedagg.pki.errors import PkiError
    from fedagg.pki.names import check_name
    from fedagg.pki.requests import write_request

    try:
        check_name(args.name)
    except PkiError as error:
        raise CertsError(f"argument --name: {error}") from None
    if args.out.exists() and not args.out.is_dir():
        raise CertsError(f"argument --out: {str(args.out)!r} exists and is not a directory")
    try:
        files = write_request(args.out, args.name)
    except PkiError as error:
        raise CertsError(f"argument --out: {error}") from None
    print(f"private key: {files.private_key}  (mode 0600; it stays here, never send it)")
    print(f"request:     {files.request}  (send this to the CA holder)")
    print(f"CSR SHA-256: {files.fingerprint}")
    print("             tell the CA holder this fingerprint over another channel (phone, chat) to compare")
    print(f"next:        put the tls.crt and ca.crt the CA holder sends back in {args.out}/, next to tls.key")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from fedagg.pki.errors import CaError, OutputExists, PkiError
    from fedagg.pki.names import check_name
    from fedagg.pki.requests import sign_request_file

    if args.name is not None:
        try:
            check_name(args.name)
        except PkiError as error:
            raise CertsError(f"argument --name: {error}") from None
    try:
        signed = sign_request_file(
            args.ca, args.request, args.out, datetime.timedelta(days=args.days), args.name
        )
    except CaError as error:
        raise CertsError(f"argument --ca: {error}") from None
    except OutputExists as error:
        if args.out is not None:
            raise CertsError(f"argument --out: {error}; remove it or choose another --out") from None
        raise CertsError(f"{error}; remove it, or write elsewhere with --out") from None
    except PkiError as error:
        raise CertsError(str(error)) from None
    print(
        f"signed:      CN={signed.common_name}, client certificate valid until {signed.not_valid_after:%Y-%m-%d}"
    )
    print(f"CSR SHA-256: {signed.fingerprint}  (it must match the fingerprint the site reported)")
    print(f"CSR hash:    {signed.openfl_hash}  (the same check for a site on OpenFL's fx: its 'CSR Hash')")
    print(f"certificate: {signed.certificate}")
    print(f"CA:          {signed.ca_certificate}")
    print(
        f"next:        send both files to {signed.common_name} (they go next to its tls.key) and authorize it: "
        f"add {signed.common_name} to federation.collaborators or server.observers (or plan/cols.yaml)"
    )
    return 0


def _add(args: argparse.Namespace) -> int:
    from fedagg.pki.errors import InvalidName, PkiError
    from fedagg.pki.federation import add_to_federation_pki

    collaborators = _checked_names(args.collaborators, "--collaborators", "collaborator")
    observers = _checked_names(args.observers, "--observers", "observer")
    if not collaborators and not observers:
        raise CertsError("--collaborators or --observers needs at least one name")
    _distinct(collaborators, observers)
    try:
        added = add_to_federation_pki(args.ca, collaborators, observers, datetime.timedelta(days=args.days))
    except InvalidName as error:
        option = "--observers" if error.kind == "observer" else "--collaborators"
        raise CertsError(f"argument {option}: {error}") from None
    except PkiError as error:
        raise CertsError(f"argument --ca: {error}") from None
    for name, directory in added.items():
        print(f"client {name}: {directory}/")
    print("authorize them: add the names to federation.collaborators (observers: server.observers)")
    return 0
