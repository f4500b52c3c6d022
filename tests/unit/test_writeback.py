"""The spool and the model writer start the disk write of each stretch of a file as soon as it is written, in
order and without gaps, and what they wrote still reads back whole (the kernel's call is watched, not replaced)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.federation import writeback
from fedagg.federation.integrity import verify_footer
from fedagg.federation.spool import Spool
from fedagg.federation.store import StateStore
from fedagg.federation.writeback import SYNC_FILE_RANGE_WRITE, WRITEBACK_BYTES

MESSAGE = 2 << 20


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (offset, length) of every write started, as the real ``sync_file_range`` got them."""
    real = writeback._sync_file_range()
    if real is None:
        assert not sys.platform.startswith("linux"), "glibc on Linux has sync_file_range"
        pytest.skip("no sync_file_range in this C library")
    calls: list[tuple[int, int]] = []

    def watched(descriptor: int, offset: int, length: int, flags: int) -> int:
        assert flags == SYNC_FILE_RANGE_WRITE, "start the write, wait for nothing"
        calls.append((offset, length))
        result: int = real(descriptor, offset, length, flags)
        assert result == 0, "the kernel took the request"
        return result

    monkeypatch.setattr(writeback, "_sync_file_range", lambda: watched)
    return calls


def assert_contiguous(calls: list[tuple[int, int]], written: int) -> None:
    assert calls, "writes were started"
    assert calls[0][0] == 0
    for (offset, length), (next_offset, _) in itertools.pairwise(calls):
        assert next_offset == offset + length, "no gap, no overlap"
    assert all(length >= WRITEBACK_BYTES for _, length in calls)
    assert written - sum(length for _, length in calls) < WRITEBACK_BYTES, (
        "only the tail is left to the fsync"
    )


def test_an_upload_starts_its_disk_write_while_it_arrives(tmp_path: Path, started: list[Any]) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    payload = np.random.default_rng(7).bytes(5 * WRITEBACK_BYTES + 12345)
    writer = spool.open()
    for start in range(0, len(payload), MESSAGE):
        writer.write(payload[start : start + MESSAGE])
    digest = writer.seal()

    assert_contiguous(started, len(payload))
    entry = spool.accept(writer, 0, 1)
    assert verify_footer(entry.path) == digest
    assert entry.path.read_bytes()[: len(payload)] == payload


def test_a_model_starts_its_disk_write_while_it_is_written(tmp_path: Path, started: list[Any]) -> None:
    store = StateStore(tmp_path / "state")
    store.prepare()
    values = np.arange(3 * WRITEBACK_BYTES // 4 + 999, dtype=np.float32)

    digest = store.write_model(1, lambda writer: writer.add("w", values))

    assert_contiguous(started, digest.size)
    assert np.array_equal(store.load_model(1, digest).tensors["w"], values)


def test_a_small_upload_is_left_to_its_fsync(tmp_path: Path, started: list[Any]) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    writer = spool.open()
    writer.write(b"m" * (WRITEBACK_BYTES - 1))
    writer.seal()
    assert started == []
