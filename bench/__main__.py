"""``python -m bench``: fedagg and OpenFL 1.7.1's aggregator side by side, in one run, on this machine.

Sections (``--sections``, default all):

* ``openfl``: real OpenFL 1.7.1 collaborator processes against OpenFL's own aggregator, ``fedagg serve`` and
  the null server (bench/null_server.py: the least any OpenFL-protocol server must do, the floor)
  (bench/openfl_cases.py): round time, server peak memory and CPU; fedagg / null and OpenFL / null.
* ``wire``: the physical reference, a raw gRPC stream of 2 MiB chunks to a trivial server (plaintext and mTLS),
  and fedagg's round throughput with its own client library, 2 N model bytes / round time (bench/wire.py).
* ``scale``: N light collaborators (fedagg's client, threads in a few processes, 4 MiB model) against both
  servers, and GetTasks calls/s under 100 concurrent clients (bench/scale.py).
* ``phases``: the server-only phases with pre-built uploads (bench/phases.py).

Runs of the servers are interleaved (fedagg, null, OpenFL, fedagg, ..., each case starting with the next
server), because the machine is shared. ``--quick`` is a smoke run (well under a minute of work, small models, no
OpenFL scale sweep) that only shows the benchmark runs; its numbers mean little. The report goes to ``--out``
(default bench/results.md), and with ``--json`` every measurement to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from bench import openfl_cases, phases, scale, wire
from bench.models import MIB
from bench.openfl_cases import Case, RunResult
from bench.servers import ROOT, openfl_python
from fedagg.pki.federation import write_federation_pki

SECTIONS = ("openfl", "wire", "scale", "phases")
NULL_SERVERS = ("fedagg", "null", "openfl")
"""The servers of the OpenFL cases, in the order their runs interleave."""
FLOOR_RATIO_TARGET = 1.15
"""fedagg's round time over the null server's (median of the interleaved sets)."""
FLOOR_CPU_TARGET = 2.0
"""fedagg's server CPU per round over the null server's."""
THROUGHPUT_TARGET = 0.5
RSS_ALLOWANCE_BYTES = 200 * 10**6


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    cases: tuple[Case, ...]
    repeats: dict[str, int]
    raw_bytes: int
    wire_runs: tuple[tuple[int, int, int], ...]  # (collaborators, params, rounds)
    scale_ns: tuple[int, ...]
    scale_openfl_ns: tuple[int, ...]
    scale_params: int
    scale_rounds: int
    poll_clients: int
    poll_seconds: float
    phase_sizes: tuple[int, ...]
    polls: int


FULL = Plan(
    cases=(
        Case("a", 10_000_000, 2, rounds=4),
        Case("b", 50_000_000, 4, rounds=2),
        Case("c", 100_000_000, 2, rounds=2),
    ),
    repeats={"a": 2, "b": 1, "c": 1},
    raw_bytes=1 << 30,
    wire_runs=((2, 100_000_000, 2), (4, 50_000_000, 2)),
    scale_ns=(2, 8, 32, 64, 128),
    scale_openfl_ns=(2, 8, 32, 64, 128),
    scale_params=1 << 20,
    scale_rounds=2,
    poll_clients=100,
    poll_seconds=5.0,
    phase_sizes=(128,),
    polls=250,
)
QUICK = Plan(
    cases=(Case("a", 1_000_000, 1, rounds=1),),
    repeats={"a": 1},
    raw_bytes=64 * MIB,
    wire_runs=((2, 1_000_000, 2),),
    scale_ns=(2, 8),
    scale_openfl_ns=(),
    scale_params=1 << 18,
    scale_rounds=1,
    poll_clients=10,
    poll_seconds=1.0,
    phase_sizes=(),
    polls=20,
)


@dataclass
class Report:
    """Everything measured, for the markdown report and the JSON file."""

    started: float = field(default_factory=time.time)
    load_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    load_end: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    cases: dict[str, dict[str, list[RunResult]]] = field(default_factory=dict)
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    wire: list[dict[str, Any]] = field(default_factory=list)
    scale: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    polls: dict[str, dict[str, float]] = field(default_factory=dict)
    phases: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "wall_seconds": self.wall_seconds,
            "cases": {
                key: {server: [run.to_json() for run in runs] for server, runs in servers.items()}
                for key, servers in self.cases.items()
            },
            "raw": self.raw,
            "wire": self.wire,
            "scale": self.scale,
            "polls": self.polls,
            "phases": {str(size): results for size, results in self.phases.items()},
            "skipped": self.skipped,
        }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def interleaved(servers: tuple[str, ...], first: int, count: int) -> list[str]:
    """``count`` sets of one run of each server, each set in the same order, starting with ``servers[first]``."""
    rotated = servers[first % len(servers) :] + servers[: first % len(servers)]
    return list(rotated) * count


def run_openfl_cases(plan: Plan, report: Report, work: Path, pki: Path, python: Path | None) -> None:
    for index, case in enumerate(plan.cases):
        report.cases[case.key] = {server: [] for server in NULL_SERVERS}
        order = interleaved(NULL_SERVERS, index, plan.repeats[case.key])
        for server in order:
            if server == "openfl" and python is None:
                continue
            log(f"case ({case.key}) {case.describe()}: {server}")
            try:
                result = openfl_cases.run_case(server, case, work, pki, python or Path(sys.executable))
            except RuntimeError as error:
                report.skipped.append(f"case ({case.key}) {server}: {str(error).splitlines()[0][:300]}")
                log(f"  failed: {error}")
                continue
            log(
                f"  rounds {[round(s, 2) for s in result.round_seconds]} s, peak RSS {result.peak_hwm_mib:.0f} MiB"
            )
            report.cases[case.key][server].append(result)


def run_wire(plan: Plan, report: Report, work: Path, pki: Path) -> None:
    for label, tls in (("plaintext", None), ("mTLS", pki)):
        runs = []
        for _ in range(2):
            runs.append(wire.raw_stream(tls, plan.raw_bytes))
        best = max(runs, key=lambda run: run["bytes_per_second"])
        report.raw[f"{label}, 1 stream"] = {**best, "runs": [r["bytes_per_second"] for r in runs]}
        log(f"raw stream {label}: {best['bytes_per_second'] / 1e6:.0f} MB/s")
    for collaborators, _params, _rounds in plan.wire_runs:
        key = f"mTLS, {collaborators} streams"
        if collaborators > 1 and key not in report.raw:
            run = wire.raw_stream(pki, plan.raw_bytes // collaborators, collaborators)
            report.raw[key] = run
            log(f"raw stream {key}: {run['bytes_per_second'] / 1e6:.0f} MB/s")
    for collaborators, params, rounds in plan.wire_runs:
        result = wire.fedagg_rounds(collaborators, params, rounds, work, pki)
        report.wire.append(result)
        log(
            f"fedagg client {collaborators} x {params * 4 / MIB:.0f} MiB: {result['bytes_per_second'] / 1e6:.0f} MB/s"
        )


def run_scale(plan: Plan, report: Report, work: Path, pki: Path, python: Path | None) -> None:
    report.scale = {"fedagg": [], "openfl": []}
    for n in plan.scale_ns:
        servers = ["fedagg", "openfl"] if n in plan.scale_openfl_ns and python is not None else ["fedagg"]
        for server in servers:
            log(f"scale: {n} collaborators, {server}")
            try:
                result = scale.run_rounds(
                    server, n, plan.scale_params, plan.scale_rounds, work, pki, python or Path(sys.executable)
                )
            except RuntimeError as error:
                report.skipped.append(f"scale {server} N={n}: {str(error).splitlines()[0][:200]}")
                log(f"  failed: {error}")
                continue
            report.scale[server].append(result.to_json())
    for server in ("fedagg", "openfl"):
        if server == "openfl" and python is None:
            continue
        log(f"GetTasks: {plan.poll_clients} clients, {server}")
        report.polls[server] = scale.run_polls(
            server, plan.poll_clients, plan.poll_seconds, work, pki, python or Path(sys.executable)
        )


def run_phases(plan: Plan, report: Report, work: Path, pki: Path, python: Path | None) -> None:
    names = [f"col-{index}" for index in range(4)]
    for size in plan.phase_sizes:
        report.phases[size] = {}
        for server in ("fedagg", "openfl"):
            if server == "openfl" and python is None:
                continue
            log(f"phases: {size} MiB, {server}")
            report.phases[size][server] = phases.run_phases(
                server, size, names, plan.polls, work, pki, python or Path(sys.executable)
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small models, a few seconds each")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md", help="markdown report")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--work", type=Path, help="keep the scratch files here (default: a deleted temp dir)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: no server is left behind
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    plan = QUICK if args.quick else FULL
    python = openfl_python()
    report = Report()
    if python is None:
        report.skipped.append(
            "OpenFL 1.7.1 venv unavailable (scripts/openfl-venv failed): OpenFL runs skipped"
        )
    started = time.monotonic()
    steps: dict[str, Callable[[Path, Path], None]] = {
        "openfl": lambda work, pki: run_openfl_cases(plan, report, work, pki, python),
        "wire": lambda work, pki: run_wire(plan, report, work, pki),
        "scale": lambda work, pki: run_scale(plan, report, work, pki, python),
        "phases": lambda work, pki: run_phases(plan, report, work, pki, python),
    }
    with tempfile.TemporaryDirectory(prefix="fedagg-bench-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        pki = work / "pki"
        count = max([plan.poll_clients, *plan.scale_ns, *(c.collaborators for c in plan.cases), 4])
        write_federation_pki(pki, [f"col-{index}" for index in range(count)], ["localhost", "127.0.0.1"])
        for section in sections:
            steps[section](work, pki)
    report.wall_seconds = time.monotonic() - started
    report.load_end = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    text = render(report, plan, sections, args)
    args.out.write_text(text)
    print(text)
    return 0


# ---- report ------------------------------------------------------------------------------------------------


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        int(line.split()[1]) / 2**20
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import grpc  # noqa: PLC0415 - only for its version

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__} (fedagg), OpenFL 1.7.1 in .venv-openfl"
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"  # NaN: not measured


def _rounds(runs: list[RunResult]) -> str:
    return "; ".join(" / ".join(f"{s:.1f}" for s in run.round_seconds) for run in runs)


def render(report: Report, plan: Plan, sections: list[str], args: argparse.Namespace) -> str:
    when = datetime.datetime.fromtimestamp(report.started, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = " (uncommitted changes)" if _run(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    command = "python -m bench" + (
        "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]) if sys.argv[1:] else ""
    )
    lines = [
        f"Benchmark of {when}, commit {commit}{dirty}: `{command}` ({report.wall_seconds / 60:.1f} min)",
        "",
        f"Machine: {machine()}. Load average (1 min) {report.load_start[0]:.1f} at the start, "
        f"{report.load_end[0]:.1f} at the end: the machine was shared, so the servers' runs are interleaved.",
        "",
    ]
    if args.quick:
        lines += ["**Quick smoke run: tiny models; the numbers only show that the benchmark works.**", ""]
    if "openfl" in sections:
        lines += _render_cases(report, plan)
    if "wire" in sections:
        lines += _render_wire(report)
    if "scale" in sections:
        lines += _render_scale(report, plan)
    if "phases" in sections and report.phases:
        lines += _render_phases(report)
    for note in report.skipped:
        lines.append(f"- skipped: {note}")
    return "\n".join(lines).rstrip() + "\n"


def _render_cases(report: Report, plan: Plan) -> list[str]:
    lines = [
        "### 1. Real OpenFL 1.7.1 collaborators: fedagg and OpenFL 1.7.1's aggregator against the null server",
        "",
        "The null server (bench/null_server.py) is the floor: the least any OpenFL-protocol server must do. It "
        "answers GetTasks per the default plan's assigner, serves the initial model's tensors (mapped once, kept "
        "resident) with fedagg's reply functions, byte-identical to OpenFL's replies, reads the header of each "
        "upload and discards the rest; no aggregation, no disk. The target is fedagg / null, not OpenFL.",
        "",
        "Each collaborator is its own process running OpenFL's `Collaborator` and gRPC client with the default "
        "plan's three tasks, delta updates and a deterministic numpy runner (bench/openfl_collaborator.py); mTLS; "
        "a model of 8 float32 tensors. fedagg and OpenFL run stock: OpenFL tells an early finisher to sleep 10 s, "
        "fedagg holds its GetTasks until the next round starts (long poll). Round time: from the end of the "
        "round before (for round 0, the first GetTasks call) to the acknowledgement of the round's last upload, "
        "from the collaborators' own timestamps; it includes the collaborators' work, identical for both. "
        "Server memory is sampled from /proc every 20 ms (VmHWM is the kernel's exact peak); CPU is the "
        "server's user + system time from listening to exit.",
        "",
        "| case | server | runs | round times, s | mean round, s | server CPU, s | peak RSS (VmHWM), MiB "
        "| peak RssAnon, MiB | peak RssFile, MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = [
        "",
        "The floor: each server's round time and server CPU per round over the null server's, per interleaved "
        "set (median, and the range when there are several sets).",
        "",
        "| case | fedagg / null round time | OpenFL / null round time | server CPU-s per round: null, fedagg, "
        f"OpenFL | fedagg / null CPU | target: time <= {FLOOR_RATIO_TARGET:g}, CPU <= {FLOOR_CPU_TARGET:g}x "
        "| fedagg peak RSS / model | 2 x model + 200 MB, MiB | fedagg peak RSS, MiB | RSS target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    phases_lines = [
        "",
        "When the server's memory peaked (what the collaborators were doing at the sampled maximum):",
        "",
        "| case | server | VmRSS peak | RssAnon peak | RssFile peak | round end (closing call), s "
        "| of which aggregation, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in plan.cases:
        servers = report.cases.get(case.key)
        if not servers:
            continue
        for server in NULL_SERVERS:
            runs = servers[server]
            if not runs:
                continue
            lines.append(
                f"| ({case.key}) {case.describe()} | {server} | {len(runs)} | {_rounds(runs)} "
                f"| {_fmt(_mean([r.mean_round for r in runs]))} | {_fmt(_mean([r.cpu_seconds for r in runs]), 1)} "
                f"| {_fmt(max(r.peak_hwm_mib for r in runs), 0)} | {_fmt(max(r.peak_anon_mib for r in runs), 0)} "
                f"| {_fmt(max(r.peak_file_mib for r in runs), 0)} |"
            )
            worst = max(runs, key=lambda r: r.peak_hwm_mib)
            aggregation = " / ".join(f"{s:.1f}" for s in worst.aggregation_seconds) or "-"
            closing = " / ".join(f"{s:.1f}" for s in worst.closing_seconds) or "-"
            phases_lines.append(
                f"| ({case.key}) | {server} | {worst.peak_phases.get('rss', '-')} "
                f"| {worst.peak_phases.get('anon', '-')} | {worst.peak_phases.get('file', '-')} | {closing} "
                f"| {aggregation} |"
            )
        ours, floor = servers["fedagg"], servers["null"]
        model_mib = case.model_bytes / MIB
        allowed = (2 * case.model_bytes + RSS_ALLOWANCE_BYTES) / MIB
        peak = max((r.peak_hwm_mib for r in ours), default=float("nan"))
        time_ratios = _over_floor(ours, floor, lambda r: r.mean_round)
        cpu_ratios = _over_floor(ours, floor, _cpu_per_round)
        floor_target = "-"
        if case.key in "ab" and time_ratios and cpu_ratios:
            met = median(time_ratios) <= FLOOR_RATIO_TARGET and median(cpu_ratios) <= FLOOR_CPU_TARGET
            floor_target = "met" if met else "NOT met"
        cpu = ", ".join(
            _fmt(_mean([_cpu_per_round(r) for r in servers[s]])) for s in ("null", "fedagg", "openfl")
        )
        rss_target = f"{'met' if peak <= allowed else 'NOT met'}" if case.key in "bc" else "-"
        summary.append(
            f"| ({case.key}) | {_spread(time_ratios)} "
            f"| {_spread(_over_floor(servers['openfl'], floor, lambda r: r.mean_round))} | {cpu} "
            f"| {_spread(cpu_ratios)} | {floor_target} | {_fmt(peak / model_mib)}x "
            f"| {allowed:.0f} | {_fmt(peak, 0)} | {rss_target} |"
        )
    return [*lines, *summary, *phases_lines, ""]


def _cpu_per_round(run: RunResult) -> float:
    return run.cpu_seconds / len(run.round_seconds)


def _over_floor(
    runs: list[RunResult], floor: list[RunResult], measure: Callable[[RunResult], float]
) -> list[float]:
    """``measure`` of each run over that of the null server's run of the same interleaved set."""
    return [measure(run) / measure(base) for run, base in zip(runs, floor, strict=False)]


