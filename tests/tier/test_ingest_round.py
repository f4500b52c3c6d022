"""An ingest replica's round read back from its spool: deltas on their base, corrupt uploads dropped unclaimed,
a claim another replica holds drops the copy."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedagg.federation.spool import Spool, SpoolEntry
from fedagg.protocol.codec import encode_tensor
from fedagg.tier.ingest_round import IngestRound, next_generation
from fedagg.tier.partials import RoundPartial
from tests.support.uploads import task_results_bytes
from tests.tier.replica_driver import INITIAL, LIMITS, upload_of


def spooled(round_: IngestRound, spool: Spool, payload: bytes) -> SpoolEntry:
    writer = spool.open()
    writer.write(payload)
    writer.seal()
    return round_.accept(writer)


def test_a_restarted_replica_folds_what_it_still_holds_and_drops_the_rest(tmp_path: Path) -> None:
    assert next_generation(tmp_path) == 1
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    first = IngestRound(spool, RoundPartial(0, "ingest-0", 1), INITIAL, LIMITS)
    spooled(first, spool, upload_of("site-0"))
    corrupt = spooled(first, spool, upload_of("site-1"))
    spooled(first, spool, upload_of("site-2"))
    delta = {name: np.full(values.shape, 0.5, np.float32) for name, values in INITIAL.items()}
    tensors = [
        encode_tensor(name, values, round_number=0, tags=("trained", "delta"), lossless=False)
        for name, values in delta.items()
    ]
    spooled(first, spool, task_results_bytes("site-3", 0, "train", 4, tensors))
    data = bytearray(corrupt.path.read_bytes())
    data[40] ^= 0xFF
    corrupt.path.write_bytes(bytes(data))

    generation = next_generation(tmp_path)
    restarted = IngestRound(spool, RoundPartial(0, "ingest-0", generation), INITIAL, LIMITS)
    asked: list[str] = []

    async def claim(collaborator: str, round_number: int, task: str) -> bool:
        asked.append(collaborator)
        return collaborator != "site-2"  # another replica holds site-2

    with ThreadPoolExecutor(1) as executor:
        assert asyncio.run(restarted.recover(claim, executor)) == 2
    assert generation == 2
    assert asked == ["site-0", "site-2", "site-3"]
    assert restarted.partial.contributions == {("site-0", "train"), ("site-3", "train")}
    assert [entry.sequence for entry in spool.entries(0)] == [1, 4]
    (kept,) = (tmp_path / "spool" / "quarantine").iterdir()
    assert kept.name.endswith("000002.results")
    summed = restarted.partial.tasks["train"].tensors["w"]
    site0 = IngestRound(spool, RoundPartial(0, "check", 0), INITIAL, LIMITS)
    contribution = site0.read(spool.entries(0)[0])
    assert contribution is not None
    site0.fold(spool.entries(0)[0], contribution)
    expected = site0.partial.tasks["train"].tensors["w"].values + 4.0 * (INITIAL["w"].reshape(-1) + 0.5)
    np.testing.assert_array_equal(summed.values, expected)
