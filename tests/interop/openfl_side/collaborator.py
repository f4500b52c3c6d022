"""Run one real OpenFL collaborator (``Collaborator`` + ``AggregatorGRPCClient``) against an aggregator.

Runs only with an OpenFL venv's python (``scripts/openfl-venv [VERSION]``); fedagg never imports openfl.
Works with OpenFL 1.7.1, 1.8 and 1.9: their constructors differ (1.8/1.9's client takes the collaborator's
name, their Collaborator calls delta updates ``use_delta_updates``), which is all this script adapts to.
Their clients differ on errors too: 1.7.1 exits on ``UNAUTHENTICATED`` and re-sends at once on most other
codes; 1.8/1.9 sleep ``--reconnect-interval`` and retry every status forever (only ``--timeout`` ends them).

The task runner (``numpy_task.py``) is a tiny numpy model whose outputs are exact functions of the
inputs, so a test can predict every value the aggregator should produce. With ``s`` = ``--step``, ``r`` =
the round and ``G`` = the global model received for round ``r``:

* ``train`` (data_size = ``--train-size``): trained tensors ``T = G + s * (r + 1)`` (float32), metric
  ``loss = s / (r + 1)``.
* ``aggregated_model_validation`` (data_size = ``--valid-size``): metric ``acc = mean(G) + s``.
* ``locally_tuned_model_validation`` (data_size = ``--valid-size``): metric ``acc = mean(T) + s``.

``mean`` is over all elements of all tensors together. The task list is the default plan's
(spec §6): the three tasks above with ``validate_task``/``train_task`` and ``apply`` global/local,
run in that order. ``opt_treatment=RESET``, ``db_store_rounds=1``, NoCompression, as in fx's defaults
apart from ``--delta-updates``.

A deterministic straggler: ``--stall-before-task TASK --stall-seconds S`` makes the runner sleep ``S``
seconds at the start of ``TASK``'s work (after its inputs were fetched, before its result exists), in
every round it runs that task (``--stall-round R``: only in round ``R``). It logs ``round R: stalling``
first. The uploads of the tasks before it in that round have been sent (and answered) by then: with
``locally_tuned_model_validation`` the collaborator has uploaded ``train`` and then goes quiet, so an
aggregator whose straggler policy closes the round meanwhile holds partial work of it.
After the stall the task's results are sent as usual (for the round the tasks came with, which the
aggregator may have left by then).

TLS: ``--ca`` + ``--cert`` + ``--key`` → mTLS (the server's certificate must name ``--address``; the
client certificate's CN must be ``--name``); ``--ca`` alone → TLS without a client certificate; none →
plaintext. The process exits 0 once the aggregator sends the quit job; an ``UNAUTHENTICATED`` reply (1.7.1
only) or a reply-header mismatch makes OpenFL raise (exit 1); ``--timeout`` makes it exit 3 instead of
letting OpenFL's client retry forever.

``--result FILE`` receives JSON::

    {"name", "step", "train_size", "valid_size", "delta_updates", "shapes",
     "stall": {"task", "seconds"[, "round"]} or null,
     "rounds": [{"round", "global": {tensor: nested list}, "trained": {...},
                 "metrics": {task: {metric: value}},
                 "stalled": [task, ...]}, ...],   # "stalled" only in rounds it stalled in
     "final_weights": {tensor: nested list}}   # the locally trained weights of the last round

``rounds`` lists the rounds the collaborator received tasks for, whether or not the aggregator used
its results.

Note that a collaborator never sees the model aggregated in the last round; compare that with the
aggregator's own output.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any

# numpy_task and watchdog are sibling modules: the script directory is on sys.path.
from numpy_task import TASK_CONFIG, NumpyRunner, SizedLoader, Stall
from openfl.component.collaborator.collaborator import Collaborator
from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient
from watchdog import start_watchdog

logger = logging.getLogger("openfl_side.collaborator")


def make_client(args: argparse.Namespace) -> Any:
    """OpenFL's gRPC client; 1.8 and 1.9 take the collaborator's name (and the uuids) in the constructor."""
    common: dict[str, Any] = {
        "root_certificate": args.ca,
        "certificate": args.cert,
        "private_key": args.key,
        "use_tls": args.ca is not None,
        "require_client_auth": args.cert is not None,
        "aggregator_uuid": args.aggregator_uuid,
        "federation_uuid": args.federation_uuid,
        "single_col_cert_common_name": args.single_col_cert_common_name,
        "client_reconnect_interval": args.reconnect_interval,
    }
    if "collaborator_name" in inspect.signature(AggregatorGRPCClient.__init__).parameters:
        common["collaborator_name"] = args.name
    return AggregatorGRPCClient(args.address, args.port, **common)


def delta_argument() -> str:
    """Collaborator's keyword for delta updates: 1.7.1's ``delta_updates``, 1.8/1.9's ``use_delta_updates``."""
    parameters = inspect.signature(Collaborator.__init__).parameters
    return "use_delta_updates" if "use_delta_updates" in parameters else "delta_updates"


