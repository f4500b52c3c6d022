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
``WeightedAverage`` (``train`` with ``--train-aggregation``'s function if given); the straggler handling policy (below); ``NoCompressionPipeline``;
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

import json
import logging
import sys
import time
from pathlib import Path

from openfl.callbacks import Callback
from openfl.component.aggregator.aggregator import Aggregator
from openfl.federated import Plan
from openfl_versions import LEGACY
from oracle_federation import aggregator_from_arguments, model_names, straggler_summary
from oracle_options import build_parser, check_arguments
from oracle_recording import RoundRecorder, record_uploads
from oracle_server import LoopbackAggregatorServer
from watchdog import start_watchdog  # sibling modules: the script directory is on sys.path

logger = logging.getLogger("openfl_side.oracle")

METRIC_FIELDS = ("round", "task_name", "metric_name", "metric_value")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
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
