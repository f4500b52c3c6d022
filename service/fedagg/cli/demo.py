"""``fedagg demo``: a whole federation on this machine, with mTLS, real processes and a live display."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from fedagg.cli.commands import Commands, add_command
from fedagg.cli.formatting import table
from fedagg.collaborator.reference import DatasetSpec, initial_weights
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN, MetricRecord
from fedagg.federation.store import publish_model

if TYPE_CHECKING:
    from fedagg.app import AggregatorProcess
    from fedagg.config.schema import Config
    from fedagg.pki.federation import FederationPki

FEDERATION_UUID = "demo_0123abcd"
VALIDATE_GLOBAL = "aggregated_model_validation"


def register(commands: Commands) -> None:
    """Add the command."""
    parser = add_command(
        commands,
        "demo",
        "train a federation end to end on this machine",
        """\
  fedagg demo
  fedagg demo --collaborators 5 --rounds 10 --features 256 --dir ./demo""",
    )
    parser.add_argument("--collaborators", type=int, default=3, help="collaborator processes (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds to train (default 5)")
    parser.add_argument(
        "--features",
        type=int,
        default=DatasetSpec.features,
        help=f"input features: the model has features x {DatasetSpec.classes} weights",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="working directory (default: a new temporary directory); a directory that holds an earlier demo "
        "is reused: its certificates, state, models and logs are replaced",
    )
    parser.set_defaults(handler=_demo)


class Display:
    """Prints progress lines as metrics arrive (called from the aggregator's threads)."""

    def __init__(self) -> None:
        self._lock = (
            threading.Lock()
        )  # guards aggregated and the terminal; a leaf lock, held only to print a line
        self.aggregated: dict[int, dict[tuple[str, str], float]] = defaultdict(dict)

    def on_metric(self, record: MetricRecord | None) -> None:
        if record is None:
            return
        with self._lock:
            if record.origin == AGGREGATOR_ORIGIN:
                self.aggregated[record.round_number][(record.task, record.name)] = record.value
                if record.task == VALIDATE_GLOBAL:
                    print(
                        f"round {record.round_number}: global model accuracy {record.value:.3f}; aggregated",
                        flush=True,
                    )
            else:
                print(
                    f"round {record.round_number}  {record.origin:<8} {record.task:<32} "
                    f"{record.name} {record.value:.4f}",
                    flush=True,
                )


def _demo(args: argparse.Namespace) -> int:
    from fedagg.app import build_aggregator
    from fedagg.pki.federation import write_federation_pki

    if args.collaborators < 1 or args.rounds < 1 or args.features < 1:
        raise SystemExit("fedagg: --collaborators, --rounds and --features must be positive")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="fedagg-demo-"))
    _prepare(workdir)
    names = [f"site-{index + 1}" for index in range(args.collaborators)]
    print(
        f"fedagg demo in {workdir}: {len(names)} collaborators, {args.rounds} rounds, mutual TLS on loopback"
    )
    pki = write_federation_pki(workdir / "pki", names, ["localhost", "127.0.0.1"])
    spec = DatasetSpec(features=args.features)
    publish_model(workdir / "init.pbuf", initial_weights(spec), 0)
    logging.basicConfig(
        filename=workdir / "aggregator.log",
        level=logging.INFO,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    aggregator = build_aggregator(_config(workdir, names, args.rounds))
    display = Display()
    aggregator.federation.metrics.subscribe(display.on_metric)
    return _run(aggregator, display, pki, names, args, workdir)


DEMO_MARKER = ".fedagg-demo"
DEMO_ENTRIES = ("pki", "state", "init.pbuf", "aggregator.log", "summary.json", DEMO_MARKER)


def _prepare(workdir: Path) -> None:
    """An empty working directory: a new one, an empty one, or one that holds an earlier demo (emptied)."""
    if workdir.exists() and not workdir.is_dir():
        raise SystemExit(f"fedagg: --dir {workdir} is not a directory")
    entries = sorted(workdir.iterdir()) if workdir.is_dir() else []
    foreign = [
        entry.name
        for entry in entries
        if entry.name not in DEMO_ENTRIES and not (entry.name.startswith("site-") and entry.suffix == ".log")
    ]
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SystemExit(
            f"fedagg: --dir {workdir} holds files that are not an earlier demo's ({listed}); "
            "choose a new or empty directory"
        )
    if entries:
        print(f"{workdir} holds an earlier demo: replacing its certificates, state, models and logs")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEMO_MARKER).write_text("a directory made by fedagg demo; fedagg demo --dir reuses it\n")


def _config(workdir: Path, names: list[str], rounds: int) -> Config:
    from fedagg.config.loading import parse_config

    data = {
        "federation": {
            "federation_uuid": FEDERATION_UUID,
            "collaborators": names,
            "rounds_to_train": rounds,
            "initial_model": "init.pbuf",
            "sleep_seconds": 1,
        },
        "server": {"bind_address": "127.0.0.1", "port": 0, "tls": {"certificate_dir": "pki/aggregator"}},
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
            "drain_seconds": 0,
            "grace_seconds": 5,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
        "storage": {"state_dir": "state"},
    }
    return parse_config(data, workdir, environ={})


