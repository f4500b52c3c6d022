"""Run OpenFL 1.7.1's own ``Aggregator`` + ``AggregatorGRPCServer`` as the reference oracle.

Runs only with the OpenFL venv's python (``scripts/openfl-venv``); fedagg never imports openfl.

The federation is what ``Plan.get_server()`` would build from the default plan (spec §3.5):
``RandomGroupedAssigner`` with one task group ``learning`` (100 %) running
``aggregated_model_validation``, ``train``, ``locally_tuned_model_validation``, each aggregated with
``WeightedAverage``; the straggler handling policy (below); ``NoCompressionPipeline``;
``db_store_rounds=2`` (plan default) and ``use_delta_updates=True`` (constructor default). OpenFL's code
runs unmodified apart from two things: a server subclass that binds
``--host`` (127.0.0.1) instead of ``[::]`` and reports the bound port, so ``--port 0`` works; and the
recording callback is put back into ``aggregator.callbacks.callbacks``, because 1.7.1's ``CallbackList``
silently drops user callbacks (its ``_flatten`` generator is exhausted in its own constructor).

Straggler handling (``openfl.component.straggler_handling_functions``), passed to ``Aggregator`` as an
instance (``straggler_handling_policy=``), which is what ``Plan.get_aggregator()`` does with the plan's
``straggler_handling_policy`` section:

* ``--straggler-policy cutoff_time`` (default): ``CutoffTimeBasedStragglerHandling(
  straggler_cutoff_time=--straggler-cutoff-time, minimum_reporting=--minimum-reporting)``; with the
  default cutoff ``inf`` that is OpenFL's default policy, wait for every collaborator.
* ``--straggler-policy percentage``: ``PercentageBasedStragglerHandling(
  percent_collaborators_needed=--percent-collaborators-needed, minimum_reporting=--minimum-reporting)``.
  The round ends inside the ``SendLocalTaskResults`` call that makes ``done >= percent * len(authorized)``
  and ``done >= minimum``, where a collaborator is *done* once all its tasks of the round are in; the
  others become stragglers, and their results of that round, already received or not, are left out.

Once the port is bound and listening, stdout gets the line ``PORT=<n>`` (flushed). ``serve()`` returns,
and this script exits 0, after every collaborator has been sent its quit job (OpenFL polls that every
5 s); it exits 1 instead if a per-round model could not be recorded (see ``summary.json``).
``--timeout`` exits with status 3 instead of waiting forever.

Files:

* ``--state-dir``: ``best.pbuf`` and ``last.pbuf`` as OpenFL writes them. ``last.pbuf`` holds the model
  that *started* the last round (round_number R-1), never the final aggregate.
* ``--output``:
  * ``round-<r>.npz``: the aggregated model OpenFL produced at the end of round r, i.e. the round r+1
    global model (TensorDB key ``(name, aggregator_uuid, r+1, False, ("model",))``), read by a callback
    in ``on_round_end``. ``round-<R-1>.npz`` is the final model.
  * ``metrics.json``: every aggregator-origin metric from OpenFL's ``metric_queue``,
    ``[{"round", "task_name", "metric_name", "metric_value"}, ...]`` sorted by (round, task, metric)
    (OpenFL's own order follows set iteration, so it changes from run to run).
  * ``collaborator_metrics.json``: the collaborator-origin entries of that queue (with ``metric_origin``),
    one per accepted upload's metric, including a straggler's whose upload its round then left out.
  * ``summary.json``: port, uuids, collaborators, straggler policy, rounds, final ``round_number``,
    saved rounds, per-round participants (``{"<r>": {"done": [...], "stragglers": [...]}}``: OpenFL's
    ``collaborators_done`` and ``stragglers`` as the round ended), best score, elapsed seconds and any
    callback errors.

Timing: with two or more collaborators and the default policy most rounds last about 10 s, because
OpenFL answers a collaborator that finished before the others with ``sleep_time=10``; the end adds up
to 5 s of ``serve()`` polling. Three rounds with two collaborators took 25-37 s here. A percentage
policy that ends a round with the first collaborator done avoids that sleep: the next round has begun
by the time that collaborator asks for its tasks again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import cpu_count
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from openfl.callbacks import Callback
from openfl.component.aggregator.aggregator import Aggregator
from openfl.component.assigner.random_grouped_assigner import RandomGroupedAssigner
from openfl.component.straggler_handling_functions import (
    CutoffTimeBasedStragglerHandling,
    PercentageBasedStragglerHandling,
    StragglerHandlingPolicy,
)
from openfl.interface.aggregation_functions import WeightedAverage
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import aggregator_pb2_grpc, utils
from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer
from openfl.transport.grpc.grpc_channel_options import channel_options
from openfl.utilities import TensorKey
from watchdog import start_watchdog  # a sibling module: the script directory is on sys.path

logger = logging.getLogger("openfl_side.oracle")

METRIC_FIELDS = ("round", "task_name", "metric_name", "metric_value")
TASK_NAMES = ["aggregated_model_validation", "train", "locally_tuned_model_validation"]


def default_tasks() -> dict[str, dict[str, Any]]:
    """The ``tasks`` section of the default plan (tasks_torch.yaml), as ``Plan.get_tasks()`` returns it."""
    return {
        "aggregated_model_validation": {
            "function": "validate_task",
            "kwargs": {"apply": "global", "metrics": ["acc"]},
            "aggregation_type": WeightedAverage(),
        },
        "locally_tuned_model_validation": {
            "function": "validate_task",
            "kwargs": {"apply": "local", "metrics": ["acc"]},
            "aggregation_type": WeightedAverage(),
        },
        "train": {
            "function": "train_task",
            "kwargs": {"metrics": ["loss"], "epochs": 1},
            "aggregation_type": WeightedAverage(),
        },
    }


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without its keyword clashes (a tensor may be called ``file``)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


class RoundRecorder(Callback):
    """Saves the global model OpenFL computed at the end of each round (before TensorDB clean-up)."""

    def __init__(self, output: Path, tensor_names: list[str]) -> None:
        super().__init__()
        self.output = output
        self.tensor_names = tensor_names
        self.aggregator: Aggregator | None = None
        self.saved_rounds: list[int] = []
        self.participants: dict[str, dict[str, list[str]]] = {}
        self.errors: list[str] = []

    def on_round_end(self, round_num: int, logs: dict[str, Any] | None = None) -> None:
        # Must never raise: this runs inside OpenFL's SendLocalTaskResults handler.
        try:
            agg = self.aggregator
            assert agg is not None, "RoundRecorder.aggregator was not set"
            # Still this round's: OpenFL resets both lists after on_round_end.
            self.participants[str(round_num)] = {
                "done": sorted(agg.collaborators_done),
                "stragglers": sorted(agg.stragglers),
            }
            arrays = {}
            for name in self.tensor_names:
                key = TensorKey(name, agg.uuid, round_num + 1, False, ("model",))
                value = agg.tensor_db.get_tensor_from_cache(key)
                if value is None:
                    raise LookupError(f"no aggregated model tensor {key}")
                arrays[name] = np.asarray(value, dtype=np.float32)
            save_npz(self.output / f"round-{round_num}.npz", arrays)
            self.saved_rounds.append(round_num)
            logger.info("round %d: saved aggregated model; metrics %s", round_num, logs)
        except Exception as exc:
            logger.exception("round %d: could not record the aggregated model", round_num)
            self.errors.append(f"round {round_num}: {exc!r}")


class LoopbackAggregatorServer(AggregatorGRPCServer):
    """OpenFL's server, bound to ``host`` and reporting the bound port (``--port 0`` = ephemeral).

    ``get_server`` repeats OpenFL 1.7.1's own (executor, channel options, servicer, credentials); it only
    changes the bind address and keeps the port that ``add_*_port`` returns.
    """

    def __init__(self, aggregator: Aggregator, agg_port: int, host: str, **kwargs: Any) -> None:
        super().__init__(aggregator, agg_port, **kwargs)
        self.uri = f"{host}:{agg_port}"
        self.bound_port: int | None = None

    def get_server(self) -> grpc.Server:
        self.server = grpc.server(ThreadPoolExecutor(max_workers=cpu_count()), options=channel_options)
        aggregator_pb2_grpc.add_AggregatorServicer_to_server(self, self.server)
        if not self.use_tls:
            self.logger.warning("gRPC is running on insecure channel with TLS disabled.")
            port = self.server.add_insecure_port(self.uri)
        else:
            self.server_credentials = grpc.ssl_server_credentials(
                ((Path(self.private_key).read_bytes(), Path(self.certificate).read_bytes()),),
                root_certificates=Path(self.root_certificate).read_bytes(),
                require_client_auth=self.require_client_auth,
            )
            port = self.server.add_secure_port(self.uri, self.server_credentials)
        if port == 0:
            raise RuntimeError(f"could not bind {self.uri}")
        self.bound_port = port
        # The socket is bound and listening from here on; serve() calls start() right after.
        print(f"PORT={port}", flush=True)
        return self.server


def parse_bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


STRAGGLER_POLICIES = ("cutoff_time", "percentage")


def straggler_policy(args: argparse.Namespace) -> StragglerHandlingPolicy:
    """The policy object ``Plan.get_straggler_handling_policy()`` would build from the arguments."""
    if args.straggler_policy == "percentage":
        return PercentageBasedStragglerHandling(
            percent_collaborators_needed=args.percent_collaborators_needed,
            minimum_reporting=args.minimum_reporting,
        )
    return CutoffTimeBasedStragglerHandling(
        straggler_cutoff_time=args.straggler_cutoff_time, minimum_reporting=args.minimum_reporting
    )


def straggler_summary(args: argparse.Namespace) -> dict[str, Any]:
    if args.straggler_policy == "percentage":
        return {
            "policy": "percentage",
            "percent_collaborators_needed": args.percent_collaborators_needed,
            "minimum_reporting": args.minimum_reporting,
        }
    cutoff = args.straggler_cutoff_time
    return {
        "policy": "cutoff_time",
        "straggler_cutoff_time": None if np.isinf(cutoff) else cutoff,
        "minimum_reporting": args.minimum_reporting,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 (default): ephemeral; printed as PORT=<n>")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--collaborators", required=True, help="comma-separated authorized collaborators")
    p.add_argument("--rounds", type=int, required=True, help="rounds_to_train")
    p.add_argument("--init-model", type=Path, required=True, help="initial ModelProto .pbuf")
    p.add_argument("--federation-uuid", required=True)
    p.add_argument("--aggregator-uuid", required=True)
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
    p.add_argument("--state-dir", type=Path, required=True, help="where best.pbuf and last.pbuf go")
    p.add_argument("--output", type=Path, required=True, help="round-<r>.npz, metrics.json, summary.json")
    p.add_argument(
        "--record-models",
        type=parse_bool,
        default=True,
        help="write round-<r>.npz (default: true; benchmarks turn it off)",
    )
    p.add_argument("--timeout", type=float, default=0, help="exit 3 after this many seconds (0: never)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s oracle %(name)s %(levelname)s: %(message)s",
    )
    start_watchdog(args.timeout, "oracle aggregator", logger)
    tls_files = [args.ca, args.cert, args.key]
    if any(tls_files) and not all(tls_files):
        raise SystemExit("--ca, --cert and --key go together")
    collaborators = [c.strip() for c in args.collaborators.split(",") if c.strip()]
    if not collaborators or args.rounds < 1:
        raise SystemExit("need at least one collaborator and one round")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    args.output.mkdir(parents=True, exist_ok=True)

    init_tensors, init_round = utils.deconstruct_model_proto(
        utils.load_proto(str(args.init_model)), NoCompressionPipeline()
    )
    recorder = RoundRecorder(args.output, list(init_tensors))
    tasks = default_tasks()
    assigner = RandomGroupedAssigner(
        task_groups=[{"name": "learning", "percentage": 1.0, "tasks": list(TASK_NAMES)}],
        tasks=tasks,
        authorized_cols=collaborators,
        rounds_to_train=args.rounds,
    )
    aggregator = Aggregator(
        aggregator_uuid=args.aggregator_uuid,
        federation_uuid=args.federation_uuid,
        authorized_cols=collaborators,
        init_state_path=str(args.init_model),
        best_state_path=str(args.state_dir / "best.pbuf"),
        last_state_path=str(args.state_dir / "last.pbuf"),
        assigner=assigner,
        use_delta_updates=args.use_delta_updates,
        straggler_handling_policy=straggler_policy(args),
        rounds_to_train=args.rounds,
        single_col_cert_common_name=args.single_col_cert_common_name,
        compression_pipeline=NoCompressionPipeline(),
        db_store_rounds=args.db_store_rounds,
        write_logs=False,
        callbacks=[recorder] if args.record_models else [],
    )
    # OpenFL 1.7.1 bug: CallbackList keeps `_flatten(callbacks)`, a generator that its own constructor
    # exhausts, so user callbacks never run. Restore the list it meant to build (no other effect).
    aggregator.callbacks.callbacks = [recorder] if args.record_models else []
    recorder.aggregator = aggregator
    server = LoopbackAggregatorServer(
        aggregator,
        args.port,
        args.host,
        use_tls=args.ca is not None,
        require_client_auth=args.require_client_auth,
        root_certificate=args.ca,
        certificate=args.cert,
        private_key=args.key,
    )

    started = time.monotonic()
    server.serve()  # returns once every collaborator has been sent quit
    elapsed = time.monotonic() - started

    aggregator_metrics, collaborator_metrics = [], []
    while not aggregator.metric_queue.empty():
        entry = aggregator.metric_queue.get_nowait()
        if entry["metric_origin"] == "aggregator":
            aggregator_metrics.append({k: entry[k] for k in METRIC_FIELDS})
        else:
            collaborator_metrics.append(entry)
    # OpenFL's queue order depends on set iteration (hash seed); sort for stable files.
    aggregator_metrics.sort(key=lambda m: (m["round"], m["task_name"], m["metric_name"]))
    collaborator_metrics.sort(
        key=lambda m: (m["round"], m["metric_origin"], m["task_name"], m["metric_name"])
    )
    (args.output / "metrics.json").write_text(json.dumps(aggregator_metrics, indent=1) + "\n")
    (args.output / "collaborator_metrics.json").write_text(json.dumps(collaborator_metrics, indent=1) + "\n")
    best = aggregator.best_model_score
    summary = {
        "port": server.bound_port,
        "federation_uuid": args.federation_uuid,
        "aggregator_uuid": args.aggregator_uuid,
        "collaborators": collaborators,
        "stragglers": straggler_summary(args),
        "rounds_to_train": args.rounds,
        "init_round": init_round,
        "final_round_number": aggregator.round_number,
        "saved_rounds": recorder.saved_rounds,
        "participants": recorder.participants,
        "best_model_score": None if best is None else float(best),
        "elapsed_seconds": round(elapsed, 3),
        "errors": recorder.errors,
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("done: %s", summary)
    return 1 if recorder.errors else 0


if __name__ == "__main__":
    sys.exit(main())
