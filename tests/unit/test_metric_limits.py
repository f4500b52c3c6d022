"""A metric flood is bounded (issue 16, item 9): metrics per upload, and metric names (series) per task."""

from __future__ import annotations

from pathlib import Path

from fedagg.federation.contribution import RejectionReason
from fedagg.federation.events import FederationListener
from fedagg.federation.federation import Federation
from fedagg.federation.plan import UploadLimits
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.tensor_fields import TensorRecord
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, metric, submit, submit_training, task_results_bytes, validate_locally

PAIR = ("one", "two")


class DroppedNames(FederationListener):
    def __init__(self) -> None:
        self.dropped: list[tuple[str, int]] = []

    def metric_names_dropped(self, task: str, count: int) -> None:
        self.dropped.append((task, count))


def validation(federation: Federation, collaborator: str, round_number: int, names: list[str]) -> None:
    metrics = [metric(name, 0.5, round_number, "validate_agg") for name in names]
    assert submit(federation, collaborator, round_number, TASKS[0], 5, metrics).accepted


def finish_round(federation: Federation, round_number: int) -> None:
    for collaborator in PAIR:
        submit_training(federation, collaborator, round_number, 1.0, 10, SHAPES)
        validate_locally(federation, collaborator, round_number)


def logged_names(federation: Federation, origin: str) -> set[str]:
    return {r.name for r in federation.metrics.history() if r.task == TASKS[0] and r.origin == origin}


def test_an_upload_with_more_metrics_than_the_limit_is_rejected_when_the_metric_beyond_it_is_decoded(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 1), zero_model())
    flood = [metric(f"m{index}", 1.0, 0, "validate_agg") for index in range(2000)]
    payload = task_results_bytes("one", 0, TASKS[0], 5, flood)
    decoder = TaskResultsDecoder()
    events = [*decoder.feed(payload), *decoder.finish()]
    header = next(event for event in events if isinstance(event, ResultsHeader))
    intake = federation.open_intake(federation.admit("one", header))
    records = [event for event in events if isinstance(event, TensorRecord)]

    for record in records[:1024]:
        intake.tensor(record)
    assert intake.rejection is None, "the default allows 1024 metrics"
    intake.tensor(records[1024])

    assert intake.rejection is not None, "refused before any value is spooled or checked"
    assert intake.rejection.reason == RejectionReason.METRIC_COUNT
    assert "limits.metrics_per_upload (1024)" in intake.rejection.message
    outcome = federation.commit(intake)
    assert outcome.rejected == RejectionReason.METRIC_COUNT
    assert logged_names(federation, "one") == set(), "nothing of the flood reaches the metric log"


def test_metric_names_beyond_the_bound_of_a_task_are_dropped_and_counted_never_creating_series(
    tmp_path: Path,
) -> None:
    listener = DroppedNames()
    plan = make_plan(PAIR, 3, limits=UploadLimits(metric_names_per_task=3))
    federation = make_federation(tmp_path, plan, zero_model(), listener=listener)

    validation(federation, "one", 0, ["acc", "loss", "f1", "junk_0", "junk_1"])
    validation(federation, "two", 0, ["acc", "junk_2"])
    finish_round(federation, 0)

    assert (
        logged_names(federation, "one")
        == logged_names(federation, "two") | {"loss", "f1"}
        == {"acc", "loss", "f1"}
    )
    assert logged_names(federation, "aggregator") == {"acc", "loss", "f1"}, (
        "no aggregated series beyond the bound"
    )
    assert listener.dropped == [(TASKS[0], 2), (TASKS[0], 1)]

    validation(federation, "one", 1, ["junk_3"])
    resumed = restart_federation(
        tmp_path, plan
    )  # the bound holds across a restart (history, then the replay)
    validation(resumed, "two", 1, ["junk_4", "f1"])
    finish_round(resumed, 1)
    assert logged_names(resumed, "aggregator") == {"acc", "loss", "f1"}
