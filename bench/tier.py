"""The scale-out tier: standalone fedagg vs a root and K ingest replicas, all on this machine, behind HAProxy.

``run_tier`` trains N light collaborators (fedagg's client library, threads in a few processes, as the scale
section) through HAProxy in TCP mode (mTLS end to end; the standalone pod behind it too, so that every setup pays
the same hop and is counted the same way). For the tier, each replica reaches the root through a frontend of its
own on the same HAProxy, so the root's traffic is counted per replica (bench/balancer.py). Per pod: peak RSS
(VmHWM), CPU seconds, bytes on the wire (HAProxy) and fedagg's own byte counters (Prometheus, last scrape).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.balancer import Balancer, Traffic, start_balancer
from bench.clients import run_federation
from bench.models import shapes_for, write_init_model
from bench.openfl_cases import round_times
from bench.pod_metrics import MetricsScraper, metrics_port
from bench.ports import free_port
from bench.scale import PROCESSES, RUN_TIMEOUT
from bench.servers import RunningServer, start_fedagg
from fedagg.pki.federation import write_federation_pki

REPLICA_NAMES = tuple(f"ingest-{index}" for index in range(8))
"""The replicas' names, their tier client certificates' CNs."""
EXIT_TIMEOUT = 120.0


def tier_pki(directory: Path, collaborators: int) -> Path:
    """One CA for all: the pods' server certificate (localhost), the collaborators' and the replicas' client
    certificates (``collaborators/<name>/``, which is also the layout of ``topology.tier_certificate_dir``)."""
    if not (directory / "ca" / "ca.crt").exists():
        names = [f"col-{index}" for index in range(collaborators)]
        write_federation_pki(directory, [*names, *REPLICA_NAMES], ["localhost", "127.0.0.1"])
    return directory


@dataclass
class Pod:
    """A ``fedagg serve`` process of the run and its own byte counters."""

    name: str
    role: str
    server: RunningServer
    scraper: MetricsScraper

    def stop(self) -> None:
        self.server.kill()
        self.scraper.stop()


def _start_pod(
    name: str,
    role: str,
    directory: Path,
    pki: Path,
    names: list[str],
    init: Path,
    rounds: int,
    **sections: Any,
) -> Pod:
    server = start_fedagg(directory / name, pki, names, init, rounds, **sections)
    return Pod(name, role, server, MetricsScraper(metrics_port(server.log)).start())


def _start_pods(
    replicas: int, directory: Path, pki: Path, names: list[str], init: Path, rounds: int
) -> tuple[list[Pod], Balancer]:
    """The pods of one setup and the balancer in front of them; the root (or the standalone pod) first."""
    pods: list[Pod] = []
    try:
        if replicas == 0:
            pods.append(_start_pod("standalone", "standalone", directory, pki, names, init, rounds))
            return pods, start_balancer(directory, {"standalone": pods[0].server.port})
        replica_names = REPLICA_NAMES[:replicas]
        topology = {
            "role": "root",
            "tier_port": 0,
            "tier_bind_address": "127.0.0.1",
            "replicas": replica_names,
        }
        pods.append(_start_pod("root", "root", directory, pki, names, init, rounds, topology=topology))
        ports = {replica: free_port() for replica in replica_names}
        balancer = start_balancer(directory, ports, pods[0].server.port, replica_names)
        for replica, port in ports.items():
            topology = {
                "role": "ingest",
                "root_address": f"localhost:{balancer.root_ports[replica]}",
                "replica": replica,
                "tier_certificate_dir": str(pki / "collaborators"),
            }
            pods.append(
                _start_pod(
                    replica,
                    "ingest",
                    directory,
                    pki,
                    names,
                    init,
                    rounds,
                    server={"port": port},
                    topology=topology,
                )
            )
        return pods, balancer
    except BaseException:
        for pod in pods:
            pod.stop()
        raise


def run_tier(
    replicas: int, collaborators: int, params: int, rounds: int, work: Path, pki: Path
) -> dict[str, Any]:
    """One setup (``replicas`` = 0: standalone) trains ``rounds`` rounds of ``collaborators``: what it measured."""
    shapes = shapes_for(params)
    init = write_init_model(shapes, work / f"init-{params}.pbuf")
    names = [f"col-{index}" for index in range(collaborators)]
    directory = work / f"tier-{replicas}-{collaborators}-{params}-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    pods, balancer = _start_pods(replicas, directory, pki, names, init, rounds)
    first = pods[0]
    front = RunningServer(
        first.name, first.server.process, balancer.port, first.server.log, first.server.watch
    )
    try:
        for pod in pods:
            pod.server.watch.mark()
        balancer.watch.mark()
        run = run_federation(front, names, shapes, pki, directory / "clients", PROCESSES, timeout=RUN_TIMEOUT)
        for pod in pods[1:]:
            code = pod.server.wait(EXIT_TIMEOUT)
            if code != 0:
                raise RuntimeError(f"ingest replica {pod.name} exited with {code}; see {pod.server.log}")
        federation, root_links = balancer.pod_traffic()
    finally:
        for pod in pods:
            pod.stop()
            shutil.rmtree(pod.server.log.parent / "state", ignore_errors=True)  # spools and models: GiBs
        balancer.stop()
    rows = [_pod_row(pod, federation, root_links) for pod in pods]
    root_bytes = rows[0]["received_bytes"] + rows[0]["sent_bytes"]
    return {
        "replicas": replicas,
        "collaborators": collaborators,
        "model_bytes": params * 4,
        "rounds": rounds,
        "round_seconds": round_times(run.calls, rounds)[0],
        "pods": rows,
        "root_bytes_per_model_round": root_bytes / (params * 4) / rounds,
        "balancer_cpu_seconds": balancer.watch.cpu,
        "balancer_peak_hwm_mib": balancer.watch.peak_hwm,
        "client_peak_hwm_mib": max(run.worker_peak_mib),
    }


def _pod_row(pod: Pod, federation: dict[str, Traffic], root_links: dict[str, Traffic]) -> dict[str, Any]:
    """What one pod measured: memory and CPU from /proc, bytes from HAProxy and from its own counters."""
    served = federation.get(pod.name, Traffic(0, 0))
    link = root_links.get(pod.name, Traffic(0, 0))
    if pod.role == "root":  # the root's side of every replica's link
        received = sum(traffic.sent for traffic in root_links.values())
        sent = sum(traffic.received for traffic in root_links.values())
    else:
        received, sent = served.received + link.received, served.sent + link.sent
    return {
        "pod": pod.name,
        "role": pod.role,
        "peak_hwm_mib": pod.server.watch.peak_hwm,
        "cpu_seconds": pod.server.watch.cpu,
        "received_bytes": received,
        "sent_bytes": sent,
        "collaborator_bytes": served.received + served.sent,
        "root_link_bytes": link.received + link.sent,
        "prometheus": pod.scraper.last,
    }


def run_section(
    sizes: tuple[tuple[int, tuple[int, ...]], ...],
    replica_counts: tuple[int, ...],
    rounds: int,
    work: Path,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (model of ``params``, N of ``ns``) in ``sizes`` with every setup: the results, and what failed."""
    pki = tier_pki(work / "tier-pki", max(n for _params, ns in sizes for n in ns))
    results, failed = [], []
    for params, ns in sizes:
        for n in ns:
            for replicas in replica_counts:
                label = f"tier: {params * 4 / 2**20:g} MiB x {n}, " + (
                    f"root + {replicas} ingest" if replicas else "standalone"
                )
                log(label)
                try:
                    result = run_tier(replicas, n, params, rounds, work, pki)
                except RuntimeError as error:
                    failed.append(f"{label}: {str(error).splitlines()[0][:300]}")
                    log(f"  failed: {error}")
                    continue
                results.append(result)
                log(
                    f"  rounds {[round(s, 1) for s in result['round_seconds']]} s, root bytes / model / round "
                    f"{result['root_bytes_per_model_round']:.1f}"
                )
    return results, failed
