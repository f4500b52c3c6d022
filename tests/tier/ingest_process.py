"""An ingest replica (fedagg's :class:`~fedagg.tier.ingest_replica.IngestReplica`) as a process, for the kill tests:
prints ``serving <port>`` once it serves round 0, then runs until it is killed or its stdin closes.

Usage: python -m tests.tier.ingest_process STATE ROOT_ADDRESS REPLICA PKI_ROOT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fedagg.protocol import tier_pb2
from tests.support.pki import Pki
from tests.tier.ingest_tier import replica
from tests.tier.replica_driver import say


async def main(state: Path, root_address: str, name: str, pki_root: Path) -> None:
    ingest = replica(Pki(pki_root, pki_root / "server"), name, state, root_address)
    await ingest.start()
    await ingest.acted_on(0, tier_pb2.OPEN)
    say(f"serving {ingest.port}")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await ingest.stop(None)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])))