def parse_bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    raw = json.loads(text)
    if not isinstance(raw, dict) or not raw:
        raise argparse.ArgumentTypeError('expected a JSON object like {"w": [2, 3], "b": [3]}')
    return {str(name): tuple(int(d) for d in dims) for name, dims in raw.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="collaborator name (= client certificate CN)")
    p.add_argument("--address", default="localhost", help="aggregator host (default: localhost)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--aggregator-uuid", required=True)
    p.add_argument("--federation-uuid", required=True)
    p.add_argument("--ca", help="CA certificate (PEM); enables TLS")
    p.add_argument("--cert", help="client certificate (PEM); with --key enables mTLS")
    p.add_argument("--key", help="client private key (PEM)")
    p.add_argument("--single-col-cert-common-name", default=None, help="OpenFL single-certificate mode")
    p.add_argument("--delta-updates", type=parse_bool, default=True, help="true|false (default: true)")
    p.add_argument("--train-size", type=int, default=10, help="train data_size (default: 10)")
    p.add_argument("--valid-size", type=int, default=5, help="validation data_size (default: 5)")
    p.add_argument("--shapes", type=parse_shapes, default=parse_shapes('{"w": [2, 3], "b": [3]}'))
    p.add_argument("--step", type=float, default=1.0, help="training increment factor (default: 1.0)")
    p.add_argument(
        "--stall-before-task",
        choices=sorted(TASK_CONFIG),
        help="make this collaborator a straggler: sleep --stall-seconds before this task's work, every round",
    )
    p.add_argument("--stall-seconds", type=float, default=0.0, help="length of that stall (default: 0)")
    p.add_argument(
        "--stall-round", type=int, default=None, help="stall only in this round (default: every round)"
    )
    p.add_argument("--reconnect-interval", type=int, default=1, help="seconds between UNAVAILABLE retries")
    p.add_argument("--result", type=Path, help="write a JSON result here on success")
    p.add_argument("--timeout", type=float, default=0, help="exit 3 after this many seconds (0: never)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} %(name)s %(levelname)s: %(message)s",
    )
    start_watchdog(args.timeout, f"collaborator {args.name}", logger)
    if bool(args.cert) != bool(args.key) or (args.cert and not args.ca):
        raise SystemExit("--cert and --key go together, and need --ca")
    if args.stall_seconds < 0 or (args.stall_seconds > 0 and args.stall_before_task is None):
        raise SystemExit("--stall-seconds must be >= 0 and needs --stall-before-task")
    if args.stall_round is not None and args.stall_before_task is None:
        raise SystemExit("--stall-round needs --stall-before-task")
    stall = (
        Stall(args.stall_before_task, args.stall_seconds, args.stall_round)
        if args.stall_before_task
        else None
    )

    client = make_client(args)
    runner = NumpyRunner(SizedLoader(args.train_size, args.valid_size), args.shapes, args.step, stall)
    collaborator = Collaborator(
        collaborator_name=args.name,
        aggregator_uuid=args.aggregator_uuid,
        federation_uuid=args.federation_uuid,
        client=client,
        task_runner=runner,
        task_config=TASK_CONFIG,
        opt_treatment="RESET",
        **{delta_argument(): args.delta_updates},
        compression_pipeline=None,
        db_store_rounds=1,
    )
    collaborator.run()  # returns when the aggregator sends quit
    logger.info("quit received after %d round(s)", len(runner.rounds))

    if args.result:
        result = {
            "name": args.name,
            "step": args.step,
            "train_size": args.train_size,
            "valid_size": args.valid_size,
            "delta_updates": args.delta_updates,
            "shapes": {k: list(v) for k, v in args.shapes.items()},
            "stall": None if stall is None else _stall_json(stall),
            "rounds": [runner.rounds[r] for r in sorted(runner.rounds)],
            "final_weights": {k: v.tolist() for k, v in runner.weights.items()},
        }
        args.result.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _stall_json(stall: Stall) -> dict[str, Any]:
    described: dict[str, Any] = {"task": stall.task, "seconds": stall.seconds}
    if stall.round is not None:
        described["round"] = stall.round
    return described


if __name__ == "__main__":
    sys.exit(main())
