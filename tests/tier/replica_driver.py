"""An ingest replica's round as a real process, for the fault tests: uploads arrive, are spooled, claimed at the
root, acknowledged (a line ``acked <site>`` on stdout) and folded, through fedagg's own tier code; the partial is
delivered when a line ``deliver`` arrives on stdin (``delivered <recorded>``); with ``--keep`` it is then kept
delivered (delivered again to a root that restarted) until stdin closes. With ``--recover`` it first reads its
spool back, as a restarted replica does.

This stands in for the ingest replica's collaborator-facing server (not built yet): everything from the spool on
is the replica's real code (:mod:`fedagg.tier.ingest_round`, :mod:`fedagg.tier.root_link`).

Usage: python -m tests.tier.replica_driver STATE PORT REPLICA PKI_ROOT SITES [--recover] [--keep]
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedagg.federation.plan import ResolvedLimits
from fedagg.federation.spool import Spool
from fedagg.protocol.codec import encode_tensor
from fedagg.tier.ingest_round import IngestRound, next_generation
from fedagg.tier.partials import RoundPartial
from fedagg.tier.root_link import LinkTimings, RootLink
from tests.support.aggregation import Model, model_of
from tests.support.pki import Pki
from tests.support.uploads import metric, task_results_bytes

TASK = "train"
LIMITS = ResolvedLimits(1 << 24, 1 << 20, 1 << 24, 16)
INITIAL = model_of(np.random.default_rng(1000))


def site_model(site: str) -> Model:
    index = int(site.rsplit("-", 1)[1])
    return model_of(np.random.default_rng(index), shift=index)


def site_weight(site: str) -> int:
    return 10 + 7 * int(site.rsplit("-", 1)[1])


def upload_of(site: str) -> bytes:
    tensors = [
        encode_tensor(name, values, round_number=0, tags=("trained",))
        for name, values in site_model(site).items()
    ]
    tensors.append(metric("loss", float(site_weight(site)) / 100, 0, "trained"))
    return task_results_bytes(site, 0, TASK, site_weight(site), tensors)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(
    state: Path, port: int, replica: str, pki_root: Path, sites: list[str], recover: bool, keep: bool
) -> None:
    executor = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    generation = next_generation(state)
    spool = Spool(state / "spool")
    spool.prepare()
    round_ = IngestRound(spool, RoundPartial(0, replica, generation), INITIAL, LIMITS)
    pki = Pki(pki_root, pki_root / "server")
    link = RootLink(f"localhost:{port}", pki.client(replica).credentials(), LinkTimings(patience_seconds=30))

    async def claim(collaborator: str, round_number: int, task: str) -> bool:
        return (await link.claim(collaborator, round_number, task)).granted

    if recover:
        say(f"recovered {await round_.recover(claim, executor)} generation {generation}")
    for site in sites:
        writer = spool.open()
        writer.write(upload_of(site))
        await loop.run_in_executor(executor, writer.seal)
        entry = await loop.run_in_executor(executor, round_.accept, writer)
        if not await claim(site, 0, TASK):
            await loop.run_in_executor(executor, round_.drop, entry)
            say(f"duplicate {site}")
            continue
        say(f"acked {site}")
        contribution = await loop.run_in_executor(executor, round_.read, entry)
        assert contribution is not None
        await loop.run_in_executor(executor, round_.fold, entry, contribution)
    say("folded")
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "deliver":
        pass
    say(f"delivered {await link.deliver(round_.partial)}")
    if keep:
        stdin_closed = asyncio.Event()
        keeping = asyncio.create_task(link.keep_delivered(round_.partial, stdin_closed, poll_seconds=0.2))
        while await loop.run_in_executor(None, sys.stdin.readline):
            pass
        stdin_closed.set()
        await keeping
    await link.close()


if __name__ == "__main__":
    state_arg, port_arg, replica_arg, pki_arg, sites_arg = sys.argv[1:6]
    asyncio.run(
        main(
            Path(state_arg),
            int(port_arg),
            replica_arg,
            Path(pki_arg),
            [site for site in sites_arg.split(",") if site],
            "--recover" in sys.argv[6:],
            "--keep" in sys.argv[6:],
        )
    )
