"""Regressions of the round engine: no collaborator, disk fault or crash may stall, poison or corrupt a round.

Each test names the defect of issue 8 it pins down (a misbehaving collaborator, a full disk, a racing quit job).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.contribution import RejectionReason
from fedagg.federation.errors import StorageUnavailable
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.plan import (
    StragglerPolicyKind,
    StragglerPolicySpec,
    TaskSpec,
    UploadLimits,
    single_group_assigner,
)
from fedagg.federation.serving import TensorRequest
from fedagg.federation.store import ModelWriter, StateStore
from fedagg.protocol import base_pb2
from fedagg.protocol.codec import decode_tensor
from fedagg.protocol.model_file import LoadedModel, read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import ManualClock, make_federation, make_plan
from tests.support.uploads import TASKS, hand_out, metric, run_round, submit, submit_training, weights

PAIR = ("one", "two")


def model_value(federation: Federation, name: str, round_number: int) -> np.ndarray:
    encoded = federation.encoded_tensor(TensorRequest(name, round_number, False, ("model",), True))
    return decode_tensor(base_pb2.NamedTensor.FromString(encoded))


# Defect 2: a straggler's partial work never enters the sums --------------------------------------------------------


def test_a_stragglers_partial_work_is_excluded_like_openfl_does(tmp_path: Path) -> None:
    plan = make_plan(
        PAIR,
        2,
        stragglers=StragglerPolicySpec(
            StragglerPolicyKind.PERCENTAGE, percent_needed=0.5, minimum_reporting=1
        ),
    )
    federation = make_federation(tmp_path, plan, zero_model())
    submit(federation, "two", 0, TASKS[0], 5, [metric("acc", 0, 0, "validate_agg")])
    submit_training(federation, "two", 0, 100.0, 10, SHAPES)  # the straggler trained, but is not done

    run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)

    assert federation.round_number == 1
    np.testing.assert_array_equal(model_value(federation, "w", 1), np.full((2, 3), 1.0))  # not 50.5
    late = submit(federation, "two", 0, TASKS[2], 5, [metric("acc", 0, 0, "validate_local")])
    assert "round 0" in late.admission.message
    losses = [r.value for r in federation.metrics.history() if r.origin == "aggregator" and r.name == "loss"]
    assert losses == [1.0]


# Defect 4: tensors outside the model are bounded ------------------------------------------------------------------


def test_tensors_outside_the_model_are_allowed_within_their_budget_only(tmp_path: Path) -> None:
    plan = make_plan(PAIR, 1, limits=UploadLimits(extra_tensor_bytes=64))
    federation = make_federation(tmp_path, plan, zero_model())
    within = [weights("w", 1, (2, 3), 0), weights("opt", 1, (16,), 0)]
    beyond = [weights("w", 1, (2, 3), 0), weights("opt", 1, (17,), 0)]

    assert submit(federation, "one", 0, TASKS[1], 10, within).accepted
    rejected = submit(federation, "two", 0, TASKS[1], 10, beyond)

    assert rejected.rejected == RejectionReason.EXTRA_TENSOR_BUDGET
    assert "limits.extra_tensor_bytes (64 bytes)" in rejected.message


def test_an_upload_over_its_size_limit_is_refused_before_its_bulk(tmp_path: Path) -> None:
    plan = make_plan(PAIR, 1, limits=UploadLimits(upload_bytes=200, extra_tensor_bytes=1 << 20))
    federation = make_federation(tmp_path, plan, zero_model())

    outcome = submit(
        federation, "one", 0, TASKS[1], 10, [weights("w", 1, (2, 3), 0), weights("b", 1, (3,), 0)]
    )
    big = submit(federation, "two", 0, TASKS[1], 10, [weights("opt", 1, (1000,), 0)])

    assert outcome.accepted
    assert big.rejected == RejectionReason.UPLOAD_SIZE
    assert "limits.upload_bytes (200 bytes)" in big.message
    assert list((tmp_path / "state" / "spool" / "incoming").iterdir()) == []


def test_the_default_budget_follows_the_model(tmp_path: Path) -> None:
    federation = make_federation(
        tmp_path, make_plan(PAIR, 1), zero_model()
    )  # 36 bytes of model: 72 of extras
    optimizer_state = [weights("w", 1, (2, 3), 0), weights("m", 1, (9,), 0), weights("v", 1, (9,), 0)]

    assert submit(federation, "one", 0, TASKS[1], 10, optimizer_state).accepted
    too_much = submit(federation, "two", 0, TASKS[1], 10, [weights("huge", 1, (19,), 0)])
    assert too_much.rejected == RejectionReason.EXTRA_TENSOR_BUDGET


# Defect 5: non-finite values never reach the model ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_and_deltas_are_rejected(tmp_path: Path, bad: float) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 1), zero_model())
    huge = np.float32(3e38)
    poisoned = [weights("w", bad, (2, 3), 0)]
    overflowing_delta = [weights("w", huge, (2, 3), 0, delta=True)]

    assert submit(federation, "one", 0, TASKS[1], 10, poisoned).rejected == RejectionReason.NON_FINITE
    assert submit(federation, "two", 0, TASKS[1], 10, overflowing_delta).accepted, "3e38 + 0 is finite"


def test_a_delta_that_overflows_once_added_to_its_base_is_rejected(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 2), zero_model())
    run_round(federation, 0, {"one": (3e38, 10), "two": (3e38, 10)}, SHAPES)

    outcome = submit(federation, "one", 1, TASKS[1], 10, [weights("w", 3e38, (2, 3), 1, delta=True)])

    assert outcome.rejected == RejectionReason.NON_FINITE
    assert "once added to its base" in outcome.message


# Defect 6: a failed round end is retried, never a silent wedge -------------------------------------------------------


class FailingStore(StateStore):
    """A real store whose next ``failures`` model writes fail as a full disk would."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def write_model(self, round_number: int, build: Callable[[ModelWriter], None]) -> object:  # type: ignore[override]
        if self.failures and round_number > 0:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write_model(round_number, build)