def _run(
    aggregator: AggregatorProcess,
    display: Display,
    pki: FederationPki,
    names: list[str],
    args: argparse.Namespace,
    workdir: Path,
) -> int:
    runner = AggregatorThread(aggregator)
    started = time.monotonic()
    collaborators: list[subprocess.Popen[bytes]] = []
    try:
        runner.start()
        _wait_until_serving(aggregator, runner)
        print(
            f"aggregator listening on localhost:{aggregator.server.port}; starting collaborators\n",
            flush=True,
        )
        collaborators = [
            _start_collaborator(name, aggregator.server.port, pki, args.features, workdir) for name in names
        ]
        runner.join()
        codes = [process.wait(timeout=60) for process in collaborators]
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the collaborators and the aggregator", flush=True)
        raise
    finally:
        _stop_all(collaborators)
        runner.stop()
    if runner.exit_code != 0 or any(codes):
        print(
            f"the demo failed (aggregator exit {runner.exit_code}, collaborators {codes}); logs in {workdir}"
        )
        return 1
    return _summary(aggregator, display, workdir, time.monotonic() - started)


class AggregatorThread(threading.Thread):
    """Runs the aggregator's event loop in the background; :meth:`stop` drains it and waits."""

    def __init__(self, aggregator: AggregatorProcess) -> None:
        super().__init__(name="fedagg-demo-aggregator")
        self._aggregator = aggregator
        self._loop = asyncio.new_event_loop()
        self._stop_event = asyncio.Event()
        self.exit_code: int | None = None

    def run(self) -> None:
        from fedagg.app import run_aggregator

        try:
            self.exit_code = self._loop.run_until_complete(run_aggregator(self._aggregator, self._stop_event))
        finally:
            self._loop.close()

    def stop(self) -> None:
        """Ask the aggregator to drain (if still running) and wait for the thread."""
        if self.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._stop_event.set)
            self.join()


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(aggregator: AggregatorProcess, runner: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while not aggregator.server.accepting:
        if not runner.is_alive() or time.monotonic() > deadline:
            raise SystemExit("fedagg: the aggregator did not start; see aggregator.log")
        time.sleep(0.05)


def _start_collaborator(
    name: str, port: int, pki: FederationPki, features: int, workdir: Path
) -> subprocess.Popen[bytes]:
    tls = pki.collaborator_dirs[name]
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedagg.cli",
            "collaborator",
            "--name",
            name,
            "--address",
            f"localhost:{port}",
            "--federation-uuid",
            FEDERATION_UUID,
            "--ca",
            str(tls / "ca.crt"),
            "--cert",
            str(tls / "tls.crt"),
            "--key",
            str(tls / "tls.key"),
            "--features",
            str(features),
            "--delta-updates",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _summary(aggregator: AggregatorProcess, display: Display, workdir: Path, seconds: float) -> int:
    rounds = sorted(display.aggregated)
    rows = []
    accuracy = []
    for number in rounds:
        values = display.aggregated[number]
        accuracy.append(values.get((VALIDATE_GLOBAL, "acc"), float("nan")))
        rows.append(
            [
                str(number),
                f"{accuracy[-1]:.3f}",
                f"{values.get(('locally_tuned_model_validation', 'acc'), float('nan')):.3f}",
                f"{values.get(('train', 'loss'), float('nan')):.4f}",
            ]
        )
    config = aggregator.config
    print(f"\nfinished {len(rounds)} rounds in {seconds:.1f}s\n")
    print(table(rows, ["round", "global model accuracy", "locally tuned accuracy", "train loss"]))
    rose = len(accuracy) < 2 or accuracy[-1] > accuracy[0]
    if len(accuracy) < 2:
        print(f"\naccuracy of the global model in round 0: {accuracy[0]:.3f} (one round: nothing to compare)")
    else:
        print(
            f"\naccuracy of the global model rose from {accuracy[0]:.3f} (round 0) to {accuracy[-1]:.3f} "
            f"(round {rounds[-1]})"
            if rose
            else "\naccuracy did not rise"
        )
    print(
        f"\nmodels (OpenFL .pbuf):\n  last: {config.last_model_path}  (round {rounds[-1] + 1}, the final aggregate)"
        f"\n  best: {config.best_model_path}"
    )
    print(f"inspect: fedagg model show {config.last_model_path}")
    print(f"logs:    {workdir}/aggregator.log and {workdir}/site-*.log")
    summary = {
        "rounds": rounds,
        "accuracy": accuracy,
        "seconds": seconds,
        "last_model": str(config.last_model_path),
        "best_model": str(config.best_model_path),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if rose else 1
