"""The tier section of the benchmark report (bench/tier.py's results as markdown)."""

from __future__ import annotations

from typing import Any

from bench.models import MIB
from bench.scale import PROCESSES


def setup_name(replicas: int) -> str:
    return f"root + {replicas} ingest" if replicas else "standalone"


def expected_models(result: dict[str, Any]) -> int:
    """Models per round through the root: a replica fetches the round's model once (float32) and delivers its
    partial sums (float64, two models); a standalone pod serves and receives one model per collaborator."""
    replicas, collaborators = int(result["replicas"]), int(result["collaborators"])
    return 3 * replicas if replicas else 2 * collaborators


def _mib(value: float) -> str:
    return f"{value / MIB:.0f}" if value >= 100 * MIB else f"{value / MIB:.1f}"


def render_tier(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### 6. Scale-out tier: standalone vs a root and K ingest replicas",
        "",
        f"N light collaborators (fedagg's client library, threads in {PROCESSES} processes, full model down and up "
        "every round), mTLS end to end, all pods `fedagg serve` processes on this machine behind HAProxy in TCP "
        "mode (the standalone pod behind it too: the same hop and the same counters for every setup). Each ingest "
        "replica reaches the root through a frontend of its own on that HAProxy, so the root's traffic is counted "
        "per replica. Bytes are HAProxy's counters, bytes on the wire (TLS records): fedagg's Prometheus counters "
        "(`fedagg_received_bytes`, `fedagg_sent_bytes`) cover its Aggregator service only, not the root's Tier "
        "service (claims, model fetches, partials), and /proc/PID/io does not count gRPC's socket I/O "
        "(recvmsg/sendmsg); the Prometheus counters are shown per pod as a cross-check (last scrape before the pod "
        "exited). Peak RSS is the kernel's VmHWM (sampled from /proc every 20 ms); CPU is user + system from the "
        "collaborators' start to the pod's exit; round time as in 1. A root allows 2 N + 16 calls "
        "in flight per connection (each replica relays a held GetTasks per collaborator over its one connection; "
        "with 16, the standalone default, a round stalled once a replica served more than about 16 collaborators). "
        "64 MiB runs with N = 32 only: "
        "with N = 128 a round moves 16 GiB through HAProxy on loopback (about 2 minutes per round here, over 12 "
        "for the three setups) and the collaborator processes would hold about 11 GiB.",
        "",
        "| model | N | setup | round times, s | mean round, s | root (standalone: the pod) bytes / model / round "
        "| expected: 2 N standalone, 3 K tier | root or pod peak RSS, MiB | replicas' peak RSS, MiB "
        "| CPU of all pods, s | HAProxy CPU, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pods = [
        "",
        "Per pod (received and sent: everything on the pod's sockets; collaborators and root: both directions):",
        "",
        "| model | N | setup | pod | peak RSS, MiB | CPU, s | received, MiB | sent, MiB | with collaborators, MiB "
        "| with the root, MiB | Prometheus received / sent, MiB | Prometheus partial sums, MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        model = f"{result['model_bytes'] / MIB:g} MiB"
        head = f"| {model} | {result['collaborators']} | {setup_name(result['replicas'])}"
        replica_peaks = ", ".join(
            f"{pod['peak_hwm_mib']:.0f}" for pod in result["pods"] if pod["role"] == "ingest"
        )
        lines.append(
            f"{head} | {' / '.join(f'{s:.1f}' for s in result['round_seconds'])} "
            f"| {sum(result['round_seconds']) / len(result['round_seconds']):.2f} "
            f"| {result['root_bytes_per_model_round']:.1f} | {expected_models(result)} "
            f"| {result['pods'][0]['peak_hwm_mib']:.0f} "
            f"| {replica_peaks or '-'} "
            f"| {sum(pod['cpu_seconds'] for pod in result['pods']):.1f} | {result['balancer_cpu_seconds']:.1f} |"
        )
        for pod in result["pods"]:
            counters = pod["prometheus"]
            partials = counters.get("fedagg_tier_partial_bytes_received_total", 0.0) + counters.get(
                "fedagg_tier_partial_bytes_sent_total", 0.0
            )
            pods.append(
                f"{head} | {pod['pod']} | {pod['peak_hwm_mib']:.0f} | {pod['cpu_seconds']:.1f} "
                f"| {_mib(pod['received_bytes'])} | {_mib(pod['sent_bytes'])} | {_mib(pod['collaborator_bytes']) if pod['role'] != 'root' else '-'} "
                f"| {_mib(pod['root_link_bytes']) if pod['role'] == 'ingest' else '-'} "
                f"| {_mib(counters.get('fedagg_received_bytes_total', 0.0))} / "
                f"{_mib(counters.get('fedagg_sent_bytes_total', 0.0))} "
                f"| {_mib(partials) if pod['role'] != 'standalone' else '-'} |"
            )
    notes = [
        "",
        "What this shows: the root's traffic per round is a fixed number of models per replica, 3 K (each replica "
        "fetches the round's model once and delivers its partial sums in float64, two models), whatever N, where "
        "a standalone pod moves 2 N models; each replica carries 1/K of the collaborators' bytes. The root holds a "
        "round's K partials at once, so its memory grows with K x model, not with N; a replica's grows with the "
        "collaborators it serves (N / K), not with N. What it cannot show on one 2-core machine: every pod, "
        "HAProxy and the collaborators share 2 cores and one loopback. A standalone pod is one Python process "
        "(about one core busy), so two replicas can use the second core and the round may get shorter; more "
        "replicas add no CPU or network here (K = 4 has the same 2 cores as K = 2, and the tier's own work, the "
        "claims, model fetches, partials and the root's extra hop, is paid from them). Round times here say "
        "nothing about a cluster, where each replica has its own cores and NIC: memory and traffic per pod are "
        "the point.",
    ]
    return [*lines, *pods, *notes, ""]
