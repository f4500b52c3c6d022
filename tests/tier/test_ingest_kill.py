"""An ingest replica process SIGKILLed after acknowledging contributions, before its partial is collected, in
front of a serving root: restarted from its state directory, it claims and folds its spool again (a new
generation), answers a retry of what it acknowledged as a duplicate, and delivers; the round's model is the single
pod's."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import numpy as np

from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, tier_pb2
from tests.support.pki import Pki
from tests.tier.conftest import COLLABORATORS, REPLICAS
from tests.tier.ingest_tier import INITIAL, collaborator, header, running_tier, send_results
from tests.tier.tier_rounds import model, single_pod, tick_on_partials, work

ROOT = Path(__file__).resolve().parents[2]
LINE_SECONDS = 60.0


async def start_process(state: Path, root_address: str, pki: Pki) -> tuple[asyncio.subprocess.Process, int]:
    """The replica REPLICAS[0] as a process, and its port once it serves round 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tier.ingest_process",
        str(state),
        root_address,
        REPLICAS[0],
        str(pki.root),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), LINE_SECONDS)).decode().split()
    assert line[:1] == ["serving"], f"the replica process said {line} ({process.returncode})"
    return process, int(line[1])


async def work_through(pki: Pki, port: int, index: int) -> None:
    """Collaborator ``index`` asks the replica at ``port`` for its round 0 tasks and uploads their results there."""
    name = COLLABORATORS[index]
    async with collaborator(pki, name, port) as channel:
        stub = aggregator_pb2_grpc.AggregatorStub(channel)
        assert (await stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header(name)))).round_number == 0
        for task, size, tensors in work(index, 0):
            assert await send_results(channel, name, 0, task, size, tensors) == ()


def test_a_replica_killed_after_acknowledging_delivers_what_it_acknowledged_once_restarted(
    pki: Pki, tmp_path: Path
) -> None:
    single = single_pod(tmp_path / "single")

    async def scenario() -> None:
        async with running_tier(pki, tmp_path, REPLICAS[1:], counting=True) as (root, replicas):
            ticking = asyncio.create_task(tick_on_partials(root))
            await replicas[0].acted_on(0, tier_pb2.OPEN)
            process, port = await start_process(tmp_path, root.address, pki)
            for index in (0, 1):
                await work_through(pki, port, index)
            assert len(root.parts.book.claimed(0, REPLICAS[0])) == 6
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL

            process, port = await start_process(tmp_path, root.address, pki)
            async with collaborator(pki, "one", port) as channel:
                task, size, tensors = work(0, 0)[1]
                assert await send_results(channel, "one", 0, task, size, tensors) == ("ignored:duplicate",)
            for index in (2, 3):
                await work_through(pki, replicas[0].port, index)
            await replicas[0].acted_on(1, tier_pb2.OPEN)  # the root collected both partials
            assert (tmp_path / REPLICAS[0] / "tier-generation").read_text() == "2\n"
            counted = sorted(
                (record.origin, record.task, record.name)
                for federation in (root.parts.federation, single)
                for record in federation.metrics.history()
                if record.round_number == 0 and record.origin in COLLABORATORS
            )
            assert counted[0::2] == counted[1::2]  # each contribution's metrics once, as in the single pod
            assert len(counted) == 2 * len(COLLABORATORS) * len(work(0, 0))
            expected, got = model(single, 1), model(root.parts.federation, 1)
            for name in INITIAL:
                np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
            assert process.stdin is not None
            process.stdin.close()
            assert await process.wait() == 0
            ticking.cancel()

    asyncio.run(scenario())
