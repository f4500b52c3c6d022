"""A scale-out tier as real processes: ``fedagg serve`` as the root and as K ingest replicas, behind HAProxy.

One test PKI signs everything: the collaborators' client certificates, the server certificate for localhost that
the root's tier port and the replicas' federation ports present, and the replicas' tier client certificates (CN =
the replica's name, one directory per replica as the chart mounts them). The collaborators dial the balancer,
which spreads their connections over the replicas; the root is dialled by the replicas only.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port
from tests.faults.harness import NAMES, QUIT_REDELIVERY_SECONDS, Aggregator, Setup
from tests.support.haproxy import balancing
from tests.support.pki import Pki
from tests.support.process import write_config


def tier_certificates(pki: Pki, replicas: tuple[str, ...], directory: Path) -> Path:
    """``directory/<replica>/{tls.crt,tls.key,ca.crt}`` for each replica, as the chart mounts their secrets."""
    for replica in replicas:
        own = directory / replica
        own.mkdir(parents=True, exist_ok=True)
        client = pki.client(replica)
        for source, name in (
            (client.certificate, "tls.crt"),
            (client.private_key, "tls.key"),
            (pki.ca, "ca.crt"),
        ):
            shutil.copyfile(source, own / name)
    return directory


@dataclass
class Tier:
    """The root, its replicas and the balancer's address, as a :class:`~tests.faults.harness.Setup` names it."""

    setup: Setup
    root: Aggregator
    replicas: dict[str, Aggregator]


@contextlib.contextmanager
def running_tier(
    directory: Path,
    pki: Pki,
    rounds: int,
    initial_model: Path,
    replicas: tuple[str, ...],
    names: tuple[str, ...] = NAMES,
    root_failpoints: str = "",
    **federation: object,
) -> Iterator[Tier]:
    """Start the root (on a fixed free tier port, so that a restarted root listens where the replicas dial; armed
    with ``root_failpoints``), then the replicas (each on a fixed free port), then HAProxy in front of them."""
    root_dir = directory / "root"
    root_dir.mkdir()
    server = {"quit_redelivery_seconds": QUIT_REDELIVERY_SECONDS}
    root_config = write_config(
        root_dir,
        pki,
        names,
        rounds,
        initial_model,
        server=server,
        federation=dict(federation),
        topology={
            "role": "root",
            "tier_port": free_port(),
            "tier_bind_address": "127.0.0.1",
            "replicas": list(replicas),
            "tier_certificate_dir": str(pki.server_dir),
        },
    )
    certificates = tier_certificates(pki, replicas, directory / "tier")
    ports = {replica: free_port() for replica in replicas}
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(Aggregator(root_config, root_failpoints, name="root"))
        root.wait_for_federation()
        started = {}
        for replica, port in ports.items():
            replica_dir = directory / replica
            replica_dir.mkdir()
            config = write_config(
                replica_dir,
                pki,
                names,
                rounds,
                initial_model,
                server={**server, "port": port},
                federation=dict(federation),
                topology={
                    "role": "ingest",
                    "root_address": f"localhost:{root.federation_port}",
                    "replica": replica,
                    "tier_certificate_dir": str(certificates),
                },
            )
            started[replica] = stack.enter_context(Aggregator(config, name=replica))
        for process in started.values():
            process.wait_for_federation()
        balancer_port = free_port()
        stack.enter_context(balancing(directory, balancer_port, list(ports.values())))
        yield Tier(Setup(root_dir, root_config, balancer_port, rounds), root, started)


def finish_tier_processes(tier: Tier, root: Aggregator | None = None) -> None:
    """The root (``tier.root`` unless said) exits 0 after the last quit job, then every replica."""
    (root or tier.root).wait_finished(30)
    for replica in tier.replicas.values():
        replica.wait_finished(30)


COLLECTED = re.compile(r"round (\d+): partial of (\S+) \(generation \d+\) collected: (\d+) contribution")


def contributions_by_replica(root_log: str) -> Counter[str]:
    """How many contributions each replica delivered to the root over the run (the last partial of each round)."""
    last: dict[tuple[int, str], int] = {}
    for match in COLLECTED.finditer(root_log):
        last[(int(match[1]), match[2])] = int(match[3])
    held: Counter[str] = Counter()
    for (_, replica), count in last.items():
        held[replica] += count
    return held
