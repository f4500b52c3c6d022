"""Run OpenFL's own ``Aggregator`` + ``AggregatorGRPCServer`` (1.7.1, 1.8 or 1.9) as the reference oracle.

Runs only with an OpenFL venv's python (``scripts/openfl-venv [VERSION]``); fedagg never imports openfl.

Two ways to describe the federation:

* ``--plan PLAN --cols COLS`` (any version; run it in the workspace directory, since the plan's paths are
  relative): ``Plan.parse(PLAN, COLS)`` and ``plan.get_aggregator()``, as ``fx aggregator start`` builds
  them, with the recording callback added to ``aggregator.settings.callbacks``. The uuids, collaborators,
  rounds, tasks, assigner, straggler policy and model paths (``init_state_path``, ``best_state_path``,
  ``last_state_path``; 1.9's ``persistent_db_path``) are the plan's; ``--collaborators``, ``--rounds``,
  ``--init-model``, the uuids, ``--state-dir`` and the straggler options must not be given. The server's
  certificate files are still ``--ca``/``--cert``/``--key`` and it binds ``--host:--port`` (give the
  plan's ``agg_port`` for its collaborators to find it).
* Otherwise the options below describe the federation.

Without ``--plan`` the federation is what ``Plan.get_server()`` would build from the default plan (spec
§3.5): ``RandomGroupedAssigner`` with one task group ``learning`` (100 %) running
``aggregated_model_validation``, ``train``, ``locally_tuned_model_validation``, each aggregated with
``WeightedAverage``; the straggler handling policy (below); ``NoCompressionPipeline``;
``db_store_rounds=2`` (plan default) and ``use_delta_updates=True`` (constructor default); with 1.8/1.9
also the default plan's persistent tensor database (``persist_checkpoint``), kept in
``--state-dir``/tensor.db.

OpenFL's code runs unmodified apart from three things (and ``--sleep-time``, if given, which replaces the 10 s
that ``Aggregator._get_sleep_time()`` tells idle collaborators to sleep; the tests use 1 s, as they configure
fedagg, since it only changes how long a round takes): a server subclass that binds ``--host`` (127.0.0.1)
instead of ``[::]`` and reports the bound port, so ``--port 0`` works; with 1.8/1.9 that server's ``serve()``
polls for the end every 0.2 s instead of 5 s (it repeats OpenFL's own otherwise: the same executor, channel
options and dynamic TLS credentials); and with 1.7.1 the recording callback is put back into
``aggregator.callbacks.callbacks``, because 1.7.1's ``CallbackList`` silently drops user callbacks (its
``_flatten`` generator is exhausted in its own constructor; 1.8 fixed that).

Straggler handling, passed to ``Aggregator`` as ``Plan.get_aggregator()`` does with the plan's
``straggler_handling_policy`` section: with 1.7.1 an instance from
``openfl.component.straggler_handling_functions``; with 1.8/1.9 a factory of
``openfl.component.aggregator.straggler_handling``'s ``WaitForAllPolicy`` (cutoff ``inf``, the default),
``CutoffTimePolicy`` or ``PercentagePolicy`` with the same settings:

* ``--straggler-policy cutoff_time`` (default): ``CutoffTimeBasedStragglerHandling(
  straggler_cutoff_time=--straggler-cutoff-time, minimum_reporting=--minimum-reporting)``; with the
  default cutoff ``inf`` that is OpenFL's default policy, wait for every collaborator.
* ``--straggler-policy percentage``: ``PercentageBasedStragglerHandling(
  percent_collaborators_needed=--percent-collaborators-needed, minimum_reporting=--minimum-reporting)``.
  The round ends inside the ``SendLocalTaskResults`` call that makes ``done >= percent * len(authorized)``
  and ``done >= minimum``, where a collaborator is *done* once all its tasks of the round are in; the
  others become stragglers, and their results of that round, already received or not, are left out.

Once the port is bound and listening, stdout gets the line ``PORT=<n>`` (flushed). ``serve()`` returns,
and this script exits 0, after every collaborator has been sent its quit job (OpenFL 1.7.1 polls that
every 5 s); it exits 1 instead if a per-round model could not be recorded (see ``summary.json``).
``--timeout`` exits with status 3 instead of waiting forever.

Files:

* ``--state-dir`` (the plan's paths with ``--plan``): ``best.pbuf`` and ``last.pbuf`` as OpenFL writes
  them. ``last.pbuf`` holds the model that *started* the last round (round_number R-1), never the final
  aggregate.
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
    ``collaborators_done`` and ``stragglers`` as the round ended), best score, elapsed seconds, any
    callback errors, and ``uploads``: every ``SendLocalTaskResults`` as it reached the Aggregator
    (``{"collaborator", "round", "task", "data_size", "tensors": [{"name", "tags", "lossless"}]}``).

Timing: with two or more collaborators and the default policy most rounds last about 10 s, because OpenFL
answers a collaborator that finished before the others with ``sleep_time=10`` (1.9 too); with 1.7.1 the end
adds up to 5 s of ``serve()`` polling. Three rounds with two collaborators took 25-37 s here. A percentage
policy that ends a round with the first collaborator done avoids that sleep: the next round has begun by the
time that collaborator asks for its tasks again.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import cpu_count
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from openfl.callbacks import Callback
from openfl.component.aggregator.aggregator import Aggregator
from openfl.component.assigner.random_grouped_assigner import RandomGroupedAssigner
from openfl.federated import Plan
from openfl.interface.aggregation_functions import WeightedAverage
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import aggregator_pb2_grpc, utils
from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer
from openfl.utilities import TensorKey
from watchdog import start_watchdog  # a sibling module: the script directory is on sys.path

try:  # OpenFL 1.7.1
    from openfl.component.straggler_handling_functions import (
        CutoffTimeBasedStragglerHandling,
        PercentageBasedStragglerHandling,
    )
    from openfl.transport.grpc.grpc_channel_options import channel_options

    LEGACY = True
except ImportError:  # OpenFL 1.8 and 1.9
    from openfl.component.aggregator.straggler_handling import (
        CutoffTimePolicy,
        PercentagePolicy,
        WaitForAllPolicy,
    )
    from openfl.transport.grpc.common import DEFAULT_CHANNEL_OPTIONS

    channel_options = DEFAULT_CHANNEL_OPTIONS
    LEGACY = False

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

    With 1.7.1, ``get_server`` repeats OpenFL's own (executor, channel options, servicer, credentials) and
    OpenFL's ``serve()`` calls it; it only changes the bind address and keeps the port that ``add_*_port``
    returns. 1.8/1.9 build the server inside ``serve()`` (``transport.grpc.common.create_grpc_server``), so
    ``serve()`` is repeated here, with the same executor, options and dynamic TLS credentials.
    """

    def __init__(self, aggregator: Aggregator, agg_port: int, host: str, **kwargs: Any) -> None:
        super().__init__(aggregator, agg_port, **kwargs)
        self.uri = f"{host}:{agg_port}"
        self.bound_port: int | None = None

    def _bound(self, port: int) -> None:
        if port == 0:
            raise RuntimeError(f"could not bind {self.uri}")
        self.bound_port = port
        # The socket is bound and listening from here on; the server is started right after.
        print(f"PORT={port}", flush=True)

    def get_server(self) -> grpc.Server:
        """OpenFL 1.7.1's ``get_server``, on ``self.uri``."""
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
        self._bound(port)
        return self.server

    def serve(self) -> None:
        if LEGACY:
            super().serve()
            return
        # OpenFL 1.8/1.9's serve() and create_grpc_server(), on self.uri, without Flower interop.
        server = grpc.server(ThreadPoolExecutor(max_workers=8), options=channel_options)
        if not self.use_tls:
            port = server.add_insecure_port(self.uri)
        else:
            pair = ((Path(self.private_key).read_bytes(), Path(self.certificate).read_bytes()),)
            root = Path(self.root_certificate).read_bytes()
            config = grpc.ssl_server_certificate_configuration(pair, root_certificates=root)
            credentials = grpc.dynamic_ssl_server_credentials(
                config,
                lambda: grpc.ssl_server_certificate_configuration(pair, root_certificates=root),
                require_client_authentication=self.require_client_auth,
            )
            port = server.add_secure_port(self.uri, credentials)
        aggregator_pb2_grpc.add_AggregatorServicer_to_server(self, server)
        self._bound(port)
        server.start()
        while not self.aggregator.all_quit_jobs_sent():
            time.sleep(0.2)
        server.stop(0)


