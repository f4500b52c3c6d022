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
* ``large``: a model near 3 GB (8 tensors of 350 MiB, each under gRPC's 2 GiB) with N = 2 collaborators of
  fedagg's own client: round time, and the peak memory of the server and of each client (bench/wire.py).
* ``tier``: standalone vs a root and K ingest replicas behind HAProxy, N light collaborators: per pod peak
  memory, CPU and bytes, and the root's traffic per round in models (bench/tier.py; needs haproxy).

Runs of the servers are interleaved (fedagg, null, OpenFL, fedagg, ..., each case starting with the next
server), because the machine is shared. ``--quick`` is a smoke run (well under a minute of work, small models, no
OpenFL scale sweep) that only shows the benchmark runs; its numbers mean little. The report goes to ``--out``
(default bench/results.md), and with ``--json`` every measurement to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import openfl_cases, phases, scale, tier, wire
from bench.balancer import NOT_INSTALLED, haproxy_binary
from bench.models import MIB
from bench.plan import FULL, NULL_SERVERS, QUICK, SECTIONS, Plan, Report
from bench.report import render
from bench.servers import ROOT, openfl_python
from fedagg.pki.federation import write_federation_pki


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


def run_large(plan: Plan, report: Report, work: Path, pki: Path) -> None:
    collaborators, params, tensors, rounds = plan.large
    log(f"large model: {collaborators} x {params * 4 / MIB:.0f} MiB in {tensors} tensors")
    try:
        result = wire.fedagg_rounds(collaborators, params, rounds, work, pki, tensors)
    except RuntimeError as error:
        report.skipped.append(f"large model: {str(error).splitlines()[0][:300]}")
        log(f"  failed: {error}")
        return
    report.large.append(result)
    log(
        f"  rounds {[round(s, 1) for s in result['round_seconds']]} s, server peak {result['peak_hwm_mib']:.0f} MiB, "
        f"client peak {result['client_peak_hwm_mib']:.0f} MiB"
    )


def run_tier(plan: Plan, report: Report, work: Path) -> None:
    results, failed = tier.run_section(plan.tier_sizes, plan.tier_replicas, plan.tier_rounds, work, log)
    report.tier.extend(results)
    report.skipped.extend(failed)


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
    if "tier" in sections and haproxy_binary() is None:
        parser.error(NOT_INSTALLED)
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
        "large": lambda work, pki: run_large(plan, report, work, pki),
        "tier": lambda work, _pki: run_tier(plan, report, work),
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


if __name__ == "__main__":
    raise SystemExit(main())
