"""Folding contributions as they arrive (fedagg.federation.fold): plan order whatever the arrival order, stragglers
left out, and a round end that starts from the folded sums gives the very bits of one that reads the spool."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.aggregators.base import TensorInputs
from fedagg.federation.aggregators.elementwise import FedCurvWeightedAverage, Median, WeightedAverage
from fedagg.federation.events import FederationListener
from fedagg.federation.federation import Federation
from fedagg.federation.fold import RoundFold
from fedagg.federation.fold_sums import SumFile
from fedagg.federation.intake import Admission, UploadIntake
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.plan import AggregationSpec, default_tasks
from fedagg.federation.published import ModelOutputs
from fedagg.federation.replay import read_spooled_upload
from fedagg.federation.rounds import AcceptedUpload, CloseDecision, Round
from fedagg.federation.sources import ModelValues, uploaded_values
from fedagg.federation.store import StateStore
from fedagg.protocol.codec import FLOAT32, encode_tensor
from fedagg.protocol.model_file import LoadedModel, read_model
from tests.support.servers import ManualClock, make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, metric, submit, task_results_bytes, validate_locally
from tests.unit.test_round_engine import FailingStore

TRIO = ("one", "two", "three")
SIZES = {"one": 3, "two": 7, "three": 11}
SHAPES = {"w": (300, 7), "b": (13,)}


def model_values(seed: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    return {name: generator.normal(size=shape).astype(FLOAT32) for name, shape in SHAPES.items()}


MODEL = model_values(0)


class Spooled:
    """A round of TRIO on a real spool, with uploads recorded one by one as the commits do."""

    def __init__(
        self, directory: Path, method: str = "weighted_average", sum_file: SumFile | None = None
    ) -> None:
        self.store = StateStore(directory / "state")
        self.store.prepare()
        self.sum_file = sum_file or SumFile(self.store.spool.root)
        self.plan = make_plan(TRIO, 1)
        tasks = dict(default_tasks())
        tasks[TASKS[1]] = dataclasses.replace(tasks[TASKS[1]], aggregation=AggregationSpec(method))
        self.aggregators = TaskAggregators(make_plan(TRIO, 1, tasks=tasks))
        model = LoadedModel(0, MODEL)
        self.round = Round(
            0,
            dict.fromkeys(TRIO, TASKS),
            TASKS,
            model,
            self.plan.limits.resolve(sum(values.nbytes for values in MODEL.values())),
            frozenset(SHAPES),
        )
        self.lock = threading.Lock()
        self.fold = RoundFold(self.round, self.aggregators, self.lock, self.sum_file)
        self.uploads: dict[str, AcceptedUpload] = {}

    def arrive(
        self, collaborator: str, tasks: tuple[str, ...] = TASKS, delta: bool = False, fold: bool = True
    ) -> None:
        """``collaborator``'s uploads of ``tasks`` are committed; the fold worker then runs (if ``fold``)."""
        for task in tasks:
            upload = self._spool(collaborator, task, delta)
            with self.lock:
                self.round.record(collaborator, task, upload)
            if task == TASKS[1]:
                self.uploads[collaborator] = upload
        if fold:
            self.fold.advance()

    def _spool(self, collaborator: str, task: str, delta: bool) -> AcceptedUpload:
        tensors = [metric("acc", 0.5, 0)]
        if task == TASKS[1]:
            trained = model_values(len(collaborator) + ord(collaborator[0]))
            tags = ("trained", "delta") if delta else ("trained",)
            tensors += [
                encode_tensor(name, values - MODEL[name] if delta else values, round_number=0, tags=tags)
                for name, values in trained.items()
            ]
        writer = self.store.spool.open()
        writer.write(task_results_bytes(collaborator, 0, task, SIZES[collaborator], tensors))
        writer.seal()
        entry = self.store.spool.accept(writer, 0, self.round.next_sequence())

        def make_intake(header: object) -> UploadIntake:
            admission = Admission(collaborator, task, 0, SIZES[collaborator])
            return UploadIntake(admission, self.round.model.tensors, self.round.limits)

        intake, digest = read_spooled_upload(entry.path, make_intake)
        assert intake is not None
        return AcceptedUpload(intake.contribution(), entry, digest)

    def aggregate(self, name: str, done: tuple[str, ...], folded: bool) -> np.ndarray:
        """The round end's weighted average of ``name`` over ``done``, from the folded sums or the spool only."""
        kept = [self.uploads[collaborator] for collaborator in done]
        tensors = [next(t for t in upload.contribution.weights if t.name == name) for upload in kept]
        order = [(upload.contribution.collaborator, upload.contribution.weight) for upload in kept]
        inputs = TensorInputs(
            name,
            SHAPES[name],
            tuple(range(len(kept))),
            tuple(
                uploaded_values(u.entry.path, t, self.round.model) for u, t in zip(kept, tensors, strict=True)
            ),
            tuple(weight for _, weight in order),
            ModelValues(self.round.model, name),
            block_elements=1000,
            folded=self.fold.prefix(TASKS[1], name, order) if folded else None,
        )
        blocks: list[np.ndarray] = []
        assert WeightedAverage().combine(inputs, blocks.append)
        return np.concatenate(blocks)


