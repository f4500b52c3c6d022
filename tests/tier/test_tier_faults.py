"""Faults in the tier with real replica processes: an ingest replica SIGKILLed after acknowledging contributions
and before its partial is collected restarts from its state directory and delivers them; a retry landing on the
other replica is dropped there; every contribution is counted once and the model equals an undisturbed run's."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.tier.division import divide
from tests.support.aggregation import aggregate
from tests.support.pki import Pki
from tests.tier.replica_driver import INITIAL, site_model, site_weight
from tests.tier.roots import running_root

ROOT = Path(__file__).resolve().parents[2]
SITES = [f"site-{index}" for index in range(12)]
LINE_SECONDS = 60.0


class Driver:
    """A driver process (tests/tier/replica_driver.py or root_driver.py), read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, module: str, *arguments: str) -> Driver:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"tests.tier.{module}",
            *arguments,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), LINE_SECONDS)
        assert raw, f"the replica driver exited ({await self.process.wait()})"
        return raw.decode().strip()

    async def deliver(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(b"deliver\n")
        await self.process.stdin.drain()
        return await self.line()

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def finish(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return await self.process.wait()


async def replica(state: Path, port: int, name: str, pki: Pki, sites: list[str], *flags: str) -> Driver:
    state.mkdir(exist_ok=True)
    return await Driver.start(
        "replica_driver", str(state), str(port), name, str(pki.root), ",".join(sites), *flags
    )


def undisturbed() -> dict[str, np.ndarray]:
    weights = [float(site_weight(site)) for site in SITES]
    model = aggregate(WeightedAverage(), [site_model(site) for site in SITES], weights)
    assert model is not None
    return model


def test_a_replica_killed_after_acking_delivers_after_restart_and_counts_each_contribution_once(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_root(tier_pki, tmp_path / "root") as root:
            first = await replica(tmp_path / "ingest-0", root.port, "ingest-0", tier_pki, SITES[:6])
            assert [await first.line() for _ in range(7)] == [*(f"acked {s}" for s in SITES[:6]), "folded"]
            await first.kill()

            second = await replica(
                tmp_path / "ingest-1", root.port, "ingest-1", tier_pki, ["site-3", *SITES[6:]]
            )
            expected = ["duplicate site-3", *(f"acked {s}" for s in SITES[6:]), "folded"]
            assert [await second.line() for _ in expected] == expected
            assert await second.deliver() == "delivered True"
            assert await second.process.wait() == 0
            assert root.collection.collected(0) is None

            restarted = await replica(tmp_path / "ingest-0", root.port, "ingest-0", tier_pki, [], "--recover")
            assert await restarted.line() == "recovered 6 generation 2"
            assert await restarted.line() == "folded"
            assert await restarted.deliver() == "delivered True"
            assert await restarted.process.wait() == 0

            collected = root.collection.collected(0)
            assert collected is not None
            assert collected.stragglers == frozenset()
            train = collected.merged.tasks["train"]
            assert sorted(name for name, _ in train.contributors) == sorted(SITES)
            weights = [float(site_weight(site)) for site in SITES]
            (loss,) = train.metrics.values()
            assert loss.weight == sum(weights)
            assert loss.weighted == pytest.approx(
                sum(w * w / 100 for w in weights), rel=1e-6
            )  # float32 values
            model = divide(WeightedAverage(), 0, "train", train, INITIAL)
            for name, values in undisturbed().items():
                np.testing.assert_array_max_ulp(model[name], values, maxulp=1)

    asyncio.run(scenario())


def test_a_root_killed_mid_collection_collects_the_partials_again_after_restart(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        result = tmp_path / "model.npz"
        root_arguments = (str(tmp_path / "root"), str(tier_pki.root), str(result))
        (tmp_path / "root").mkdir()
        root = await Driver.start("root_driver", root_arguments[0], "0", *root_arguments[1:])
        port = int((await root.line()).removeprefix("listening "))
        replicas = [
            await replica(tmp_path / "ingest-0", port, "ingest-0", tier_pki, SITES[:5], "--keep"),
            await replica(tmp_path / "ingest-1", port, "ingest-1", tier_pki, SITES[5:], "--keep"),
        ]
        for driver, sites in zip(replicas, (SITES[:5], SITES[5:]), strict=True):
            assert [await driver.line() for _ in range(len(sites) + 1)] == [
                *(f"acked {s}" for s in sites),
                "folded",
            ]
        assert await replicas[0].deliver() == "delivered True"
        assert await root.line() == "kept ingest-0"
        await root.kill()

        restarted = await Driver.start("root_driver", root_arguments[0], str(port), *root_arguments[1:])
        assert await restarted.line() == f"listening {port}"
        assert await restarted.line() == "kept ingest-0"
        assert await replicas[1].deliver() == "delivered True"
        assert await restarted.line() == "kept ingest-1"
        assert await restarted.line() == f"collected {len(SITES)}"
        for driver in (*replicas, restarted):
            assert await driver.finish() == 0
        with np.load(result) as model:
            for name, values in undisturbed().items():
                np.testing.assert_array_max_ulp(model[name], values, maxulp=1)

    asyncio.run(scenario())
