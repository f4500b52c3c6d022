"""Corrupt state files found at a restart: the aggregator is stopped by a crash point at a known state, a file is
damaged, and the restarted aggregator must quarantine it, count it, recover, and end with the right model.

With two collaborators, three tasks and two rounds:

* ``round_end.model_written=kill@1`` stops it while round 0 ends: all six uploads of round 0 are acknowledged,
  its close decision is recorded and round 1's model is written, nothing is committed;
* ``upload.committed=kill@8`` stops it in round 1: round 0 is committed (checkpoint.json is round 1's,
  checkpoint.prev.json round 0's, round 0's spool is kept, ``last.pbuf`` is a hard link to round 1's kept
  model), round 1 has two durable uploads.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Aggregator,
    Collaborators,
    FedaggCollaborators,
    OpenflCollaborators,
    Setup,
    crash_and_restart,
    flip_byte,
    make_setup,
    quarantined,
    spooled_uploads,
    upload_header,
)
from tests.support.models import write_zero_model
from tests.support.pki import Pki

pytestmark = pytest.mark.slow

ROUNDS = 2
WHILE_ROUND_0_ENDS = "round_end.model_written=kill@1"
IN_ROUND_1 = "upload.committed=kill@8"

Damage = Callable[[Path], list[str]]
"""Damages the state directory; returns the names of the files that must end up in quarantine."""


def train_upload(state: Path, collaborator: str) -> Path:
    """``collaborator``'s acknowledged train upload in the spool."""
    found = [
        path
        for path in spooled_uploads(state)
        if (header := upload_header(path)).task_name == "train" and header.header.sender == collaborator
    ]
    assert len(found) == 1, found
    return found[0]


def flip_a_byte_of_an_acknowledged_upload(state: Path) -> list[str]:
    upload = train_upload(state, "two")
    flip_byte(upload, upload.stat().st_size // 2)  # inside its tensors
    return [upload.name]


def garbage_under_valid_names(state: Path) -> list[str]:
    """An acknowledged upload overwritten with random bytes, and random bytes as the next upload of the round."""
    noise = random.Random(7)
    upload = train_upload(state, "one")
    upload.write_bytes(noise.randbytes(upload.stat().st_size))
    stray = upload.with_name(f"{len(spooled_uploads(state)) + 1:06d}.results")
    stray.write_bytes(noise.randbytes(4096))
    return [upload.name, stray.name]


def flip_a_byte_of_the_checkpoint(state: Path) -> list[str]:
    checkpoint = state / "checkpoint.json"
    flip_byte(checkpoint, checkpoint.stat().st_size // 2)
    return [checkpoint.name]


def flip_a_byte_of_the_kept_model(state: Path) -> list[str]:
    model = state / "models" / "round-000001.pbuf"
    flip_byte(model, -1)  # the last value of its last tensor
    return [model.name]


def flip_a_byte_of_the_kept_model_and_so_of_its_published_link(state: Path) -> list[str]:
    assert (state / "last.pbuf").samefile(state / "models" / "round-000001.pbuf"), "published as a link"
    return [*flip_a_byte_of_the_kept_model(state), "checkpoint.json"]


def delete_the_kept_model(state: Path) -> list[str]:
    (state / "models" / "round-000001.pbuf").unlink()
    return []


def corrupt_and_restart(
    tmp_path: Path,
    pki: Pki,
    failpoints: str,
    damage: Damage,
    start: Callable[[Setup], Collaborators],
) -> tuple[Aggregator, list[str], list[Path]]:
    """Run until the crash point, damage the state, restart; return the restarted aggregator and what was damaged."""
    setup = make_setup(tmp_path, pki, ROUNDS, write_zero_model(tmp_path))
    restarted, damaged = crash_and_restart(setup, failpoints, start, damage, watch_metrics=True)
    return restarted, damaged, quarantined(setup.state)


def assert_quarantined(files: list[Path], damaged: list[str]) -> None:
    """Each damaged file was moved into quarantine/ (named ``<time>-<id>-<directory>-<name>``), nothing else."""
    names = [path.name for path in files]
    for name in damaged:
        assert sum(moved.endswith(f"-{name}") for moved in names) == 1, (name, names)
    assert len(names) == len(damaged), names


@pytest.mark.parametrize(
    "damage",
    [flip_a_byte_of_an_acknowledged_upload, garbage_under_valid_names],
    ids=["flipped-byte", "garbage"],
)
def test_a_corrupt_acknowledged_upload_is_quarantined_and_its_task_done_again(
    tmp_path: Path, pki: Pki, damage: Damage
) -> None:
    aggregator, damaged, files = corrupt_and_restart(
        tmp_path, pki, WHILE_ROUND_0_ENDS, damage, lambda setup: FedaggCollaborators(setup, pki)
    )

    assert_quarantined(files, damaged)
    assert aggregator.watched_metric("fedagg_state_files_quarantined_total", kind="upload") == len(damaged)
    assert aggregator.log().count("QUARANTINED") == len(damaged)
    assert "deciding again" in aggregator.log(), "round 0's recorded close decision named the lost upload"


@pytest.mark.interop
def test_openfl_collaborators_redo_a_task_whose_upload_was_corrupted(
    tmp_path: Path, pki: Pki, openfl: Path
) -> None:
    aggregator, damaged, files = corrupt_and_restart(
        tmp_path,
        pki,
        WHILE_ROUND_0_ENDS,
        flip_a_byte_of_an_acknowledged_upload,
        lambda setup: OpenflCollaborators(setup, pki, openfl),
    )

    assert_quarantined(files, damaged)
    assert aggregator.watched_metric("fedagg_state_files_quarantined_total", kind="upload") == 1


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_redoes_the_round(
    tmp_path: Path, pki: Pki
) -> None:
    aggregator, damaged, files = corrupt_and_restart(
        tmp_path,
        pki,
        IN_ROUND_1,
        flip_a_byte_of_the_checkpoint,
        lambda setup: FedaggCollaborators(setup, pki),
    )

    assert_quarantined(files, damaged)
    assert aggregator.watched_metric("fedagg_state_files_quarantined_total", kind="checkpoint") == 1
    assert "restored checkpoint checkpoint.prev.json: round 0" in aggregator.log()
    assert "replayed 6 acknowledged upload(s) of round 0" in aggregator.log()


def test_a_missing_kept_model_is_restored_from_its_published_link(tmp_path: Path, pki: Pki) -> None:
    aggregator, damaged, files = corrupt_and_restart(
        tmp_path,
        pki,
        IN_ROUND_1,
        delete_the_kept_model,
        lambda setup: FedaggCollaborators(setup, pki),
    )

    assert_quarantined(files, damaged)
    assert "round 1's model restored from last.pbuf" in aggregator.log()
    assert "restored checkpoint checkpoint.json: round 1" in aggregator.log()


def test_a_corrupt_kept_model_falls_back_a_round(tmp_path: Path, pki: Pki) -> None:
    aggregator, damaged, files = corrupt_and_restart(
        tmp_path,
        pki,
        IN_ROUND_1,
        flip_a_byte_of_the_kept_model_and_so_of_its_published_link,
        lambda setup: FedaggCollaborators(setup, pki),
    )

    assert_quarantined(files, damaged)
    assert aggregator.watched_metric("fedagg_state_files_quarantined_total", kind="model") == 1
    assert aggregator.watched_metric("fedagg_state_files_quarantined_total", kind="checkpoint") == 1
    assert "restored checkpoint checkpoint.prev.json: round 0" in aggregator.log()
