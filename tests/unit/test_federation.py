"""The round state machine (spec §3.4-3.9, §3.11), driven without a network."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.contribution import RejectionReason
from fedagg.federation.errors import FailedPrecondition, InvalidRequest, NotFound
from fedagg.federation.federation import Federation, ModelOutputs
from fedagg.federation.intake import IgnoreReason
from fedagg.federation.plan import (
    AssignerKind,
    AssignerSpec,
    StragglerPolicyKind,
    StragglerPolicySpec,
    TaskGroup,
)
from fedagg.federation.serving import DELTA_BLOCK_ELEMENTS, TensorRequest, TensorServer
from fedagg.federation.store import StateStore
from fedagg.protocol import base_pb2
from fedagg.protocol.codec import decode_tensor, encode_tensor
from fedagg.protocol.model_file import LoadedModel, read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import ManualClock, make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, hand_out, metric, run_round, submit, submit_training, weights

PAIR = ("one", "two")


def model_value(
    federation: Federation, name: str, round_number: int, tags: tuple[str, ...] = ("model",)
) -> np.ndarray:
    encoded = federation.encoded_tensor(TensorRequest(name, round_number, False, tags, True))
    return decode_tensor(base_pb2.NamedTensor.FromString(encoded))


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    return make_federation(tmp_path, make_plan(PAIR, rounds=2), zero_model())


# GetTasks ---------------------------------------------------------------------------------------------------------


def test_get_tasks_hands_out_the_plan_tasks_with_all_fields(federation: Federation) -> None:
    reply = federation.get_tasks("one")

    assert (reply.round_number, reply.quit, reply.sleep_seconds) == (0, False, 0)
    assert [task.name for task in reply.tasks] == list(TASKS)
    assert [(task.function, task.task_type, task.apply_local) for task in reply.tasks] == [
        ("validate_task", "validate", False),
        ("train_task", "train", False),
        ("validate_task", "validate", True),
    ]


def test_get_tasks_drops_tasks_already_done_then_sleeps(federation: Federation) -> None:
    submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 0.5, 0, "validate_agg")])

    assert [task.name for task in federation.get_tasks("one").tasks] == list(TASKS[1:])
    run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
    waiting = federation.get_tasks("one")
    assert (waiting.tasks, waiting.sleep_seconds, waiting.quit) == ((), 1, False)


def test_quit_takes_priority_once_training_is_over(federation: Federation) -> None:
    for round_number in range(2):
        run_round(federation, round_number, {"one": (1.0, 10), "two": (2.0, 10)}, SHAPES)

    assert federation.finished
    reply = federation.get_tasks("one")
    assert (reply.quit, reply.tasks, reply.sleep_seconds, reply.round_number) == (True, (), 0, 2)
    assert not reply.quit_recorded, "a quit job is recorded durably before it is handed out"
    federation.record_quit("one")
    assert federation.get_tasks("one").quit_recorded
    assert not federation.all_quit_jobs_sent
    hand_out(federation, "two")
    assert federation.all_quit_jobs_sent


# SendLocalTaskResults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [False, True])
def test_weighted_average_of_full_and_delta_updates(federation: Federation, delta: bool) -> None:
    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES, delta=delta)

    assert federation.round_number == 1
    np.testing.assert_allclose(model_value(federation, "w", 1), np.full((2, 3), 2.5))


def test_delta_is_added_to_the_round_model(federation: Federation) -> None:
    run_round(federation, 0, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)
    run_round(federation, 1, {"one": (2.0, 10), "two": (4.0, 10)}, SHAPES, delta=True)

    np.testing.assert_allclose(model_value(federation, "b", 2), np.full(3, 1 + 3.0))


@pytest.mark.parametrize(
    ("round_number", "setup", "reason"),
    [
        (1, lambda _f: None, "results are for round 1, the current round is 0"),
        (
            0,
            lambda f: submit(f, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")]),
            "already sent",
        ),
    ],
)
def test_wrong_round_and_duplicates_are_ignored_without_change(
    federation: Federation, round_number: int, setup: object, reason: str
) -> None:
    setup(federation)  # type: ignore[operator]
    before = federation.metrics.history()

    outcome = submit(
        federation, "one", round_number, TASKS[0], 5, [metric("acc", 9, round_number, "validate_agg")]
    )

    assert not outcome.accepted
    assert reason in outcome.admission.message
    assert federation.metrics.history() == before


def test_results_after_the_end_are_ignored(federation: Federation) -> None:
    for round_number in range(2):
        run_round(federation, round_number, {"one": (1.0, 10), "two": (2.0, 10)}, SHAPES)

    outcome = submit(federation, "one", 2, TASKS[0], 5, [metric("acc", 1, 2, "validate_agg")])

    assert outcome.admission.message == "the experiment has finished"


@pytest.mark.parametrize(
    ("task", "tensors", "reason", "message"),
    [
        (
            TASKS[0],
            [encode_tensor("acc", np.zeros(2), round_number=0, tags=["metric"], report=True)],
            RejectionReason.METRIC_SHAPE,
            "metrics must be scalars",
        ),
        (
            TASKS[1],
            [weights("w", 1, (2, 3), 0).__class__(name="w", tags=["trained"])],
            RejectionReason.CODEC,
            "lacks the 'compressed' tag",
        ),
        (
            TASKS[1],
            [weights("zz", 1, (2,), 0, delta=True)],
            RejectionReason.DELTA_BASE,
            "delta tensor 'zz' has no base",
        ),
        (
            TASKS[1],
            [weights("w", 1, (3, 2), 0)],
            RejectionReason.SHAPE,
            r"shape \[3, 2\] but round 0's model has \[2, 3\]",
        ),
        (
            TASKS[1],
            [encode_tensor("w", np.zeros((2, 3)), round_number=0, tags=["model"])],
            RejectionReason.ROLE,
            "fedagg accepts metrics",
        ),
        (
            TASKS[1],
            [weights("w", 1, (2, 3), 0), weights("w", 2, (2, 3), 0)],
            RejectionReason.DUPLICATE_TENSOR,
            "repeats",
        ),
        (TASKS[1], [weights("w", np.nan, (2, 3), 0)], RejectionReason.NON_FINITE, "NaN or infinite"),
        (TASKS[0], [metric("acc", np.inf, 0, "validate_agg")], RejectionReason.NON_FINITE, "'acc'"),
    ],
)
def test_bad_uploads_are_rejected_recorded_and_never_enter_the_round(
    federation: Federation,
    task: str,
    tensors: list[base_pb2.NamedTensor],
    reason: RejectionReason,
    message: str,
) -> None:
    outcome = submit(federation, "one", 0, task, 10, tensors)

    assert outcome.rejected == reason
    assert re.search(message, outcome.message)
    assert task not in [t.name for t in federation.get_tasks("one").tasks], "the task counts as received"
    assert federation.metrics.history() == []
    spool = federation._store.root / "spool"
    assert list(spool.rglob("*.results")) == []
    assert len(list(spool.rglob("*.rejected"))) == 1, "the rejection is durable"
    one = federation.describe().collaborators[0]
    assert one.rejected_tasks == (task,)


def test_a_rejected_upload_is_excluded_and_the_round_still_completes(federation: Federation) -> None:
    submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])
    nan_weights = [metric("loss", 1, 0), weights("w", np.nan, (2, 3), 0), weights("b", 7, (3,), 0)]
    assert submit(federation, "one", 0, TASKS[1], 10, nan_weights).rejected == RejectionReason.NON_FINITE
    submit(federation, "one", 0, TASKS[2], 5, [metric("acc", 1, 0, "validate_local")])
    run_round(federation, 0, {"two": (3.0, 30)}, SHAPES)

    assert federation.round_number == 1
    np.testing.assert_array_equal(model_value(federation, "w", 1), np.full((2, 3), 3.0))
    np.testing.assert_array_equal(model_value(federation, "b", 1), np.full(3, 3.0))


def test_an_unknown_task_is_ignored(federation: Federation) -> None:
    outcome = submit(federation, "one", 0, "nope", 10, [])

    assert outcome.admission.ignored == IgnoreReason.UNKNOWN_TASK
    assert "not a task of this plan" in outcome.admission.message


def test_negative_data_size_other_than_minus_one_is_rejected(federation: Federation) -> None:
    outcome = submit(federation, "one", 0, TASKS[0], -5, [metric("acc", 1, 0, "validate_agg")])

    assert (outcome.rejected, outcome.message) == (
        RejectionReason.DATA_SIZE,
        "TaskResults.data_size is -5; expected the number of samples (>= 0) or -1",
    )


def test_uploads_are_checked_against_the_model_not_against_each_other(federation: Federation) -> None:
    """Regression (layout poisoning): the first upload of a task no longer fixes what the others must send."""
    first = [metric("accuracy", 1, 0, "validate_agg"), metric("bogus", 5, 0, "validate_agg")]
    assert submit(federation, "one", 0, TASKS[0], 5, first).accepted
    assert submit(federation, "two", 0, TASKS[0], 5, [metric("accuracy", 3, 0, "validate_agg")]).accepted
    one_weight_only = [metric("loss", 1, 0), weights("w", 1, (2, 3), 0)]
    assert submit(federation, "one", 0, TASKS[1], 10, one_weight_only).accepted
    with_optimizer_state = [weights("w", 3, (2, 3), 0), weights("b", 3, (3,), 0), weights("opt", 9, (4,), 0)]
    assert submit(federation, "two", 0, TASKS[1], 10, with_optimizer_state).accepted
    for name in ("one", "two"):
        submit(federation, name, 0, TASKS[2], 5, [metric("accuracy", 1, 0, "validate_local")])

    assert federation.round_number == 1
    np.testing.assert_array_equal(model_value(federation, "w", 1), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(model_value(federation, "b", 1), np.full(3, 3.0))
    with pytest.raises(NotFound, match="'opt' is not in round 1's model"):  # one sender: it never joins
        model_value(federation, "opt", 1)
    aggregated = {
        r.name: r.value
        for r in federation.metrics.history()
        if r.origin == "aggregator" and r.task == TASKS[0]
    }
    assert aggregated == {"accuracy": 2.0, "bogus": 5.0}


def test_a_task_not_assigned_is_ignored(tmp_path: Path) -> None:
    plan = make_plan(
        PAIR,
        1,
        assigner=AssignerSpec(
            AssignerKind.STATIC_GROUPED,
            (
                TaskGroup("train", TASKS, collaborators=("one",)),
                TaskGroup("eval", TASKS[:1], collaborators=("two",)),
            ),
        ),
    )
    federation = make_federation(tmp_path, plan, zero_model())

    outcome = submit(federation, "two", 0, TASKS[1], 10, [metric("loss", 1, 0)])

    assert outcome.admission.ignored == IgnoreReason.NOT_ASSIGNED
    assert "not assigned to two" in outcome.admission.message


# Round end and stragglers -------------------------------------------------------------------------------------------


def test_cutoff_closes_the_round_with_stragglers_after_the_minimum(tmp_path: Path) -> None:
    clock = ManualClock()
    plan = make_plan(
        ("one", "two", "three"), 2, stragglers=StragglerPolicySpec(cutoff_seconds=60, minimum_reporting=2)
    )
    federation = make_federation(tmp_path, plan, zero_model(), clock=clock)
    federation.get_tasks("one")
    run_round(federation, 0, {"one": (1.0, 10)}, SHAPES)
    clock.now += 61

    federation.tick()
    assert federation.round_number == 0, "one collaborator done is below minimum_reporting"

    run_round(federation, 0, {"two": (3.0, 10)}, SHAPES)
    assert federation.round_number == 1
    np.testing.assert_allclose(model_value(federation, "w", 1), np.full((2, 3), 2.0))
    late = submit(federation, "three", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])
    assert "current round is 1" in late.admission.message


def test_seconds_to_deadline_counts_from_the_first_task_handed_out(tmp_path: Path) -> None:
    clock = ManualClock()
    plan = make_plan(PAIR, 1, stragglers=StragglerPolicySpec(cutoff_seconds=30))
    federation = make_federation(tmp_path, plan, zero_model(), clock=clock)

    assert federation.seconds_to_deadline() is None
    federation.get_tasks("two")
    clock.now += 10
    assert federation.seconds_to_deadline() == pytest.approx(20)


def test_percentage_policy_marks_the_rest_as_stragglers(tmp_path: Path) -> None:
    plan = make_plan(
        ("one", "two", "three", "four"),
        2,
        stragglers=StragglerPolicySpec(
            StragglerPolicyKind.PERCENTAGE, percent_needed=0.5, minimum_reporting=1
        ),
    )
    federation = make_federation(tmp_path, plan, zero_model())
    run_round(federation, 0, {"one": (1.0, 10), "two": (2.0, 10)}, SHAPES)

    assert federation.round_number == 1
    statuses = {c.name: c.status for c in federation.describe().collaborators}
    assert statuses["three"] == "waiting"


# Serving aggregated tensors ----------------------------------------------------------------------------------------


def test_both_request_forms_and_their_reply_tags(federation: Federation) -> None:
    run_round(federation, 0, {"one": (2.0, 10), "two": (2.0, 10)}, SHAPES)
    run_round(federation, 1, {"one": (5.0, 10), "two": (5.0, 10)}, SHAPES)

    model = base_pb2.NamedTensor.FromString(
        federation.encoded_tensor(TensorRequest("w", 2, False, ("model",), True))
    )
    delta = base_pb2.NamedTensor.FromString(
        federation.encoded_tensor(TensorRequest("w", 2, False, ("aggregated", "delta", "compressed"), False))
    )

    assert (list(model.tags), model.round_number, model.lossless) == (["compressed", "model"], 2, True)
    assert (list(delta.tags), delta.round_number, delta.lossless) == (
        ["aggregated", "compressed", "delta"],
        2,
        True,
    )
    np.testing.assert_array_equal(decode_tensor(model), np.full((2, 3), 5.0))
    np.testing.assert_array_equal(decode_tensor(delta), np.full((2, 3), 3.0))


def test_served_model_data_is_a_view_of_the_model_file_and_deltas_are_computed_per_reply(
    federation: Federation, tmp_path: Path
) -> None:
    run_round(federation, 0, {"one": (2.0, 10), "two": (2.0, 10)}, SHAPES)

    model = federation.served_tensor(TensorRequest("w", 1, False, ("model",), True))
    delta = federation.served_tensor(TensorRequest("w", 1, False, ("aggregated", "delta"), False))

    data = model.parts()[-1]
    assert isinstance(data, memoryview)
    assert mapped_file_of(data), "no copy is made before the reply is joined"
    model.release()
    computed = delta.parts()[-1]
    delta.release()
    assert not mapped_file_of(computed), "a delta is computed when its reply is built"
    np.testing.assert_array_equal(np.frombuffer(computed, np.float32), np.full(6, 2.0))  # 2.0 minus 0.0
    assert not (tmp_path / "state" / "deltas").exists(), "no delta file is written at a round end"


def test_the_size_of_a_served_tensor_is_known_before_its_parts_are_built(
    federation: Federation, tmp_path: Path
) -> None:
    run_round(federation, 0, {"one": (2.0, 10), "two": (2.0, 10)}, SHAPES)
    submit_training(federation, "one", 1, 0.5, 10, SHAPES, delta=True)
    submit_training(federation, "two", 1, 3.0, 10, SHAPES)
    kept = {number: federation_model(tmp_path, number) for number in (0, 1)}
    fallback = TensorServer()
    fallback.install(kept, 1)
    forms = {
        "model": federation.served_tensor(TensorRequest("w", 1, False, ("model",), True)),
        "delta": federation.served_tensor(TensorRequest("w", 1, False, ("aggregated", "delta"), False)),
        "computed delta": fallback.served(TensorRequest("w", 1, False, ("aggregated", "delta"), False)),
        "own delta": federation.served_tensor(TensorRequest("w", 1, False, ("one", "trained"), True), "one"),
        "own results": federation.served_tensor(
            TensorRequest("w", 1, False, ("two", "trained"), True), "two"
        ),
    }

    for form, served in forms.items():
        encoded = b"".join(served.parts())
        served.release()
        assert served.size == len(encoded), form
        assert served.header.name == "w", form
    values = {
        form: decode_tensor(base_pb2.NamedTensor.FromString(b"".join(served.parts())))
        for form, served in forms.items()
    }
    np.testing.assert_array_equal(values["computed delta"], values["delta"])
    np.testing.assert_array_equal(values["own delta"], np.full((2, 3), 2.5))
    np.testing.assert_array_equal(values["own results"], np.full((2, 3), 3.0))
    assert mapped_file_of(forms["own results"].parts()[-1]), "own results are a view of the spooled upload"


def federation_model(tmp_path: Path, round_number: int) -> LoadedModel:
    return read_model(tmp_path / "state" / "models" / f"round-{round_number:06d}.pbuf")


def mapped_file_of(data: bytes | memoryview) -> bool:
    owner: object = data.obj if isinstance(data, memoryview) else data
    while isinstance(owner, (np.ndarray, memoryview)):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    return isinstance(owner, mmap.mmap)


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (TensorRequest("nope", 0, False, ("model",), True), NotFound, "not in round 0's model"),
        (TensorRequest("w", 5, False, ("model",), True), FailedPrecondition, "round 5 has not started"),
        (TensorRequest("w", 0, False, ("aggregated", "delta"), True), NotFound, "no delta for round 0"),
        (TensorRequest("w", 0, False, ("trained",), True), InvalidRequest, "name no served tensor"),
        (TensorRequest("w", 0, True, ("model",), True), InvalidRequest, "report is true"),
    ],
)
def test_bad_tensor_requests(
    federation: Federation, request_: TensorRequest, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        federation.encoded_tensor(request_)


def test_old_rounds_are_evicted(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, rounds=3), zero_model())
    for round_number in range(3):
        run_round(federation, round_number, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)

    with pytest.raises(NotFound, match="no longer kept"):
        federation.encoded_tensor(TensorRequest("w", 1, False, ("model",), True))
    assert sorted(p.name for p in (tmp_path / "state" / "models").glob("round-*.pbuf")) == [
        "round-000002.pbuf",
        "round-000003.pbuf",
    ]


# Models written ---------------------------------------------------------------------------------------------------


def test_last_model_includes_the_final_aggregate_and_best_follows_validate_agg(
    federation: Federation,
) -> None:
    run_round(federation, 0, {"one": (4.0, 10), "two": (4.0, 10)}, SHAPES)  # validate_agg of model 0: 4.0
    run_round(federation, 1, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)  # validate_agg of model 1: 1.0

    last = read_model(federation.trained_model(best=False))
    best = read_model(federation.trained_model(best=True))
    assert last.round_number == 2
    np.testing.assert_array_equal(last.tensors["w"], np.full((2, 3), 1.0))
    assert best.round_number == 0
    np.testing.assert_array_equal(best.tensors["w"], np.zeros((2, 3)))


def test_no_model_before_the_first_round_ends(federation: Federation) -> None:
    with pytest.raises(FailedPrecondition, match="no last model yet"):
        federation.trained_model(best=False)


def test_resume_from_a_model_of_a_later_round(tmp_path: Path) -> None:
    federation = Federation(
        make_plan(PAIR, rounds=5),
        StateStore(tmp_path / "s"),
        ModelOutputs(tmp_path / "b.pbuf", tmp_path / "l.pbuf"),
        initial_model=LoadedModel(3, zero_model()),
    )
    federation.restore()

    assert federation.get_tasks("one").round_number == 3
    run_round(federation, 3, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)
    run_round(federation, 4, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)
    assert federation.finished
    assert federation.describe().progress == 1.0


# Metrics and status --------------------------------------------------------------------------------------------------


def test_metrics_from_collaborators_then_aggregated(federation: Federation) -> None:
    run_round(federation, 0, {"one": (1.0, 10), "two": (3.0, 30)}, SHAPES)

    aggregated = {(r.task, r.name): r.value for r in federation.metrics.history() if r.origin == "aggregator"}
    assert aggregated[(TASKS[1], "loss")] == pytest.approx(2.5)
    assert aggregated[(TASKS[0], "acc")] == pytest.approx(2.0)  # validation data sizes are equal
    origins = [r.origin for r in federation.metrics.history()]
    assert origins.index("aggregator") > max(i for i, o in enumerate(origins) if o == "two")


def test_describe_reports_real_progress(federation: Federation) -> None:
    assert federation.describe().status == "pending"
    federation.get_tasks("one")
    submit(federation, "one", 0, TASKS[0], 5, [metric("acc", 1, 0, "validate_agg")])

    status = federation.describe()
    one, two = status.collaborators
    assert (status.status, status.current_round, status.total_rounds) == ("in_progress", 0, 2)
    assert (one.status, one.current_task, one.next_task) == ("training", TASKS[1], TASKS[2])
    assert one.progress == pytest.approx(1 / 3)
    assert (two.status, two.current_task) == ("waiting", TASKS[0])
    assert dict(status.models) == {"best": "pending", "last": "pending", "init": "ready"}


def test_training_held_and_silent_collaborators(tmp_path: Path) -> None:
    clock = ManualClock()
    federation = make_federation(tmp_path, make_plan(PAIR, 2, sleep_seconds=10), zero_model(), clock=clock)
    federation.contact_started("one")
    federation.get_tasks("one")
    federation.contact_ended("one")
    run_round(federation, 0, {"two": (1.0, 10)}, SHAPES)
    federation.contact_started("two")  # a long call in progress: a held GetTasks
    clock.now += 31

    one, two = federation.describe().collaborators

    assert (one.status, two.status) == ("training", "held"), "training makes no call; a held call is contact"
    assert one.last_contact is not None
    assert two.last_contact is not None
    assert two.last_contact - one.last_contact == pytest.approx(31, abs=2), "one trains since its call ended"
    federation.contact_ended("two")
    clock.now += 31
    assert [c.status for c in federation.describe().collaborators] == ["training", "silent"]
    federation.contact_started("two")
    assert federation.describe().collaborators[1].status == "held"


def test_done_and_quit_are_kept_across_a_restart(tmp_path: Path) -> None:
    plan = make_plan(PAIR, 2)
    federation = make_federation(tmp_path, plan, zero_model())
    run_round(federation, 0, {"one": (1.0, 10), "two": (1.0, 10)}, SHAPES)
    run_round(federation, 1, {"two": (1.0, 10)}, SHAPES)

    restarted = restart_federation(tmp_path, plan)

    one, two = restarted.describe().collaborators
    assert (one.status, one.last_contact) == ("waiting", None), "one may train across the restart: not silent"
    assert (two.status, two.progress) == ("done", 1.0), "its uploads of round 1 are in the spool"


def test_a_computed_delta_spanning_several_blocks_equals_the_whole_subtraction_and_a_reshaped_tensor_has_none(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    size = DELTA_BLOCK_ELEMENTS * 2 + 5
    previous, model = (rng.standard_normal(size, dtype=np.float32) for _ in range(2))
    server = TensorServer()
    server.install(
        {
            0: LoadedModel(0, {"w": previous, "b": np.zeros(3, np.float32)}),
            1: LoadedModel(1, {"w": model, "b": np.zeros((3, 1), np.float32)}),
        },
        1,
    )

    served = server.served(TensorRequest("w", 1, False, ("aggregated", "delta", "compressed"), False))
    delta = decode_tensor(base_pb2.NamedTensor.FromString(b"".join(served.parts())))
    served.release()

    assert delta.tobytes() == np.subtract(model, previous, dtype=np.float32).tobytes()
    with pytest.raises(NotFound, match="another shape"):
        server.served(TensorRequest("b", 1, False, ("aggregated", "delta", "compressed"), False))
