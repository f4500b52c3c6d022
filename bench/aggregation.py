"""``python -m bench.aggregation``: the aggregator's peak memory with every aggregation method (issue 12's bound).

For each method of the README's Aggregation table, and weighted average with update clipping and with fixed and
adaptive differential privacy, a real ``fedagg serve`` (mTLS, stock limits) runs one round (two for the methods
that keep state between rounds) with 16 collaborators of fedagg's client library in 4 worker processes
(bench/clients.py), each uploading a distinct trained 64 MiB float32 model of 4 tensors, the last named as a FedCurv
Fisher term (``*_u``). The server's memory is read from /proc (bench/procfs.py): its peak RSS over the whole run
(VmHWM, exact), the largest sampled RssAnon and RssFile, the largest RSS sampled before each round end (models
down, results up) and inside it, and its duration. A round end runs, from the collaborators' timestamps, from the
moment the upload that closed the round had its last chunk sent to the call's acknowledgement. The bound is
2 x model + ``limits.aggregation_bytes`` + 200 MB.

``--quick`` is a smoke run (a 1 MiB model, three methods); ``--methods`` picks methods by label. The report goes to
``--out`` (default bench/aggregation.md), every measurement to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.clients import run_federation
from bench.models import MIB, shapes_for, write_init_model
from bench.openfl_cases import phase_at, round_times
from bench.procfs import ProcessWatch
from bench.servers import ROOT, start_fedagg
from fedagg.config.limits import LimitsSettings
from fedagg.federation.plan import default_tasks
from fedagg.pki.federation import write_federation_pki

COLLABORATORS = 16
PROCESSES = 4
TENSORS = 4
SPREAD = 0.5
"""Each trained value is the global one + 1 + SPREAD * N(0, 1): every update differs, its norm about 1.1 sqrt(P)."""
FULL_PARAMS = 16 * MIB  # 64 MiB of float32
QUICK_PARAMS = MIB // 4
QUICK_METHODS = ("weighted_average", "bulyan", "adam")
ALLOWANCE_BYTES = 200 * 10**6
AGGREGATION_BYTES = LimitsSettings().aggregation_bytes


@dataclass(frozen=True)
class Method:
    """One configuration of the train task: its label and its ``federation.tasks.train`` settings."""

    label: str
    train: dict[str, Any]
    rounds: int = 1

    def spelling(self) -> str:
        """The settings as they are written in the configuration (YAML, on one line)."""
        return yaml.safe_dump(self.train, default_flow_style=True, width=10**6).strip()[1:-1]


def methods(params: int) -> tuple[Method, ...]:
    """Every method of the README's Aggregation table; the clipping norm is half of every update's norm."""
    clip = round(0.5 * math.sqrt(params), 1)
    privacy = {"noise_multiplier": 1.0, "clipping_norm": clip}
    return (
        Method("weighted_average", {"aggregation": "weighted_average"}),
        Method("median", {"aggregation": "median"}),
        Method("trimmed_mean", {"aggregation": "trimmed_mean", "aggregation_settings": {"beta": 0.2}}),
        Method("krum", {"aggregation": "krum", "aggregation_settings": {"malicious": 3}}),
        Method(
            "multi_krum", {"aggregation": "multi_krum", "aggregation_settings": {"malicious": 3, "keep": 8}}
        ),
        Method("bulyan", {"aggregation": "bulyan", "aggregation_settings": {"malicious": 3}}),  # N >= 4f + 3
        Method("geometric_median", {"aggregation": "geometric_median"}),
        Method("fedcurv_weighted_average", {"aggregation": "fedcurv_weighted_average"}),
        Method("adagrad", {"aggregation": "adagrad"}, rounds=2),
        Method("adam", {"aggregation": "adam"}, rounds=2),
        Method("yogi", {"aggregation": "yogi"}, rounds=2),
        Method("weighted_average + clipping", {"aggregation": "weighted_average", "clipping_norm": clip}),
        Method("weighted_average + privacy (fixed)", {"aggregation": "weighted_average", "privacy": privacy}),
        Method(
            "weighted_average + privacy (adaptive)",
            {"aggregation": "weighted_average", "privacy": {**privacy, "adaptive": True}},
            rounds=2,
        ),
    )


def model_shapes(params: int) -> dict[str, list[int]]:
    """``params`` float32 values in :data:`TENSORS` tensors; the last is named as a FedCurv Fisher term."""
    shapes = shapes_for(params, TENSORS)
    last = list(shapes)[-1]
    shapes[f"{last}_u"] = shapes.pop(last)
    return shapes


def plan_tasks(train: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """OpenFL's default three tasks, with ``train`` aggregated as configured."""
    return {
        name: {"function": task.function, "kwargs": dict(task.kwargs), **(train if name == "train" else {})}
        for name, task in default_tasks().items()
    }