def failing_federation(tmp_path: Path, failures: int, clock: ManualClock) -> Federation:
    federation = Federation(
        make_plan(PAIR, 1),
        FailingStore(tmp_path / "state", failures),
        ModelOutputs(tmp_path / "best.pbuf", tmp_path / "last.pbuf"),
        initial_model=LoadedModel(0, zero_model()),
        clock=clock,
    )
    federation.restore()
    return federation


def test_a_round_end_that_fails_is_retried_with_back_off_until_it_commits(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = failing_federation(tmp_path, failures=2, clock=clock)
    changes: list[bool] = []
    federation.health.subscribe(changes.append)

    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 10)}, SHAPES)

    assert federation.round_number == 0
    status = federation.describe()
    assert (status.round_end_failing, status.storage_failing) == (True, True)
    assert changes == [False]
    assert hand_out(federation, "one").sleep_seconds == 1, "collaborators are told to wait, not refused"
    federation.tick()
    assert federation.round_number == 0, "the retry waits for its back-off"
    clock.now += 1.0
    federation.tick()
    assert federation.round_number == 0, "second failure: the back-off doubles"
    clock.now += 1.9
    federation.tick()
    assert federation.round_number == 0
    clock.now += 0.1
    federation.tick()
    assert federation.round_number == 1
    assert federation.health.healthy
    assert changes == [False, True]
    np.testing.assert_array_equal(read_model(tmp_path / "last.pbuf").tensors["w"], np.full((2, 3), 2.0))


def test_uploads_of_a_closing_round_are_answered_ok_and_ignored(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = failing_federation(tmp_path, failures=1, clock=clock)
    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 10)}, SHAPES)

    late = submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])

    assert "has closed" in late.admission.message
    assert "one's results are counted in it" in late.admission.message, "one is not called a straggler"


def test_a_full_disk_at_upload_time_is_unavailable_and_changes_nothing(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 1), zero_model())
    federation._store.spool.accept = _raise_enospc  # type: ignore[method-assign]

    with pytest.raises(
        StorageUnavailable, match=r"state: ENOSPC \(No space left on device\); retry later"
    ) as refused:
        submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])

    assert str(tmp_path) not in str(refused.value), "no filesystem path reaches a client"
    assert federation.describe().storage_failing
    assert federation.get_tasks("one").tasks[0].name == TASKS[0], "nothing was recorded"


def _raise_enospc(*args: object) -> object:
    raise OSError(errno.ENOSPC, "No space left on device")


# Defect 7: quit checkpoints are serialised and monotone ------------------------------------------------------------


def test_concurrent_quit_jobs_are_all_recorded_and_survive_a_restart(tmp_path: Path) -> None:
    names = tuple(f"site-{index}" for index in range(12))
    tasks = {"train": TaskSpec("train", "train_task")}
    plan = make_plan(names, 1, tasks=tasks, assigner=single_group_assigner(tasks))
    federation = make_federation(tmp_path, plan, zero_model())
    for name in names:
        submit_training(federation, name, 0, 1.0, 1, SHAPES)  # "train" is this plan's only task
    assert federation.finished
    start = threading.Barrier(len(names))

    def quit_job(name: str) -> None:
        start.wait()
        hand_out(federation, name)

    threads = [threading.Thread(target=quit_job, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert federation.all_quit_jobs_sent
    restarted = make_federation(tmp_path, plan, zero_model())
    assert restarted.all_quit_jobs_sent, "no quit checkpoint overwrote another"