def _spread(ratios: list[float]) -> str:
    """The median ratio, and the range when there are several."""
    if not ratios:
        return "-"
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}"
    return f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _render_wire(report: Report) -> list[str]:
    lines = [
        "### 2. The physical reference: raw gRPC stream vs fedagg's round throughput",
        "",
        "Raw: a client process streams 2 MiB messages (built once) to a trivial grpcio server process that drops "
        "them (bench/raw_stream.py); best of two runs. fedagg: `fedagg serve` (mTLS, stock) with N collaborator "
        "processes of fedagg's client library (`fedagg.collaborator.Collaborator`, full model down and up every "
        "round); throughput = 2 N model bytes / mean round time.",
        "",
        "| stream | MB/s |",
        "|---|---|",
    ]
    for label, run in report.raw.items():
        lines.append(f"| raw gRPC, {label} | {run['bytes_per_second'] / 1e6:.0f} |")
    reference = report.raw.get("mTLS, 1 stream", {}).get("bytes_per_second", float("nan"))
    lines += [
        "",
        "| fedagg round | round times, s | MB/s (2 N model / round) | / raw mTLS 1 stream | target >= 0.5 "
        "| server CPU, s | peak RSS, MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report.wire:
        ratio = run["bytes_per_second"] / reference
        rounds = " / ".join(f"{s:.2f}" for s in run["round_seconds"])
        lines.append(
            f"| {run['collaborators']} x {run['model_bytes'] / MIB:.0f} MiB | {rounds} "
            f"| {run['bytes_per_second'] / 1e6:.0f} | {_fmt(ratio)} "
            f"| {'met' if ratio >= THROUGHPUT_TARGET else 'NOT met'} | {run['cpu_seconds']:.1f} "
            f"| {run['peak_hwm_mib']:.0f} |"
        )
    return [*lines, ""]


def _render_scale(report: Report, plan: Plan) -> list[str]:
    model = plan.scale_params * 4 / MIB
    lines = [
        f"### 3. Scale in N: light collaborators, {model:g} MiB model",
        "",
        f"fedagg's client library, N collaborators as threads in {scale.PROCESSES} processes, mTLS, "
        f"{plan.scale_rounds} round(s); the client sleeps what the server says (OpenFL: 10 s). Round time as in 1.",
        "",
        "| N | fedagg mean round, s | fedagg peak RSS, MiB | fedagg CPU, s | OpenFL mean round, s "
        "| OpenFL peak RSS, MiB | OpenFL CPU, s |",
        "|---|---|---|---|---|---|---|",
    ]
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for server, results in report.scale.items():
        for result in results:
            by_n.setdefault(result["collaborators"], {})[server] = result
    for n in sorted(by_n):
        cells = []
        for server in ("fedagg", "openfl"):
            result = by_n[n].get(server)
            if result is None:
                cells += ["-", "-", "-"]
            else:
                cells += [
                    _fmt(_mean(result["round_seconds"])),
                    _fmt(result["peak_hwm_mib"], 0),
                    _fmt(result["cpu_seconds"], 1),
                ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if report.polls:
        lines += [
            "",
            f"GetTasks under {plan.poll_clients} concurrent clients ({scale.PROCESSES} processes, each client "
            f"has its tasks so every call is answered at once, {plan.poll_seconds:g} s):",
            "",
            "| server | calls/s | server CPU, s |",
            "|---|---|---|",
        ]
        for server, poll in report.polls.items():
            lines.append(f"| {server} | {poll['calls_per_second']:.0f} | {poll['cpu_seconds']:.1f} |")
        if {"fedagg", "openfl"} <= report.polls.keys():
            ratio = report.polls["fedagg"]["calls_per_second"] / report.polls["openfl"]["calls_per_second"]
            lines += ["", f"fedagg / OpenFL GetTasks calls/s: {ratio:.2f}x"]
    return [*lines, ""]


PHASE_METRICS = [
    ("download_s", "download model (all collaborators), s", False),
    ("upload_s", "upload results + aggregate (all), s", False),
    ("get_tasks_per_s", "GetTasks calls/s", True),
    ("peak_rss_mib", "aggregator peak RSS, MiB", False),
    ("peak_anon_mib", "aggregator peak anonymous memory, MiB", False),
]


def _render_phases(report: Report) -> list[str]:
    lines = [
        "### 4. Server-only phases (pre-built uploads, 4 mTLS collaborators in one process)",
        "",
        "| model | measure | fedagg | OpenFL 1.7.1 | OpenFL / fedagg |",
        "|---|---|---|---|---|",
    ]
    for size, results in report.phases.items():
        for key, label, higher_is_better in PHASE_METRICS:
            ours = results["fedagg"][key]
            theirs = results.get("openfl", {}).get(key, float("nan"))
            ratio = ours / theirs if higher_is_better else theirs / ours
            lines.append(f"| {size} MiB | {label} | {ours:.2f} | {_fmt(theirs)} | {_fmt(ratio)}x |")
    lines += ["", "Ratios above 1 mean fedagg is faster or smaller (for GetTasks: fedagg / OpenFL)."]
    return [*lines, ""]


if __name__ == "__main__":
    raise SystemExit(main())