def round_phases(watch: ProcessWatch, timings: list[list[list[Any]]], rounds: int) -> list[dict[str, float]]:
    """Per round, the server's RSS (sampled) while models went down and results up, and in the round end: from
    the moment the upload that closed the round had its last chunk sent to its acknowledgement (the server spools
    that tail, syncs it and ends the round inside the call), with its duration and the RSS at its start."""
    rss = [(moment, anon + file) for moment, anon, file in watch.timeline]
    phases, previous_end = [], -math.inf
    for number in range(rounds):
        uploads = [c for calls in timings for c in calls if c[0] == "send_results" and c[1] == number]
        closing = max(uploads, key=lambda c: c[3])
        started, ended = closing[4], closing[3]
        before = [value for moment, value in rss if previous_end <= moment < started]
        inside = [value for moment, value in rss if started <= moment <= ended + watch.interval]
        phases.append(
            {
                "end_started": started,
                "end_ended": ended,
                "transfer_peak_rss_mib": max(before, default=math.nan),
                "end_start_rss_mib": before[-1] if before else math.nan,
                "end_peak_rss_mib": max(inside, default=math.nan),
                "end_seconds": ended - started,
            }
        )
        previous_end = ended
    return phases


def peak_phase(moment: float, ends: list[dict[str, float]], timings: list[list[list[Any]]]) -> str:
    """``round N end`` when ``moment`` falls in a round end of :func:`round_phases`, else :func:`phase_at`'s
    (whose round end is the whole closing call: before its last chunk was sent, that call was an upload)."""
    for number, end in enumerate(ends):
        if end["end_started"] <= moment <= end["end_ended"]:
            return f"round {number} end"
    label = phase_at(moment, timings)
    return f"upload ({label.removesuffix(' end')})" if label.endswith(" end") else label


def run_method(method: Method, params: int, work: Path, pki: Path) -> dict[str, Any]:
    """One ``fedagg serve`` run of ``method`` with :data:`COLLABORATORS` collaborators; what it measured."""
    shapes = model_shapes(params)
    init = write_init_model(shapes, work / f"aggregation-init-{params}.pbuf")
    names = [f"col-{index}" for index in range(COLLABORATORS)]
    directory = work / f"{method.label.replace(' ', '').replace('+', '-')}-{time.monotonic_ns()}"
    server = start_fedagg(
        directory, pki, names, init, method.rounds, federation={"tasks": plan_tasks(method.train)}
    )
    try:
        timings = run_federation(
            server, names, shapes, pki, directory / "clients", PROCESSES, spread=SPREAD
        ).calls
    finally:
        shutil.rmtree(directory / "state", ignore_errors=True)  # about 1.2 GiB a round: spool and models
    watch = server.watch
    (directory / "server-memory.json").write_text(json.dumps(watch.timeline))
    ends = round_phases(watch, timings, method.rounds)
    bound = (2 * params * 4 + AGGREGATION_BYTES + ALLOWANCE_BYTES) / MIB
    return {
        "label": method.label,
        "config": method.spelling(),
        "rounds": method.rounds,
        "peak_hwm_mib": watch.peak_hwm,
        "peak_anon_mib": watch.peak_anon,
        "peak_file_mib": watch.peak_file,
        "peak_phase": peak_phase(watch.peak_rss_at, ends, timings),
        "rounds_memory": ends,
        "aggregation_seconds": server.aggregation_seconds(),
        "round_seconds": round_times(timings, method.rounds)[0],
        "cpu_seconds": watch.cpu,
        "bound_mib": bound,
        "within_bound": watch.peak_hwm <= bound,
    }