def test_uploads_are_folded_in_plan_order_whatever_order_they_arrive_in(tmp_path: Path) -> None:
    spooled = Spooled(tmp_path)

    spooled.arrive("three")
    assert spooled.fold.folded(TASKS[1]) == (), "'three' waits for the collaborators before it in the plan"
    spooled.arrive("one")
    assert spooled.fold.folded(TASKS[1]) == ("one",)
    spooled.arrive("two")
    assert spooled.fold.folded(TASKS[1]) == TRIO


def test_a_straggler_in_the_middle_leaves_the_round_end_to_the_spool_with_the_same_bits(
    tmp_path: Path,
) -> None:
    spooled = Spooled(tmp_path)

    spooled.arrive("one")
    spooled.arrive("two", TASKS[:2])  # trained, but its last task never comes: a straggler
    spooled.arrive("three")

    assert spooled.fold.folded(TASKS[1]) == TRIO, "folded as committed, before anyone knew"
    checked = spooled.fold.stop(CloseDecision(("one", "three"), ("two",)))
    assert checked >= {upload.entry.path for upload in spooled.uploads.values()}, "checked once, by the fold"
    for name in SHAPES:
        assert spooled.fold.prefix(TASKS[1], name, [("one", 3.0), ("three", 11.0)]) is None
        np.testing.assert_array_equal(
            spooled.aggregate(name, ("one", "three"), folded=True),
            spooled.aggregate(name, ("one", "three"), folded=False),
        )


def test_a_collaborator_missing_from_the_round_ends_the_prefix_before_it(tmp_path: Path) -> None:
    spooled = Spooled(tmp_path)

    spooled.arrive("one")
    spooled.arrive("three")  # "two" never sends anything: the frontier waits at it

    assert spooled.fold.folded(TASKS[1]) == ("one",)
    checked = spooled.fold.stop(CloseDecision(("one", "three"), ("two",)))
    assert spooled.uploads["one"].entry.path in checked
    assert spooled.uploads["three"].entry.path not in checked, "past the frontier: the round end checks it"
    for name in SHAPES:
        prefix = spooled.fold.prefix(TASKS[1], name, [("one", 3.0), ("three", 11.0)])
        assert prefix is not None
        assert prefix.count == 1
        np.testing.assert_array_equal(
            spooled.aggregate(name, ("one", "three"), folded=True),
            spooled.aggregate(name, ("one", "three"), folded=False),
        )


@pytest.mark.parametrize("delta", [False, True], ids=["absolute", "delta"])
def test_the_folded_average_has_the_bits_of_the_spooled_one(tmp_path: Path, delta: bool) -> None:
    spooled = Spooled(tmp_path)
    for collaborator in ("two", "one", "three"):
        spooled.arrive(collaborator, delta=delta)
    checked = spooled.fold.stop(CloseDecision(TRIO, ()))
    assert checked >= {upload.entry.path for upload in spooled.uploads.values()}

    for name, values in SHAPES.items():
        folded = spooled.aggregate(name, TRIO, folded=True)
        np.testing.assert_array_equal(folded, spooled.aggregate(name, TRIO, folded=False))
        assert folded.size == int(np.prod(values))
        summed = sum(SIZES[c] * spooled_values(spooled, c, name).astype(np.float64) for c in TRIO)
        np.testing.assert_array_equal(folded, (summed / sum(SIZES.values())).astype(FLOAT32))


def test_the_next_rounds_fold_writes_over_the_sum_file_with_the_bits_of_the_spool(tmp_path: Path) -> None:
    first = Spooled(tmp_path / "first")
    for collaborator in TRIO:
        first.arrive(collaborator)
    first.fold.stop(CloseDecision(TRIO, ()))
    first.fold.close()
    second = Spooled(tmp_path / "second", sum_file=first.sum_file)
    for collaborator in ("two", "one"):
        second.arrive(collaborator)
    second.fold.stop(CloseDecision(("one", "two"), ("three",)))

    assert len(scratch_files(tmp_path / "first" / "state")) == 1, "one sum file, kept from the first round"
    for name in SHAPES:
        folded = second.aggregate(name, ("one", "two"), folded=True)
        np.testing.assert_array_equal(folded, second.aggregate(name, ("one", "two"), folded=False))


def spooled_values(spooled: Spooled, collaborator: str, name: str) -> np.ndarray:
    upload = spooled.uploads[collaborator]
    tensor = next(t for t in upload.contribution.weights if t.name == name)
    source = uploaded_values(upload.entry.path, tensor, spooled.round.model)
    return source.block(0, source.size)


@pytest.mark.parametrize("method", ["median", "fedcurv_weighted_average"])
def test_only_the_weighted_average_is_folded(tmp_path: Path, method: str) -> None:
    spooled = Spooled(tmp_path, method)
    for collaborator in TRIO:
        spooled.arrive(collaborator)

    aggregator = spooled.aggregators[TASKS[1]]
    assert isinstance(aggregator, Median | FedCurvWeightedAverage)
    expected = TRIO if method == "fedcurv_weighted_average" else ()  # no Fisher term among SHAPES
    assert spooled.fold.folded(TASKS[1]) == expected


