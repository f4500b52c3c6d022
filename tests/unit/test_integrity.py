"""Integrity of the state directory: every file fedagg writes is checksummed and verified when read back.

A flipped byte never reaches an aggregate or a collaborator; a corrupt file is quarantined, never fatal to a
restart (regressions of issue 8, defect 8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.federation import Federation
from fedagg.federation.integrity import (
    CorruptFile,
    FileDigest,
    digest_of,
    footer,
    seal_json,
    unseal_json,
    verify_footer,
)
from fedagg.federation.serving import TensorRequest
from fedagg.protocol import base_pb2
from fedagg.protocol.codec import decode_tensor
from fedagg.protocol.model_file import read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, metric, run_round, submit, submit_training

PAIR = ("one", "two")
ROUND_0 = {"one": (1.0, 10), "two": (3.0, 30)}


def restart(directory: Path, rounds: int = 2) -> Federation:
    return restart_federation(directory, make_plan(PAIR, rounds))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def served(federation: Federation, round_number: int) -> np.ndarray:
    encoded = federation.encoded_tensor(TensorRequest("w", round_number, False, ("model",), True))
    return decode_tensor(base_pb2.NamedTensor.FromString(encoded))


def quarantined(directory: Path) -> list[str]:
    folder = directory / "state" / "quarantine"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def spooled(directory: Path, round_number: int) -> list[Path]:
    return sorted((directory / "state" / "spool" / f"round-{round_number:06d}").glob("*.results"))


# Primitives ---------------------------------------------------------------------------------------------------------


def test_a_footer_detects_any_flipped_byte_and_truncation(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    path = tmp_path / "sealed"
    path.write_bytes(payload + footer(FileDigest(len(payload), digest_of_bytes(tmp_path, payload).crc32)))

    assert verify_footer(path) == FileDigest(len(payload), digest_of(path, len(payload)).crc32)
    for offset in (0, 5000, len(payload) - 1, len(payload) + 3, path.stat().st_size - 1):
        copy = tmp_path / f"copy-{offset}"
        copy.write_bytes(path.read_bytes())
        flip(copy, offset)
        with pytest.raises(CorruptFile):
            verify_footer(copy)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptFile):
        verify_footer(path)


def digest_of_bytes(directory: Path, payload: bytes) -> FileDigest:
    scratch = directory / "scratch"
    scratch.write_bytes(payload)
    return digest_of(scratch)


def test_a_sealed_record_detects_an_edit(tmp_path: Path) -> None:
    sealed = seal_json("fedagg/test/v1", {"round": 3, "names": ["a", "b"]})

    assert unseal_json(sealed, "fedagg/test/v1", tmp_path) == {"round": 3, "names": ["a", "b"]}
    with pytest.raises(CorruptFile, match="checksum"):
        unseal_json(sealed.replace(b'"a"', b'"c"'), "fedagg/test/v1", tmp_path)
    with pytest.raises(CorruptFile, match="not a fedagg/other/v1 record"):
        unseal_json(sealed, "fedagg/other/v1", tmp_path)
    with pytest.raises(CorruptFile, match="not JSON"):
        unseal_json(b"\x00garbage", "fedagg/test/v1", tmp_path)


# Spooled uploads ----------------------------------------------------------------------------------------------------


def test_a_flipped_byte_in_an_acknowledged_upload_is_quarantined_and_the_task_handed_out_again(
    tmp_path: Path,
) -> None:
    reference = make_federation(tmp_path / "reference", make_plan(PAIR, 2), zero_model())
    run_round(reference, 0, ROUND_0, SHAPES)
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(federation, 0, {"one": ROUND_0["one"]}, SHAPES)
    submit(federation, "two", 0, TASKS[0], 5, [metric("acc", 3.0, 0, "validate_agg")])
    submit_training(federation, "two", 0, *ROUND_0["two"], SHAPES)
    train_upload = spooled(tmp_path, 0)[-1]
    flip(train_upload, train_upload.stat().st_size - 40)  # inside the last weight's values

    resumed = restart(tmp_path)

    assert [task.name for task in resumed.get_tasks("two").tasks] == [TASKS[1], TASKS[2]]
    assert len(quarantined(tmp_path)) == 1
    submit_training(resumed, "two", 0, *ROUND_0["two"], SHAPES)
    submit(resumed, "two", 0, TASKS[2], 5, [metric("acc", 3.0, 0, "validate_local")])
    assert resumed.round_number == 1
    np.testing.assert_array_equal(served(resumed, 1), served(reference, 1))


def test_a_spool_entry_replaced_by_a_directory_is_quarantined_and_the_task_handed_out_again(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])
    entry = spooled(tmp_path, 0)[-1]
    entry.unlink()
    entry.mkdir()  # reading it fails with an OSError (EISDIR), as an unreadable disk block fails with EIO

    resumed = restart(tmp_path)

    assert [task.name for task in resumed.get_tasks("one").tasks] == list(TASKS)
    assert len(quarantined(tmp_path)) == 1
    assert not entry.exists()


def test_a_garbage_spool_file_does_not_stop_a_restart(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])
    (tmp_path / "state" / "spool" / "round-000000" / "000099.results").write_bytes(np.random.bytes(4096))
    (tmp_path / "state" / "spool" / "round-000000" / "000098.rejected").write_bytes(b"{not json")

    resumed = restart(tmp_path)

    assert [task.name for task in resumed.get_tasks("one").tasks] == [TASKS[1], TASKS[2]]
    assert len(quarantined(tmp_path)) == 2


def test_an_upload_corrupted_before_its_round_ends_is_never_aggregated(tmp_path: Path) -> None:
    """ "two"'s upload waits in the spool for "one"'s (plan order) when it is damaged: nothing has read it since it
    was written, and the first read (the fold's, or the round end's) finds the damage."""
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    submit(federation, "two", 0, TASKS[0], 5, [metric("acc", 3.0, 0, "validate_agg")])
    submit_training(federation, "two", 0, *ROUND_0["two"], SHAPES)
    flip(spooled(tmp_path, 0)[-1], -40)
    run_round(federation, 0, {"one": ROUND_0["one"]}, SHAPES)

    submit(federation, "two", 0, TASKS[2], 5, [metric("acc", 3.0, 0, "validate_local")])

    assert federation.round_number == 0, "the round waits for the corrupt task to be done again"
    assert [task.name for task in federation.get_tasks("two").tasks] == [TASKS[1]]
    submit_training(federation, "two", 0, *ROUND_0["two"], SHAPES)
    assert federation.round_number == 1
    np.testing.assert_allclose(served(federation, 1), np.full((2, 3), 2.5))


# Models and checkpoints ---------------------------------------------------------------------------------------------


def test_a_deleted_kept_model_is_restored_from_its_published_link(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(federation, 0, ROUND_0, SHAPES)
    expected = served(federation, 1)
    kept = tmp_path / "state" / "models" / "round-000001.pbuf"
    kept.unlink()

    resumed = restart(tmp_path)

    np.testing.assert_array_equal(served(resumed, 1), expected)
    assert read_model(kept).tensors["w"][1, 2] == expected[1, 2]
    assert not quarantined(tmp_path)


def test_best_and_last_are_links_to_kept_models_that_are_never_written_over(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 3), zero_model())
    best, last = tmp_path / "best.pbuf", tmp_path / "last.pbuf"
    kept = tmp_path / "state" / "models"
    run_round(federation, 0, ROUND_0, SHAPES)
    assert last.samefile(kept / "round-000001.pbuf"), "linked, not copied"
    round_1 = last.read_bytes()

    with last.open("rb") as reader:  # someone outside the aggregator reading round 1's model, slowly
        run_round(federation, 1, {"one": (5.0, 10), "two": (7.0, 30)}, SHAPES, delta=True)  # model 1 is best
        assert best.samefile(kept / "round-000001.pbuf")
        assert last.samefile(kept / "round-000002.pbuf")
        run_round(federation, 2, {"one": (0.5, 10), "two": (0.5, 30)}, SHAPES, delta=True)  # model 2 is worse

        assert not (kept / "round-000001.pbuf").exists(), "pruned: rounds_kept is 2"
        assert reader.read() == round_1, "a pruned model is unlinked, never written over"
    assert best.read_bytes() == round_1, "the best model lives on as best.pbuf"
    assert last.samefile(kept / "round-000003.pbuf")
    assert sorted(path.name for path in kept.iterdir()) == ["round-000002.pbuf", "round-000003.pbuf"]
    assert not list(tmp_path.glob(".*.link-*"))


def test_a_corrupt_kept_model_and_so_its_published_link_are_redone_from_the_kept_spool(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(federation, 0, ROUND_0, SHAPES)
    expected = served(federation, 1)
    assert (tmp_path / "last.pbuf").samefile(tmp_path / "state" / "models" / "round-000001.pbuf")
    flip(tmp_path / "state" / "models" / "round-000001.pbuf", -5)

    resumed = restart(tmp_path)

    assert resumed.round_number == 1
    np.testing.assert_array_equal(served(resumed, 1), expected)
    np.testing.assert_array_equal(read_model(tmp_path / "last.pbuf").tensors["w"], expected)


def test_a_corrupt_checkpoint_falls_back_to_the_previous_round_and_redoes_it(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 3), zero_model())
    run_round(federation, 0, ROUND_0, SHAPES)
    run_round(federation, 1, ROUND_0, SHAPES, delta=True)
    expected = served(federation, 2)
    history = [(r.origin, r.task, r.name, r.value) for r in federation.metrics.history()]
    flip(tmp_path / "state" / "checkpoint.json", 40)

    resumed = restart(tmp_path, rounds=3)

    assert resumed.round_number == 2
    np.testing.assert_array_equal(served(resumed, 2), expected)
    assert [(r.origin, r.task, r.name, r.value) for r in resumed.metrics.history()] == history
    assert any("checkpoint.json" in name for name in quarantined(tmp_path))


def test_with_no_usable_checkpoint_the_start_fails_with_one_clear_message(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 3), zero_model())
    run_round(federation, 0, ROUND_0, SHAPES)
    flip(tmp_path / "state" / "checkpoint.json", 40)
    flip(tmp_path / "state" / "checkpoint.prev.json", 40)

    with pytest.raises(FailedPrecondition, match=r"no usable checkpoint .*checksum mismatch.*start over"):
        restart(tmp_path, rounds=3)
