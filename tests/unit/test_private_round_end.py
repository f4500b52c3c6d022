"""A private round whose end fails at the commit point: nothing uncommitted is ever served, and the redone round
releases the very model an undisturbed run with the same experiment seed releases (issue 19, item 4).

The state directory is real; the full disk is a store whose checkpoint write fails with ENOSPC (as
tests/unit/test_round_engine.py fails its model write), then succeeds once space "returns".
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.aggregators.noise import SEED_FILE, experiment_seed
from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.plan import AggregationSpec, FederationPlan, default_tasks
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import LoadedModel, read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import ManualClock, make_federation, make_plan, restart_federation
from tests.support.uploads import run_round

PAIR = ("one", "two")
CONTRIBUTIONS = {"one": (1.0, 10), "two": (3.0, 30)}


def private_plan(rounds: int = 2) -> FederationPlan:
    tasks = default_tasks()
    privacy = {"noise_multiplier": 0.5, "clipping_norm": 1.0}
    tasks["train"] = dataclasses.replace(
        tasks["train"], aggregation=AggregationSpec("weighted_average", {}, None, privacy)
    )
    return make_plan(PAIR, rounds, tasks=tasks)


class FullAtCheckpoint(StateStore):
    """A real store whose round-boundary checkpoints fail with ENOSPC while ``full`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.full = False

    def save_checkpoint(self, checkpoint: Checkpoint, *, new_round: bool) -> None:
        if self.full and new_round:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save_checkpoint(checkpoint, new_round=new_round)


def last_model(directory: Path) -> bytes:
    return (directory / "last.pbuf").read_bytes()


def test_a_failed_commit_serves_nothing_uncommitted_and_the_redo_releases_the_same_noised_model(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    store = FullAtCheckpoint(tmp_path / "disturbed" / "state")
    disturbed = Federation(
        private_plan(),
        store,
        ModelOutputs(tmp_path / "disturbed" / "best.pbuf", tmp_path / "disturbed" / "last.pbuf"),
        initial_model=LoadedModel(0, zero_model()),
        clock=clock,
    )
    disturbed.restore()
    undisturbed = make_federation(tmp_path / "undisturbed", private_plan(), zero_model())
    seed = experiment_seed(tmp_path / "disturbed" / "state")
    shutil.copy(tmp_path / "disturbed" / "state" / SEED_FILE, tmp_path / "undisturbed" / "state" / SEED_FILE)
    store.full = True

    run_round(disturbed, 0, CONTRIBUTIONS, SHAPES)

    assert disturbed.round_number == 0, "the round did not commit"
    assert disturbed.describe().round_end_failing
    with pytest.raises(FailedPrecondition, match="no round has finished"):
        disturbed.trained_model(best=False)
    assert not (tmp_path / "disturbed" / "last.pbuf").exists(), "the uncommitted model was never published"
    assert not (tmp_path / "disturbed" / "best.pbuf").exists()
    store.full = False
    clock.now += 1.0
    disturbed.tick()
    assert disturbed.round_number == 1
    run_round(undisturbed, 0, CONTRIBUTIONS, SHAPES)

    released = last_model(tmp_path / "disturbed")
    assert released == last_model(tmp_path / "undisturbed"), "the redo released the same bits"
    assert disturbed.trained_model(best=False).read_bytes() == released
    noised = read_model(tmp_path / "disturbed" / "last.pbuf").tensors["w"]
    assert not np.allclose(noised, noised.flat[0]), "noise was added"
    epsilon = dict(dict(disturbed.describe().aggregation)["train"])["epsilon"]
    assert epsilon == dict(dict(undisturbed.describe().aggregation)["train"])["epsilon"], "counted once"
    assert (tmp_path / "disturbed" / "state" / SEED_FILE).stat().st_mode & 0o077 == 0, "owner-only"
    assert seed.hex() not in (tmp_path / "disturbed" / "state" / "checkpoint.json").read_text()


def test_a_crash_between_commit_and_publication_is_published_at_restart(tmp_path: Path) -> None:
    """Publication comes after the commit point; a restart publishes what the checkpoint names."""
    federation = make_federation(tmp_path, private_plan(), zero_model())
    run_round(federation, 0, CONTRIBUTIONS, SHAPES)
    committed = last_model(tmp_path)
    (tmp_path / "last.pbuf").write_bytes(b"the previous round's file, left by a crash before publication")

    restart_federation(tmp_path, private_plan())

    assert last_model(tmp_path) == committed


def test_the_redo_after_a_crash_draws_the_same_noise(tmp_path: Path) -> None:
    """A crash before the commit point: the restart redoes the round from the spool with the same noise."""
    reference = make_federation(tmp_path / "reference", private_plan(), zero_model())
    seed_file = tmp_path / "reference" / "state" / SEED_FILE
    run_round(reference, 0, CONTRIBUTIONS, SHAPES)
    crashed = make_federation(tmp_path / "crashed", private_plan(), zero_model())
    shutil.copy(seed_file, tmp_path / "crashed" / "state" / SEED_FILE)
    run_round(crashed, 0, CONTRIBUTIONS, SHAPES)
    state = tmp_path / "crashed" / "state"
    shutil.copy(state / "checkpoint.prev.json", state / "checkpoint.json")  # as if round 0 never committed
    (tmp_path / "crashed" / "last.pbuf").unlink()

    redone = restart_federation(tmp_path / "crashed", private_plan())

    assert redone.round_number == 1
    assert last_model(tmp_path / "crashed") == last_model(tmp_path / "reference")


class FailingPublication(StateStore):
    """A real store whose next ``failures`` publications fail with ENOSPC."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failures = 0

    def publish(self, round_number: int, target: Path) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().publish(round_number, target)


def test_a_publication_that_fails_after_the_commit_leaves_the_previous_model_served_until_retried(
    tmp_path: Path,
) -> None:
    store = FailingPublication(tmp_path / "state")
    federation = Federation(
        private_plan(rounds=3),
        store,
        ModelOutputs(tmp_path / "best.pbuf", tmp_path / "last.pbuf"),
        initial_model=LoadedModel(0, zero_model()),
    )
    federation.restore()
    run_round(federation, 0, CONTRIBUTIONS, SHAPES)
    round_1 = last_model(tmp_path)
    store.failures = 1

    run_round(federation, 1, CONTRIBUTIONS, SHAPES, delta=True)

    assert federation.round_number == 2, "the round committed"
    assert last_model(tmp_path) == round_1, "the previous round's file is still served"
    assert not federation.describe().round_end_failing
    run_round(federation, 2, CONTRIBUTIONS, SHAPES, delta=True)
    assert read_model(tmp_path / "last.pbuf").round_number == 3
