"""The spool writes new uploads over a dropped round's files: each sealed file holds exactly its own upload, large
uploads take the largest pooled files, and small ones (a validation task's metrics) leave the pool alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedagg.federation.file_pool import POOLED_FROM_BYTES
from fedagg.federation.integrity import verify_footer
from fedagg.federation.spool import Spool

LARGE = POOLED_FROM_BYTES
SMALL = 64


def spool_upload(spool: Spool, round_number: int, sequence: int, payload: bytes, pieces: int = 1) -> Path:
    writer = spool.open()
    step = -(-len(payload) // pieces)
    for start in range(0, len(payload), step):
        writer.write(memoryview(payload)[start : start + step])
    digest = writer.seal()
    entry = spool.accept(writer, round_number, sequence)
    assert verify_footer(entry.path) == digest
    assert entry.path.read_bytes()[: len(payload)] == payload
    return entry.path


def pooled(spool_root: Path) -> list[Path]:
    return sorted((spool_root / "recycled").iterdir())


def test_a_dropped_rounds_uploads_are_written_over_and_cut_to_each_new_upload(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    long_upload = b"\xaa" * (3 * LARGE)
    old = spool_upload(spool, 0, 1, long_upload)
    old_inode = old.stat().st_ino
    spool.drop_rounds_before(1)
    assert not old.exists()

    shorter_upload = b"\x55" * LARGE
    new = spool_upload(spool, 1, 1, shorter_upload, pieces=4)
    assert new.stat().st_ino == old_inode, "the new upload was written over the dropped round's file"
    assert new.stat().st_size < len(long_upload), "the reused file was cut to the new upload and its footer"

    another = spool_upload(spool, 1, 2, shorter_upload)
    assert another.stat().st_ino != old_inode, "with the pool empty, a new file"


def test_a_small_upload_leaves_the_pool_to_the_next_large_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    old = spool_upload(spool, 0, 1, b"m" * (2 * LARGE))
    old_inode = old.stat().st_ino
    spool.drop_rounds_before(1)

    metrics = spool_upload(spool, 1, 1, b"s" * SMALL, pieces=2)
    assert metrics.stat().st_ino != old_inode
    assert len(pooled(tmp_path / "spool")) == 1, "the small upload did not take the pooled file"
    model = spool_upload(spool, 1, 2, b"M" * (2 * LARGE), pieces=3)
    assert model.stat().st_ino == old_inode


def test_large_uploads_take_the_largest_pooled_file_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    inodes = {
        size: spool_upload(spool, 0, sequence, b"x" * size).stat().st_ino
        for sequence, size in enumerate((LARGE, 3 * LARGE, 2 * LARGE), start=1)
    }
    spool.drop_rounds_before(1)
    taken = [spool_upload(spool, 1, sequence, b"y" * LARGE).stat().st_ino for sequence in (1, 2, 3)]
    assert taken == [inodes[3 * LARGE], inodes[2 * LARGE], inodes[LARGE]]


def test_small_files_are_not_pooled_and_untaken_ones_are_deleted_at_the_next_drop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool_upload(spool, 0, 1, b"s" * SMALL)
    for sequence in (2, 3):
        spool_upload(spool, 0, sequence, b"x" * LARGE)
    spool.drop_rounds_before(1)
    round_0 = pooled(tmp_path / "spool")
    assert len(round_0) == 2, "the two large uploads' files, not the small one's"
    spool_upload(spool, 1, 1, b"y" * LARGE)  # takes one of them
    spool.drop_rounds_before(2)
    remaining = pooled(tmp_path / "spool")
    assert len(remaining) == 1, "the pool holds round 1's one upload, not round 0's untaken file"
    assert not set(remaining) & set(round_0)


@pytest.mark.parametrize("left", [0, 1])
def test_a_restart_keeps_the_pool_for_the_next_uploads(tmp_path: Path, left: int) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    for sequence in range(left):
        spool_upload(spool, 0, sequence + 1, b"z" * LARGE)
    spool.drop_rounds_before(1)
    restarted = Spool(tmp_path / "spool")
    restarted.prepare()
    spool_upload(restarted, 1, 1, b"w" * LARGE)
    assert not pooled(tmp_path / "spool")


def test_a_discarded_small_upload_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    writer = spool.open()
    writer.write(b"partial")
    writer.discard()
    assert not list((tmp_path / "spool" / "incoming").iterdir())
