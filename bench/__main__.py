"""``python -m bench``: fedagg vs OpenFL 1.7.1's aggregator, same clients, same workload, one run.

For each model size, K mTLS collaborators (fedagg's client library, identical for both servers) download the
model, poll GetTasks, then upload their three task results (the train one carrying the whole model); the last
upload closes the round. Reported: wall time of each phase, GetTasks throughput, and the aggregator process's
peak resident and anonymous memory. Ratios are OpenFL / fedagg (above 1: fedagg is better).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import tempfile
from pathlib import Path

from bench.servers import MemoryWatch, RunningServer, start_fedagg, start_openfl
from bench.workload import BenchCollaborator, model_tensors, run_workload
from fedagg.federation.store import publish_model
from fedagg.pki import write_federation_pki

ROOT = Path(__file__).resolve().parent.parent


def openfl_python() -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "openfl-venv")], capture_output=True, text=True, check=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def measure(
    server: RunningServer, pki: Path, names: list[str], model_megabytes: int, polls: int
) -> dict[str, float]:
    watch = MemoryWatch(server.process.pid)
    watch.start()
    model = model_tensors(model_megabytes)
    collaborators = [BenchCollaborator(name, f"localhost:{server.port}", pki, model) for name in names]
    del model
    timings = run_workload(collaborators, polls)
    watch.stop()
    for collaborator in collaborators:
        collaborator.quit()
    code = server.wait()
    if code != 0:
        raise RuntimeError(f"{server.name} exited with {code}")
    return {
        "download_s": timings.download,
        "get_tasks_per_s": timings.get_tasks_per_second,
        "upload_s": timings.upload,
        "peak_rss_mib": watch.peak_rss,
        "peak_anon_mib": watch.peak_anonymous,
        "baseline_rss_mib": watch.baseline_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,128", help="model sizes in MiB (default 16,128)")
    parser.add_argument("--collaborators", type=int, default=4, help="K (default 4)")
    parser.add_argument(
        "--polls", type=int, default=250, help="GetTasks calls per collaborator (default 250)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md", help="markdown report")
    args = parser.parse_args()
    python = openfl_python()
    names = [f"site-{index}" for index in range(args.collaborators)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedagg-bench-") as scratch:
        work = Path(scratch)
        pki = work / "pki"
        write_federation_pki(pki, names, ["localhost", "127.0.0.1"])
        for size in [int(size) for size in args.sizes.split(",")]:
            init = work / f"init-{size}.pbuf"
            publish_model(init, model_tensors(size), 0)
            results = {}
            for name in ("fedagg", "openfl"):
                directory = work / f"{name}-{size}"
                directory.mkdir()
                if name == "fedagg":
                    server = start_fedagg(directory, pki, names, init)
                else:
                    server = start_openfl(python, directory, pki, names, init)
                results[name] = measure(server, pki, names, size, args.polls)
                print(f"{size} MiB {name}: {results[name]}", flush=True)
            rows.append((size, results))
    report = render(rows, args)
    args.out.write_text(report)
    print(report)
    return 0


METRICS = [
    ("download_s", "download model (all collaborators), s", False),
    ("upload_s", "upload results + aggregate (all), s", False),
    ("get_tasks_per_s", "GetTasks calls/s", True),
    ("peak_rss_mib", "aggregator peak RSS, MiB", False),
    ("peak_anon_mib", "aggregator peak anonymous memory, MiB", False),
]


def render(rows: list[tuple[int, dict[str, dict[str, float]]]], args: argparse.Namespace) -> str:
    lines = [
        f"Benchmark ({datetime.date.today().isoformat()}, {platform.machine()}, {args.collaborators} mTLS "
        f"collaborators, python -m bench --sizes {args.sizes})",
        "",
        "| model | measure | fedagg | OpenFL 1.7.1 | OpenFL / fedagg |",
        "|---|---|---|---|---|",
    ]
    for size, results in rows:
        for key, label, higher_is_better in METRICS:
            ours, theirs = results["fedagg"][key], results["openfl"][key]
            ratio = ours / theirs if higher_is_better else theirs / ours
            lines.append(f"| {size} MiB | {label} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x |")
    lines.append("")
    lines.append("Ratios above 1 mean fedagg is faster or smaller (for GetTasks: fedagg / OpenFL).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
