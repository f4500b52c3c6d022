"""Server-only phases (the benchmark's first rows): pre-built uploads, so only the aggregator's work is timed.

K mTLS collaborators (fedagg's client library, identical for both servers) download the model, poll GetTasks,
then upload their three task results (the train one carrying the whole model); the last upload closes the
round. Reported: the wall time of each phase, GetTasks throughput, and the server's peak memory.
"""

from __future__ import annotations

from pathlib import Path

from bench.servers import RunningServer, start_fedagg, start_openfl
from bench.workload import BenchCollaborator, model_tensors, run_workload
from fedagg.federation.store import publish_model


def run_phases(
    server_kind: str, megabytes: int, names: list[str], polls: int, work: Path, pki: Path, python: Path
) -> dict[str, float]:
    init = work / f"phases-init-{megabytes}.pbuf"
    if not init.exists():
        publish_model(init, model_tensors(megabytes), 0)
    directory = work / f"phases-{server_kind}-{megabytes}"
    directory.mkdir(parents=True, exist_ok=True)
    server: RunningServer
    if server_kind == "fedagg":
        server = start_fedagg(directory, pki, names, init)
    else:
        server = start_openfl(python, directory, pki, names, init)
    try:
        model = model_tensors(megabytes)
        collaborators = [BenchCollaborator(name, f"localhost:{server.port}", pki, model) for name in names]
        del model
        server.watch.mark()
        timings = run_workload(collaborators, polls)
        for collaborator in collaborators:
            collaborator.quit()
        code = server.wait()
        if code != 0:
            raise RuntimeError(f"{server.name} exited with {code}; see {server.log}")
    finally:
        server.kill()
    return {
        "download_s": timings.download,
        "upload_s": timings.upload,
        "get_tasks_per_s": timings.get_tasks_per_second,
        "peak_rss_mib": server.watch.peak_hwm,
        "peak_anon_mib": server.watch.peak_anon,
        "cpu_s": server.watch.cpu,
    }
