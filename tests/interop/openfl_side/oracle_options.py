"""The oracle aggregator's command line (see oracle_aggregator.py): the options and their checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


STRAGGLER_POLICIES = ("cutoff_time", "percentage")


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0, help="0 (default): ephemeral; printed as PORT=<n>")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--plan", type=Path, help="build the aggregator from this plan (see above)")
    p.add_argument("--cols", type=Path, help="with --plan: the cols file (authorized collaborators)")
    p.add_argument(
        "--collaborators", help="comma-separated authorized collaborators (required without --plan)"
    )
    p.add_argument("--rounds", type=int, help="rounds_to_train (required without --plan)")
    p.add_argument("--init-model", type=Path, help="initial ModelProto .pbuf (required without --plan)")
    p.add_argument("--federation-uuid", help="(required without --plan)")
    p.add_argument("--aggregator-uuid", help="(required without --plan)")
    p.add_argument("--ca", help="CA certificate (PEM); with --cert/--key enables TLS")
    p.add_argument("--cert", help="server certificate (PEM)")
    p.add_argument("--key", help="server private key (PEM)")
    p.add_argument("--require-client-auth", type=parse_bool, default=True, help="mTLS (default: true)")
    p.add_argument("--single-col-cert-common-name", default=None, help="OpenFL single-certificate mode")
    p.add_argument(
        "--straggler-policy",
        choices=STRAGGLER_POLICIES,
        default="cutoff_time",
        help="CutoffTimeBasedStragglerHandling (default) or PercentageBasedStragglerHandling",
    )
    p.add_argument(
        "--straggler-cutoff-time",
        type=float,
        default=float("inf"),
        help="cutoff_time: seconds after the round's first task (default: inf, wait for all)",
    )
    p.add_argument(
        "--percent-collaborators-needed",
        type=float,
        default=1.0,
        help="percentage: share of the authorized collaborators that must be done (default: 1.0)",
    )
    p.add_argument("--minimum-reporting", type=int, default=1, help="either policy (default: 1)")
    p.add_argument("--use-delta-updates", type=parse_bool, default=True, help="(default: true)")
    p.add_argument("--db-store-rounds", type=int, default=2, help="(default: 2, the plan default)")
    p.add_argument(
        "--train-aggregation",
        type=json.loads,
        default=None,
        help='the train task\'s aggregation_type as a plan gives it, JSON {"template": ..., "settings": {...}}'
        " (default: WeightedAverage); an adaptive one's params are the initial model",
    )
    p.add_argument(
        "--state-dir", type=Path, help="where best.pbuf and last.pbuf go (required without --plan)"
    )
    p.add_argument("--output", type=Path, required=True, help="round-<r>.npz, metrics.json, summary.json")
    p.add_argument(
        "--record-models",
        type=parse_bool,
        default=True,
        help="write round-<r>.npz (default: true; benchmarks turn it off)",
    )
    p.add_argument(
        "--sleep-time",
        type=int,
        default=None,
        help="seconds GetTasks tells a collaborator without tasks to sleep (default: OpenFL's, 10)",
    )
    p.add_argument("--timeout", type=float, default=0, help="exit 3 after this many seconds (0: never)")
    p.add_argument("--log-level", default="INFO")
    return p


FEDERATION_OPTIONS = (
    "collaborators",
    "rounds",
    "init_model",
    "federation_uuid",
    "aggregator_uuid",
    "state_dir",
)
STRAGGLER_OPTIONS = (
    "straggler_policy",
    "straggler_cutoff_time",
    "percent_collaborators_needed",
    "minimum_reporting",
    "use_delta_updates",
    "db_store_rounds",
    "single_col_cert_common_name",
    "train_aggregation",
)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """With --plan the plan describes the federation; without, the options must."""
    if args.plan is not None:
        given = [
            name
            for name in (*FEDERATION_OPTIONS, *STRAGGLER_OPTIONS)
            if getattr(args, name) != parser.get_default(name)
        ]
        if given:
            parser.error(
                f"--plan describes the federation; drop {', '.join('--' + n.replace('_', '-') for n in given)}"
            )
        return
    if args.cols is not None:
        parser.error("--cols goes with --plan")
    missing = [name for name in FEDERATION_OPTIONS if getattr(args, name) is None]
    if missing:
        parser.error(
            f"without --plan these are required: {', '.join('--' + n.replace('_', '-') for n in missing)}"
        )