def log(message: str) -> None:
    print(f"[bench.aggregation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: 1 MiB model, {QUICK_METHODS}")
    parser.add_argument("--methods", help="comma-separated labels (default: all, or the quick ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "aggregation.md", help="markdown report")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--work", type=Path, help="keep the scratch files here (default: a deleted temp dir)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: no server is left behind
    params = QUICK_PARAMS if args.quick else FULL_PARAMS
    every = {method.label: method for method in methods(params)}
    labels = args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else every)
    if unknown := set(labels) - set(every):
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(every)}")
    report: dict[str, Any] = {
        "started": time.time(),
        "load_start": os.getloadavg(),
        "quick": args.quick,
        "model_bytes": params * 4,
        "collaborators": COLLABORATORS,
        "aggregation_bytes": AGGREGATION_BYTES,
        "methods": [],
        "failed": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedagg-bench-aggregation-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        pki = work / "pki"
        names = [f"col-{index}" for index in range(COLLABORATORS)]
        write_federation_pki(pki, names, ["localhost", "127.0.0.1"])
        for label in labels:
            log(f"{label}: {every[label].spelling()}")
            try:
                result = run_method(every[label], params, work, pki)
            except RuntimeError as error:
                report["failed"][label] = str(error).splitlines()[0][:300]
                log(f"  failed: {error}")
                continue
            report["methods"].append(result)
            ends = result["rounds_memory"]
            log(
                f"  peak RSS {result['peak_hwm_mib']:.0f} MiB ({result['peak_phase']}); round ends "
                f"{_each((end['end_seconds'] for end in ends), 1)} s, peak {_each(e['end_peak_rss_mib'] for e in ends)} MiB"
            )
    report["wall_seconds"] = time.monotonic() - started
    report["load_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    text = render(report)
    args.out.write_text(text)
    print(text)
    return 1 if report["failed"] else 0


def _git(*command: str) -> str:
    return subprocess.run(
        ["git", *command], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()


def _each(values: Iterable[float], digits: int = 0) -> str:
    """Per-round values, ``a / b``."""
    return " / ".join(f"{value:.{digits}f}" for value in values)


def render(report: dict[str, Any]) -> str:
    """The markdown report: provenance, then one row per method."""
    import grpc  # noqa: PLC0415 - only for its version

    when = datetime.datetime.fromtimestamp(report["started"], datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    dirty = " (uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    command = " ".join(["python -m bench.aggregation", *sys.argv[1:]])
    model = report["model_bytes"] / MIB
    lines = [
        f"Run of {when}, commit {_git('rev-parse', '--short', 'HEAD')}{dirty}: `{command}` "
        f"({report['wall_seconds'] / 60:.1f} min); {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}; load average (1 min) {report['load_start'][0]:.1f} at the start, "
        f"{report['load_end'][0]:.1f} at the end.",
        "",
    ]
    if report["quick"]:
        lines += ["**Quick smoke run: a tiny model; the numbers only show that the benchmark works.**", ""]
    lines += [
        f"{report['collaborators']} collaborators (fedagg's client library in {PROCESSES} processes, mTLS) each "
        f"upload a distinct trained {model:g} MiB model ({TENSORS} float32 tensors) to `fedagg serve` with stock "
        f"limits (`limits.aggregation_bytes` {report['aggregation_bytes'] / MIB:g} MiB); one round, two for the "
        "methods with state across rounds (values a / b). Peak RSS is the server's VmHWM over the whole run "
        "(downloads, concurrent uploads, round ends); bound: 2 x model + `aggregation_bytes` + 200 MB. The round "
        "end runs from the moment the upload that closed the round had its last chunk sent to its acknowledgement "
        "(collaborators' timestamps: the server syncs that upload and ends the round inside the call), with the "
        "model build the server logs as aggregation. The other RSS figures are sampled every 20 ms from /proc: "
        "the largest in the round end, the one at its start, the largest before it (models down, results up), the "
        "largest RssAnon and RssFile, and when the sampled RSS peaked.",
        "",
        "| method | config (`federation.tasks.train`) | peak RSS, MiB | peak RSS in round end, MiB | bound, MiB "
        "| within bound | round end, s | of which aggregation, s | RSS at round-end start, MiB "
        "| peak RSS before round end, MiB | peak RssAnon, MiB | peak RssFile, MiB | RSS peaked during |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["methods"]:
        ends = run["rounds_memory"]
        lines.append(
            f"| {run['label']} | `{run['config']}` | {run['peak_hwm_mib']:.0f} "
            f"| {_each(end['end_peak_rss_mib'] for end in ends)} | {run['bound_mib']:.0f} "
            f"| {'yes' if run['within_bound'] else 'NO'} | {_each((end['end_seconds'] for end in ends), 1)} "
            f"| {_each(run['aggregation_seconds'], 1)} | {_each(end['end_start_rss_mib'] for end in ends)} "
            f"| {_each(end['transfer_peak_rss_mib'] for end in ends)} | {run['peak_anon_mib']:.0f} "
            f"| {run['peak_file_mib']:.0f} | {run['peak_phase']} |"
        )
    for label, error in report["failed"].items():
        lines.append(f"| {label} | failed: {error} |" + " |" * 11)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