def parse_bool(text: str) -> bool:
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


STRAGGLER_POLICIES = ("cutoff_time", "percentage")


def straggler_policy(args: argparse.Namespace) -> Any:
    """What ``Plan.get_straggler_handling_policy()`` would build from the arguments.

    1.7.1: a policy instance. 1.8/1.9: a factory (the Aggregator calls it), as their plans build it.
    """
    if LEGACY:
        if args.straggler_policy == "percentage":
            return PercentageBasedStragglerHandling(
                percent_collaborators_needed=args.percent_collaborators_needed,
                minimum_reporting=args.minimum_reporting,
            )
        return CutoffTimeBasedStragglerHandling(
            straggler_cutoff_time=args.straggler_cutoff_time, minimum_reporting=args.minimum_reporting
        )
    factory: Callable[..., Any]
    if args.straggler_policy == "percentage":
        factory = functools.partial(
            PercentagePolicy,
            percent_collaborators_needed=args.percent_collaborators_needed,
            minimum_reporting=args.minimum_reporting,
        )
    elif np.isinf(args.straggler_cutoff_time):
        factory = WaitForAllPolicy
    else:
        factory = functools.partial(
            CutoffTimePolicy,
            straggler_cutoff_time=args.straggler_cutoff_time,
            minimum_reporting=args.minimum_reporting,
        )
    return factory


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


