"""The spool writes new uploads over a dropped round's files: each sealed file holds exactly its own upload."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedagg.federation.integrity import verify_footer
from fedagg.federation.spool import Spool

PAYLOAD_HEAD = 64


def spool_upload(spool: Spool, round_number: int, sequence: int, payload: bytes) -> Path:
    writer = spool.open()
    writer.write(payload)
    digest = writer.seal()
    entry = spool.accept(writer, round_number, sequence)
    assert verify_footer(entry.path) == digest
    return entry.path


def test_a_dropped_rounds_uploads_are_written_over_and_cut_to_each_new_upload(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    long_upload = b"\xaa" * (3 << 20)
    old = spool_upload(spool, 0, 1, long_upload)
    old_inode = old.stat().st_ino
    spool.drop_rounds_before(1)
    assert not old.exists()

    short_upload = b"\x55" * (1 << 20)
    new = spool_upload(spool, 1, 1, short_upload)
    assert new.stat().st_ino == old_inode, "the new upload was written over the dropped round's file"
    assert new.read_bytes()[: len(short_upload)] == short_upload
    assert new.stat().st_size < len(long_upload), "the reused file was cut to the new upload and its footer"

    another = spool_upload(spool, 1, 2, short_upload)
    assert another.stat().st_ino != old_inode, "with the pool empty, a new file"


def test_files_nobody_took_are_deleted_when_the_next_round_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    for sequence in (1, 2):
        spool_upload(spool, 0, sequence, b"x" * PAYLOAD_HEAD)
    spool.drop_rounds_before(1)
    pooled = sorted((tmp_path / "spool" / "recycled").iterdir())
    assert len(pooled) == 2
    spool_upload(spool, 1, 1, b"y" * PAYLOAD_HEAD)  # takes one of them
    spool.drop_rounds_before(2)
    remaining = sorted((tmp_path / "spool" / "recycled").iterdir())
    assert len(remaining) == 1, "the pool holds round 1's one upload, not round 0's untaken file"
    assert not set(remaining) & set(pooled)


@pytest.mark.parametrize("left", [0, 1])
def test_a_restart_keeps_the_pool_for_the_next_uploads(tmp_path: Path, left: int) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    for sequence in range(left):
        spool_upload(spool, 0, sequence + 1, b"z" * PAYLOAD_HEAD)
    spool.drop_rounds_before(1)
    restarted = Spool(tmp_path / "spool")
    restarted.prepare()
    path = spool_upload(restarted, 1, 1, b"w" * PAYLOAD_HEAD)
    assert path.read_bytes()[:PAYLOAD_HEAD] == b"w" * PAYLOAD_HEAD
    assert not list((tmp_path / "spool" / "recycled").iterdir())
