"""The markdown report of ``python -m bench`` (bench/results.md): machine, load, commands and every table."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from bench import scale
from bench.models import MIB
from bench.openfl_cases import RunResult
from bench.plan import (
    FLOOR_CPU_TARGET,
    FLOOR_RATIO_TARGET,
    NULL_SERVERS,
    RSS_ALLOWANCE_BYTES,
    THROUGHPUT_TARGET,
    Plan,
    Report,
)
from bench.servers import ROOT
from bench.tier_report import render_tier


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
    if "large" in sections and report.large:
        lines += _render_large(report)
    if "tier" in sections and report.tier:
        lines += render_tier(report.tier)
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
        "server's user + system time from listening to exit. Steady CPU per round leaves out rounds 0 and 1 "
        "(sampled with the memory, from the end of round 1 to the end of the last round): a federation runs many "
        "rounds, and its first ones write new files and fault in fresh memory that later rounds reuse (the "
        "spool keeps a round's files one round for recovery before the next uploads write over them).",
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
        "| steady CPU-s per round (round 2 on): null, fedagg, OpenFL | fedagg / null steady CPU "
        "| fedagg peak RSS / model | 2 x model + 200 MB, MiB | fedagg peak RSS, MiB | RSS target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
        steady = ", ".join(_fmt(_mean(_steady(servers[s]))) for s in ("null", "fedagg", "openfl"))
        steady_ratios = [ours / null for ours, null in zip(_steady(ours), _steady(floor), strict=False)]
        summary.append(
            f"| ({case.key}) | {_spread(time_ratios)} "
            f"| {_spread(_over_floor(servers['openfl'], floor, lambda r: r.mean_round))} | {cpu} "
            f"| {_spread(cpu_ratios)} | {floor_target} | {steady} | {_spread(steady_ratios)} "
            f"| {_fmt(peak / model_mib)}x "
            f"| {allowed:.0f} | {_fmt(peak, 0)} | {rss_target} |"
        )
    return [*lines, *summary, *phases_lines, ""]


def _steady(runs: list[RunResult]) -> list[float]:
    """The runs' steady CPU per round (those with enough rounds to have one)."""
    return [run.steady_cpu_seconds for run in runs if run.steady_cpu_seconds is not None]


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
        "processes of fedagg's client library (`fedagg.collaborator.Collaborator`, streaming: each tensor decoded "
        "from its reply's bytes, uploads built message by message from the arrays; full model down and up every "
        "round; the runner trains in place); throughput = 2 N model bytes / mean round time, measured in the same "
        "run as the raw stream, over all rounds and from round 2 on (as section 1's steady CPU: the first two "
        "rounds write new spool files and fault in fresh memory that later rounds reuse). Client CPU, peak RSS "
        "and pages faulted: the busiest collaborator process (its own "
        "rusage and VmHWM); pages faulted per round in models = minor page faults x 4 KiB / model bytes / rounds "
        "(fresh memory touched: each is a page the kernel zeroes).",
        "",
        "| stream | MB/s |",
        "|---|---|",
    ]
    for label, run in report.raw.items():
        lines.append(f"| raw gRPC, {label} | {run['bytes_per_second'] / 1e6:.0f} |")
    reference = report.raw.get("mTLS, 1 stream", {}).get("bytes_per_second", float("nan"))
    lines += [
        "",
        "| fedagg round | round times, s | MB/s (2 N model / round), all rounds | / raw mTLS 1 stream "
        "| MB/s, round 2 on | / raw mTLS 1 stream | target >= 0.5: all rounds, round 2 on "
        "| server CPU, s | client CPU per round, s | client pages faulted per round, models "
        "| server peak RSS, MiB | client peak RSS, MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report.wire:
        ratio = run["bytes_per_second"] / reference
        steady = run["steady_bytes_per_second"]
        steady_ratio = float("nan") if steady is None else steady / reference
        rounds = " / ".join(f"{s:.2f}" for s in run["round_seconds"])
        targets = ", ".join(
            "-" if math.isnan(value) else "met" if value >= THROUGHPUT_TARGET else "NOT met"
            for value in (ratio, steady_ratio)
        )
        lines.append(
            f"| {run['collaborators']} x {run['model_bytes'] / MIB:.0f} MiB | {rounds} "
            f"| {run['bytes_per_second'] / 1e6:.0f} | {_fmt(ratio)} "
            f"| {'-' if steady is None else f'{steady / 1e6:.0f}'} | {_fmt(steady_ratio)} "
            f"| {targets} | {run['cpu_seconds']:.1f} "
            f"| {run['client_cpu_seconds_per_round']:.1f} | {run['client_faulted_models_per_round']:.1f} "
            f"| {run['peak_hwm_mib']:.0f} "
            f"| {run['client_peak_hwm_mib']:.0f} |"
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


def _render_large(report: Report) -> list[str]:
    lines = [
        "### 5. A large model with fedagg's own client",
        "",
        "`fedagg serve` (mTLS, stock) and N processes of fedagg's client library, one collaborator each, the runner "
        "training in the collaborator's buffers; full model down and up every round. Peak RSS is the kernel's "
        "VmHWM: the server's sampled from /proc, each client's read by itself at its end.",
        "",
        "| model | N | round times, s | mean round, s | server peak RSS, MiB | 2 x model + 200 MB, MiB "
        "| client peak RSS, MiB | model + 2 tensors + 200 MB, MiB | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report.large:
        model, tensor = run["model_bytes"], run["tensor_bytes"]
        server_bound = (2 * model + RSS_ALLOWANCE_BYTES) / MIB
        client_bound = (model + 2 * tensor + RSS_ALLOWANCE_BYTES) / MIB
        met = run["peak_hwm_mib"] <= server_bound and run["client_peak_hwm_mib"] <= client_bound
        lines.append(
            f"| {model / MIB:.0f} MiB ({model / 1e9:.2f} GB) in {run['tensors']} x {tensor / MIB:.0f} MiB "
            f"| {run['collaborators']} | {' / '.join(f'{s:.1f}' for s in run['round_seconds'])} "
            f"| {run['mean_round']:.1f} | {run['peak_hwm_mib']:.0f} | {server_bound:.0f} "
            f"| {run['client_peak_hwm_mib']:.0f} | {client_bound:.0f} | {'met' if met else 'NOT met'} |"
        )
    return [*lines, ""]