def test_a_corrupt_upload_is_not_folded_and_the_frontier_waits_before_it(tmp_path: Path) -> None:
    spooled = Spooled(tmp_path)
    spooled.arrive("one", fold=False)
    path = spooled.uploads["one"].entry.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    spooled.arrive("two")

    assert spooled.fold.folded(TASKS[1]) == ()
    assert path not in spooled.fold.stop(CloseDecision(TRIO, ())), (
        "the round end checks it (and quarantines it)"
    )
    for name in SHAPES:
        assert spooled.fold.prefix(TASKS[1], name, [("one", 3.0), ("two", 7.0)]) is None


class FoldWatcher(FederationListener):
    """Lets a test wait until the fold worker has folded given uploads."""

    def __init__(self) -> None:
        self._folded: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def contribution_folded(self, collaborator: str, task: str, round_number: int, seconds: float) -> None:
        with self._changed:
            self._folded.append((collaborator, task))
            self._changed.notify_all()

    def wait_for(self, *collaborators: str) -> None:
        wanted = [(collaborator, TASKS[1]) for collaborator in collaborators]
        with self._changed:
            assert self._changed.wait_for(lambda: self._folded == wanted, timeout=60), self._folded


def test_a_round_redone_after_a_crash_has_the_bits_of_the_folded_one(tmp_path: Path) -> None:
    """One federation folds the first two uploads before the last arrives; another vanishes before the last
    collaborator is done and resumes from its spool: their next models are byte for byte the same."""
    models = []
    for run, crash in (("folded", False), ("redone", True)):
        plan = make_plan(TRIO, 2)
        watcher = FoldWatcher()
        federation = make_federation(tmp_path / run, plan, MODEL, listener=watcher)
        for collaborator in TRIO:
            if collaborator == TRIO[-1] and not crash:
                watcher.wait_for(*TRIO[:-1])  # the last one's sum then starts from the folded ones
            submit(federation, collaborator, 0, TASKS[0], 5, [metric("acc", 0.5, 0, "validate_agg")])
            trained = model_values(ord(collaborator[0]))
            tensors = [
                encode_tensor(name, values, round_number=0, tags=("trained",))
                for name, values in trained.items()
            ]
            submit(federation, collaborator, 0, TASKS[1], SIZES[collaborator], tensors)
            if collaborator == TRIO[-1] and crash:
                federation = restart_federation(tmp_path / run, plan)
            validate_locally(federation, collaborator, 0)
        assert federation.round_number == 1
        models.append((tmp_path / run / "last.pbuf").read_bytes())
    assert models[0] == models[1]
    assert set(read_model(tmp_path / "folded" / "last.pbuf").tensors) == set(SHAPES)


def scratch_files(state: Path) -> list[str]:
    """This process's open files under the spool directory that are deleted (the fold's scratch files)."""
    spool = str(state / "spool")
    targets = [os.readlink(link) for link in Path("/proc/self/fd").iterdir() if link.is_symlink()]
    return [target for target in targets if target.startswith(spool) and target.endswith("(deleted)")]


def test_a_failed_round_end_frees_the_fold_and_its_retry_reads_the_spool(tmp_path: Path) -> None:
    clock = ManualClock()
    watcher = FoldWatcher()
    federation = Federation(
        make_plan(TRIO, 1),
        FailingStore(tmp_path / "state", 1),
        ModelOutputs(tmp_path / "best.pbuf", tmp_path / "last.pbuf"),
        initial_model=LoadedModel(0, MODEL),
        listener=watcher,
        clock=clock,
    )
    federation.restore()
    for collaborator in TRIO:
        trained = model_values(ord(collaborator[0]))
        tensors = [
            encode_tensor(name, values, round_number=0, tags=("trained",)) for name, values in trained.items()
        ]
        submit(federation, collaborator, 0, TASKS[0], 5, [metric("acc", 0.5, 0, "validate_agg")])
        submit(federation, collaborator, 0, TASKS[1], SIZES[collaborator], tensors)
    watcher.wait_for(*TRIO)
    assert scratch_files(tmp_path / "state"), "the sums are in a scratch file"
    for collaborator in TRIO:
        validate_locally(federation, collaborator, 0)

    assert federation.round_number == 0, "the model could not be written"
    assert not scratch_files(tmp_path / "state"), "the scratch file is freed for the retry"
    clock.now += 1.0
    federation.tick()
    assert federation.round_number == 1
    expected = {
        name: (
            sum(SIZES[c] * model_values(ord(c[0]))[name].astype(np.float64) for c in TRIO)
            / sum(SIZES.values())
        )
        for name in SHAPES
    }
    for name, values in read_model(tmp_path / "last.pbuf").tensors.items():
        np.testing.assert_array_equal(values, expected[name].astype(FLOAT32))
