"""``fedagg certs``: a CA and every certificate a federation needs, in fedagg's, Kubernetes' and OpenFL's layouts."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from fedagg.cli.common import Commands, add_command


def register(commands: Commands) -> None:
    """Add the command."""
    parser = add_command(
        commands,
        "certs",
        "create a CA, the aggregator's and the collaborators' certificates",
        """\
  fedagg certs --out pki --collaborators one,two,three
  fedagg certs --out pki --collaborators site-a,site-b --hosts fedagg.example.org,10.0.0.7 --observers dashboard
  kubectl apply -f pki/kubernetes/fedagg-tls.yaml      # the aggregator's kubernetes.io/tls secret""",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to create (must not exist)")
    parser.add_argument(
        "--collaborators", required=True, help="comma-separated names (become certificate CNs)"
    )
    parser.add_argument(
        "--hosts",
        default="localhost,127.0.0.1",
        help="names and addresses collaborators dial (certificate SANs; default localhost,127.0.0.1)",
    )
    parser.add_argument(
        "--observers", default="", help="comma-separated observer names (status, metrics, models)"
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--secret-name", default="fedagg-tls", help="name of the Kubernetes Secret manifest")
    parser.set_defaults(handler=_certs)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _certs(args: argparse.Namespace) -> int:
    from fedagg.pki import write_federation_pki

    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"fedagg: {args.out} exists and is not empty; choose a new directory")
    collaborators = _names(args.collaborators)
    if not collaborators:
        raise SystemExit("fedagg: --collaborators needs at least one name")
    pki = write_federation_pki(
        args.out,
        collaborators,
        _names(args.hosts),
        _names(args.observers),
        datetime.timedelta(days=args.days),
        args.secret_name,
    )
    print(f"CA:            {pki.ca_certificate} (its key is next to it: keep it safe)")
    print(f"aggregator:    {pki.aggregator_dir}/  (server.tls.certificate_dir; SANs {args.hosts})")
    for name, directory in pki.collaborator_dirs.items():
        print(f"client {name}: {directory}/")
    print(f"Kubernetes:    {pki.kubernetes_secret}")
    print(f"OpenFL layout: {pki.openfl_cert_dir}/ (cert_chain.crt, server/agg_<host>.*, client/col_<name>.*)")
    return 0
