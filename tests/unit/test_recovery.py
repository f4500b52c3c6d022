"""Acknowledged means durable: restarts resume the same round and count every contribution exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.integrity import FileDigest
from fedagg.federation.store import StateStore
from fedagg.protocol.model_file import read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, hand_out, metric, run_round, submit, submit_training

PAIR = ("one", "two")


def restart(directory: Path, rounds: int = 2) -> Federation:
    return restart_federation(directory, make_plan(PAIR, rounds))


def train(federation: Federation, collaborator: str, round_number: int, value: float, size: int) -> None:
    submit_training(federation, collaborator, round_number, value, size, SHAPES)


def test_restart_mid_round_resumes_it_and_counts_each_contribution_once(tmp_path: Path) -> None:
    reference = make_federation(tmp_path / "reference", make_plan(PAIR, 2), zero_model())
    run_round(reference, 0, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES)
    crashed = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(crashed, 0, {"one": (1.0, 10)}, SHAPES)
    submit(crashed, "two", 0, TASKS[0], 5, [metric("acc", 3.0, 0, "validate_agg")])
    train(crashed, "two", 0, 3.0, 30)

    resumed = restart(tmp_path)

    assert resumed.round_number == 0
    assert [task.name for task in resumed.get_tasks("two").tasks] == [TASKS[2]]
    assert resumed.get_tasks("one").sleep_seconds == 1
    assert (
        "already sent" in submit(resumed, "two", 0, TASKS[1], 30, [metric("loss", 3.0, 0)]).admission.message
    )
    submit(resumed, "two", 0, TASKS[2], 5, [metric("acc", 3.0, 0, "validate_local")])
    assert resumed.round_number == 1
    np.testing.assert_array_equal(
        read_model(tmp_path / "last.pbuf").tensors["w"],
        read_model(tmp_path / "reference" / "last.pbuf").tensors["w"],
    )
    assert [(r.origin, r.task, r.name, r.value) for r in resumed.metrics.history()] == [
        (r.origin, r.task, r.name, r.value) for r in reference.metrics.history()
    ]


def test_restart_at_a_round_boundary(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 3), zero_model())
    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES)

    resumed = restart(tmp_path, rounds=3)

    assert resumed.get_tasks("one").round_number == 1
    assert len(resumed.metrics.history()) == len(federation.metrics.history())
    run_round(resumed, 1, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES, delta=True)
    assert resumed.round_number == 2


def test_crash_during_the_round_end_redoes_it(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
    submit(federation, "two", 0, TASKS[0], 5, [metric("acc", 3.0, 0, "validate_agg")])
    train(federation, "two", 0, 3.0, 30)
    models = tmp_path / "state" / "models"
    (models / "round-000001.pbuf").write_bytes(b"torn write of the next model")  # died before the checkpoint

    resumed = restart(tmp_path)
    submit(resumed, "two", 0, TASKS[2], 5, [metric("acc", 3.0, 0, "validate_local")])

    assert resumed.round_number == 1
    np.testing.assert_array_equal(read_model(models / "round-000001.pbuf").tensors["w"], np.full((2, 3), 2.5))


def test_partial_uploads_are_discarded_on_restart(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    partial = federation._store.spool.open()
    partial.write(b"half an upload")

    restart(tmp_path)

    assert list((tmp_path / "state" / "spool" / "incoming").iterdir()) == []


def test_quit_jobs_sent_survive_a_restart(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 1), zero_model())
    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES)
    hand_out(federation, "one")

    resumed = restart(tmp_path, rounds=1)

    assert resumed.finished
    assert not resumed.all_quit_jobs_sent
    assert resumed.get_tasks("one").quit_recorded
    hand_out(resumed, "two")
    assert resumed.all_quit_jobs_sent


def test_state_of_another_federation_is_refused(tmp_path: Path) -> None:
    make_federation(tmp_path, make_plan(PAIR, 1), zero_model())
    other = make_plan(PAIR, 1)
    other = type(other)(**{**other.__dict__, "federation_uuid": "other_fed"})
    federation = Federation(
        other, StateStore(tmp_path / "state"), ModelOutputs(tmp_path / "b", tmp_path / "l")
    )

    with pytest.raises(FailedPrecondition, match="belongs to federation 'testfed_0123abcd'"):
        federation.restore()


def test_fresh_state_without_initial_model_is_refused(tmp_path: Path) -> None:
    federation = Federation(
        make_plan(PAIR, 1), StateStore(tmp_path / "s"), ModelOutputs(tmp_path / "b", tmp_path / "l")
    )

    with pytest.raises(FailedPrecondition, match="no initial model"):
        federation.restore()


def test_a_changed_initial_model_is_reported_and_the_state_directory_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = FileDigest(10, 1), FileDigest(10, 2)
    make_federation(tmp_path, make_plan(PAIR, 2), zero_model(), initial_model_digest=first)
    outputs = ModelOutputs(tmp_path / "best.pbuf", tmp_path / "last.pbuf")

    for digest, warned in ((first, False), (second, True)):
        caplog.clear()
        federation = Federation(
            make_plan(PAIR, 2), StateStore(tmp_path / "state"), outputs, initial_model_digest=digest
        )
        federation.restore()

        assert ("is not the model this state directory started from" in caplog.text) == warned
        assert federation.round_number == 0
