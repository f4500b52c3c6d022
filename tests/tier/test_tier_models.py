"""The round's model from the root to a replica over the tier port: streamed, checked, kept, reused."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from fedagg.protocol import tier_pb2
from fedagg.tier.model_files import ModelCopies, ModelMismatch
from fedagg.tier.root_link import LinkTimings, RootLink, RootUnreachable, TierRefusal
from tests.support.pki import Pki
from tests.tier.roots import running_root


def model_bytes() -> bytes:
    return bytes(range(256)) * 9000  # 2.3 MB: three chunks


def test_a_replica_fetches_the_rounds_model_once_and_keeps_a_checked_copy(
    tier_pki: Pki, tmp_path: Path
) -> None:
    served = tmp_path / "root-model.pbuf"
    served.write_bytes(model_bytes())
    copies = ModelCopies(tmp_path / "replica" / "models")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            async with running_root(tier_pki, tmp_path / "root", model_file={3: served}.get) as root:
                link = RootLink(
                    f"localhost:{root.port}",
                    tier_pki.client("ingest-0").credentials(),
                    LinkTimings(patience_seconds=2),
                )
                path = await link.fetch_model(3, copies, executor)
                assert path.read_bytes() == model_bytes()
                with pytest.raises(TierRefusal) as refused:
                    await link.fetch_model(4, copies, executor)
                assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert "no model of round 4" in str(refused.value)
                await link.close()
            served.unlink()  # the root is gone and its file too: the kept copy serves
            offline = RootLink("localhost:1", tier_pki.client("ingest-0").credentials())
            assert await offline.fetch_model(3, copies, executor) == path
            await offline.close()

    asyncio.run(scenario())
    checksum = copies.path(3).with_suffix(".sha256").read_text().strip()
    assert checksum == hashlib.sha256(model_bytes()).hexdigest()


def test_a_copy_that_does_not_match_its_checksum_is_not_used(tmp_path: Path) -> None:
    copies = ModelCopies(tmp_path)
    copies.path(0).write_bytes(b"model")
    copies.path(0).with_suffix(".sha256").write_text(hashlib.sha256(b"other").hexdigest())
    assert copies.kept(0) is None
    assert not copies.path(0).exists()


def test_copies_of_rounds_the_root_moved_past_are_deleted(tmp_path: Path) -> None:
    copies = ModelCopies(tmp_path)
    for round_number in range(3):
        copies.path(round_number).write_bytes(b"model")
        copies.path(round_number).with_suffix(".sha256").write_text(hashlib.sha256(b"model").hexdigest())

    copies.drop_before(1)

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "model-000001.pbuf",
        "model-000001.sha256",
        "model-000002.pbuf",
        "model-000002.sha256",
    ]
    assert copies.kept(1) == copies.path(1)


def test_a_stream_that_does_not_match_what_it_announced_is_refused_and_not_kept(tmp_path: Path) -> None:
    copies = ModelCopies(tmp_path)

    async def chunks() -> AsyncIterator[tier_pb2.ModelChunk]:
        yield tier_pb2.ModelChunk(size=5, sha256=hashlib.sha256(b"model").hexdigest(), data=b"mod")
        yield tier_pb2.ModelChunk(data=b"el!")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor, pytest.raises(ModelMismatch, match="has 6 bytes"):
            await copies.receive(0, chunks(), executor)

    asyncio.run(scenario())
    assert list(tmp_path.iterdir()) == []


def test_a_model_the_root_cannot_read_is_unavailable_and_retried_until_the_links_patience(
    tier_pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            missing = {0: tmp_path / "gone.pbuf"}.get
            async with running_root(tier_pki, tmp_path / "root", model_file=missing) as root:
                link = RootLink(
                    f"localhost:{root.port}",
                    tier_pki.client("ingest-0").credentials(),
                    LinkTimings(patience_seconds=0.5, initial_backoff=0.1),
                )
                with pytest.raises(RootUnreachable, match="UNAVAILABLE: the root cannot read its model now"):
                    await link.fetch_model(0, ModelCopies(tmp_path / "models"), executor)
                await link.close()

    asyncio.run(scenario())