def model_names(init_model: Path) -> tuple[list[str], int]:
    """The tensor names and round of an initial ModelProto."""
    tensors, round_number = utils.deconstruct_model_proto(
        utils.load_proto(str(init_model)), NoCompressionPipeline()
    )
    return list(tensors), round_number


def aggregator_from_arguments(args: argparse.Namespace, callbacks: list[Callback]) -> Aggregator:
    """The Aggregator the options describe (see the module docstring)."""
    collaborators = [c.strip() for c in args.collaborators.split(",") if c.strip()]
    if not collaborators or args.rounds < 1:
        raise SystemExit("need at least one collaborator and one round")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    tasks = default_tasks()
    assigner = RandomGroupedAssigner(
        task_groups=[{"name": "learning", "percentage": 1.0, "tasks": list(TASK_NAMES)}],
        tasks=tasks,
        authorized_cols=collaborators,
        rounds_to_train=args.rounds,
    )
    extra: dict[str, Any] = {}
    if "persist_checkpoint" in inspect.signature(Aggregator.__init__).parameters:  # 1.8, 1.9
        extra["persistent_db_path"] = str(args.state_dir / "tensor.db")
    return Aggregator(
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
        callbacks=callbacks,
        **extra,
    )


def record_uploads(aggregator: Aggregator) -> list[dict[str, Any]]:
    """Note what each upload carried (``summary.json``'s ``uploads``) before OpenFL processes it unchanged."""
    uploads: list[dict[str, Any]] = []
    process = aggregator.send_local_task_results

    def recording(
        collaborator_name: str, round_number: int, task_name: str, data_size: int, named_tensors: Any
    ) -> Any:
        uploads.append(
            {
                "collaborator": collaborator_name,
                "round": round_number,
                "task": task_name,
                "data_size": data_size,
                "tensors": [
                    {"name": t.name, "tags": list(t.tags), "lossless": t.lossless} for t in named_tensors
                ],
            }
        )
        return process(collaborator_name, round_number, task_name, data_size, named_tensors)

    aggregator.send_local_task_results = recording
    return uploads


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s oracle %(name)s %(levelname)s: %(message)s",
    )
    start_watchdog(args.timeout, "oracle aggregator", logger)
    if args.sleep_time is not None:
        # Only the scheduling hint for idle collaborators (OpenFL hard-codes 10 s); no effect on results.
        Aggregator._get_sleep_time = staticmethod(lambda: args.sleep_time)
    tls_files = [args.ca, args.cert, args.key]
    if any(tls_files) and not all(tls_files):
        raise SystemExit("--ca, --cert and --key go together")
    args.output.mkdir(parents=True, exist_ok=True)

    plan = None
    if args.plan is not None:
        plan = Plan.parse(plan_config_path=args.plan, cols_config_path=args.cols, resolve=True)
        settings = plan.config["aggregator"]["settings"]
        init_model = Path(settings["init_state_path"])
    else:
        init_model = args.init_model
    names, init_round = model_names(init_model)
    recorder = RoundRecorder(args.output, names)
    callbacks: list[Callback] = [recorder] if args.record_models else []
    if plan is not None:
        settings["callbacks"] = callbacks  # Plan.build passes the settings to Aggregator(**settings)
        aggregator = plan.get_aggregator()
        identity = {
            "federation_uuid": plan.federation_uuid,
            "aggregator_uuid": plan.aggregator_uuid,
            "collaborators": list(plan.authorized_cols),
            "stragglers": plan.config.get("straggler_handling_policy"),
            "rounds_to_train": plan.rounds_to_train,
        }
    else:
        aggregator = aggregator_from_arguments(args, callbacks)
        identity = {
            "federation_uuid": args.federation_uuid,
            "aggregator_uuid": args.aggregator_uuid,
            "collaborators": list(aggregator.authorized_cols),
            "stragglers": straggler_summary(args),
            "rounds_to_train": args.rounds,
        }
    if LEGACY:
        # OpenFL 1.7.1 bug: CallbackList keeps `_flatten(callbacks)`, a generator that its own constructor
        # exhausts, so user callbacks never run. Restore the list it meant to build (no other effect).
        aggregator.callbacks.callbacks = callbacks
    recorder.aggregator = aggregator
    uploads = record_uploads(aggregator)
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
        **identity,
        "init_round": init_round,
        "final_round_number": aggregator.round_number,
        "saved_rounds": recorder.saved_rounds,
        "participants": recorder.participants,
        "best_model_score": None if best is None else float(best),
        "elapsed_seconds": round(elapsed, 3),
        "errors": recorder.errors,
        "uploads": uploads,
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("done: %s", summary)
    return 1 if recorder.errors else 0


if __name__ == "__main__":
    sys.exit(main())
