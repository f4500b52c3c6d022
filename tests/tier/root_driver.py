"""A root's tier port as a real process, for the fault tests: prints ``listening <port>``, then ``kept <replica>``
for each replica whose partial of round 0 it holds, and once every replica holding claims delivered, writes the
divided weighted-average model to RESULT (.npz) and prints ``collected <contributions>``.

This stands in for the root's round end (not wired yet): claims, collection and division are the root's real code.

Usage: python -m tests.tier.root_driver STATE PORT PKI_ROOT RESULT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.tier.division import divide
from tests.support.pki import Pki
from tests.tier.replica_driver import INITIAL, say
from tests.tier.roots import running_root


async def main(state: Path, port: int, pki_root: Path, result: Path) -> None:
    async with running_root(Pki(pki_root, pki_root / "server"), state, port=port) as root:
        say(f"listening {root.port}")
        shown: set[str] = set()
        while True:
            await root.service.partial_arrived.wait()
            root.service.partial_arrived.clear()
            for view in root.collection.replicas(0):
                if view.generation is not None and view.replica not in shown:
                    shown.add(view.replica)
                    say(f"kept {view.replica}")
            collected = root.collection.collected(0)
            if collected is not None:
                break
        model = divide(WeightedAverage(), 0, "train", collected.merged.tasks["train"], INITIAL)
        arrays: dict[str, Any] = dict(model)
        np.savez(result, **arrays)
        say(f"collected {len(collected.merged.contributions)}")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
