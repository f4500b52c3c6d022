"""A root's federation counts claims and divides the replicas' partials into the model a single pod builds.

The replicas here are fedagg's own ingest code in-process (spool, claim, fold: :mod:`fedagg.tier.ingest_round`);
the claims go straight to the root's claim taker (the gRPC path is covered by test_tier_protocol.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.federation import Federation
from fedagg.federation.metric_log import AGGREGATOR_ORIGIN
from fedagg.federation.plan import (
    AggregationSpec,
    FederationPlan,
    ResolvedLimits,
    StragglerPolicySpec,
    TaskSpec,
    default_tasks,
)
from fedagg.federation.serving import TensorRequest
from fedagg.federation.spool import Spool
from fedagg.protocol import tier_pb2
from fedagg.protocol.base_pb2 import NamedTensor
from fedagg.tier.claims import ClaimBook, ClaimOutcome
from fedagg.tier.collection import ClaimMismatch, PartialCollection
from fedagg.tier.ingest_round import IngestRound
from fedagg.tier.partials import RoundPartial
from fedagg.tier.root_rounds import CountedClaims, RootRounds
from fedagg.tier.round_notices import RoundNotice, RoundNotices
from tests.support.servers import ManualClock, make_federation, make_plan
from tests.support.uploads import TASKS, metric, run_round, submit, task_results_bytes, weights
from tests.tier.conftest import REPLICAS

SITES = ("site-0", "site-1", "site-2", "site-3")
SHAPES = {"conv": (3, 4), "bias": (5,)}
LIMITS = ResolvedLimits(1 << 24, 1 << 20, 1 << 24, 16)


def contributions(round_number: int) -> dict[str, tuple[float, int]]:
    return {site: (0.1 * (index + 1) + round_number, 10 + 7 * index) for index, site in enumerate(SITES)}


def tasks_of(
    site: str, round_number: int, value: float, size: int
) -> list[tuple[str, int, list[NamedTensor]]]:
    """The three default tasks' results as tests.support.uploads.run_round submits them: (task, size, tensors)."""
    trained = [weights(name, value, shape, round_number) for name, shape in SHAPES.items()]
    return [
        (TASKS[0], 5, [metric("acc", value, round_number, "validate_agg")]),
        (TASKS[1], size, [metric("loss", value, round_number), *trained]),
        (TASKS[2], 5, [metric("acc", value, round_number, "validate_local")]),
    ]


def uploads(site: str, round_number: int, value: float, size: int) -> list[tuple[str, bytes]]:
    """The three default tasks' uploads."""
    return [
        (task, task_results_bytes(site, round_number, task, data_size, tensors))
        for task, data_size, tensors in tasks_of(site, round_number, value, size)
    ]


class Root:
    def __init__(
        self,
        state: Path,
        plan: FederationPlan,
        model: dict[str, np.ndarray],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = ClaimBook(state / "tier", clock)
        self.collection = PartialCollection(self.book, REPLICAS, 300.0, clock)
        self.notices = RoundNotices()
        rounds = RootRounds(self.book, self.collection, self.notices, plan.aggregation_bytes)
        self.federation = make_federation(state, plan, model, collector=rounds, clock=clock)
        self.claims = CountedClaims(self.federation, self.book)


class Replica:
    def __init__(
        self,
        state: Path,
        name: str,
        round_number: int,
        model: dict[str, np.ndarray],
        clipping: Mapping[str, float] | None = None,
    ) -> None:
        self.spool = Spool(state / name / "spool")
        self.spool.prepare()
        partial = RoundPartial(round_number, name, 1)
        self.round = IngestRound(self.spool, partial, model, LIMITS, clipping=clipping)
        self.name = name

    def take(self, root: Root, site: str, task: str, upload: bytes) -> ClaimOutcome:
        writer = self.spool.open()
        writer.write(upload)
        writer.seal()
        entry = self.round.accept(writer)
        decision = root.claims.claim(self.round.round_number, site, task, self.name)
        if decision.outcome != ClaimOutcome.GRANTED:
            self.round.drop(entry)
            return decision.outcome
        contribution = self.round.read(entry)
        assert contribution is not None
        self.round.fold(entry, contribution)
        return decision.outcome


def model_of(federation: Federation, round_number: int) -> dict[str, np.ndarray]:
    """The model the federation serves for the round."""
    return {
        name: np.array(
            federation.served_tensor(TensorRequest(name, round_number, False, ("model",), True)).values()
        )
        for name in SHAPES
    }


@pytest.mark.parametrize("method", ["weighted_average", "adam"])
def test_the_root_divides_the_replicas_partials_into_the_single_pod_model(
    tmp_path: Path, method: str
) -> None:
    tasks = default_tasks()
    if method == "adam":
        tasks["train"] = TaskSpec(
            "train", "train_task", {"metrics": ["loss"]}, AggregationSpec("adam", {"learning_rate": 0.1})
        )
    plan = make_plan(SITES, rounds=2, tasks=tasks)
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial)
    root = Root(tmp_path / "root", plan, initial)
    for round_number in range(2):
        run_round(single, round_number, contributions(round_number), SHAPES)
        model = model_of(root.federation, round_number)
        replicas = [Replica(tmp_path / f"r{round_number}", name, round_number, model) for name in REPLICAS]
        for index, (site, (value, size)) in enumerate(contributions(round_number).items()):
            for position, (task, upload) in enumerate(uploads(site, round_number, value, size)):
                replica = replicas[(index + position) % len(replicas)]  # a site's uploads land on both
                assert replica.take(root, site, task, upload) == ClaimOutcome.GRANTED
        assert root.notices.latest is not None
        assert (root.notices.latest.round_number, root.notices.latest.phase) == (
            round_number,
            tier_pb2.COLLECTING,
        )
        assert root.federation.round_number == round_number
        for replica in replicas:
            assert root.collection.take(replica.round.partial)
        root.federation.tick()
        assert root.federation.round_number == round_number + 1
    assert (root.notices.latest.round_number, root.notices.latest.phase) == (2, tier_pb2.FINISHED)
    for round_number in (1, 2):
        expected, got = model_of(single, round_number), model_of(root.federation, round_number)
        assert expected.keys() == got.keys()
        for name in expected:
            np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)

    def history(federation: Federation) -> list[tuple[int, str, str, str, tuple[str, ...], float]]:
        return sorted(
            (r.round_number, r.origin, r.task, r.name, r.tags, r.value) for r in federation.metrics.history()
        )

    got, expected_records = history(root.federation), history(single)
    assert [record[:5] for record in got] == [record[:5] for record in expected_records]
    assert [record[5] for record in got] == pytest.approx([record[5] for record in expected_records])
    assert sum(1 for record in got if record[1] != AGGREGATOR_ORIGIN) == 2 * len(SITES) * len(TASKS)


def test_a_claim_the_round_does_not_take_is_refused_and_a_second_replica_is_told_it_is_taken(
    tmp_path: Path,
) -> None:
    plan = make_plan(SITES, rounds=1)
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    root = Root(tmp_path / "root", plan, initial)
    with pytest.raises(FailedPrecondition, match="round 3, the current round is 0"):
        root.claims.claim(3, "site-0", "train", REPLICAS[0])
    with pytest.raises(FailedPrecondition, match="not a task of this plan"):
        root.claims.claim(0, "site-0", "bogus", REPLICAS[0])
    assert root.claims.claim(0, "site-0", "train", REPLICAS[0]).outcome == ClaimOutcome.GRANTED
    taken = root.claims.claim(0, "site-0", "train", REPLICAS[1])
    assert (taken.outcome, taken.holder) == (ClaimOutcome.TAKEN, REPLICAS[0])
    assert root.claims.claim(0, "site-0", "train", REPLICAS[0]).outcome == ClaimOutcome.GRANTED
    assert root.book.claimed(0, REPLICAS[0]) == {("site-0", "train")}


def test_a_restarted_root_counts_its_claims_again_and_collects_the_partials_again(tmp_path: Path) -> None:
    plan = make_plan(SITES, rounds=1)
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial)
    run_round(single, 0, contributions(0), SHAPES)
    root = Root(tmp_path / "root", plan, initial)
    replicas = [Replica(tmp_path / "replicas", name, 0, initial) for name in REPLICAS]
    for index, (site, (value, size)) in enumerate(contributions(0).items()):
        for task, upload in uploads(site, 0, value, size):
            assert replicas[index % 2].take(root, site, task, upload) == ClaimOutcome.GRANTED
    root.collection.take(replicas[0].round.partial)
    root.book.close()

    restarted = Root(tmp_path / "root", plan, initial)  # the partial it took is gone with the process

    assert restarted.notices.latest == RoundNotice(0, tier_pb2.COLLECTING)  # every claim counted again
    for replica in replicas:
        assert restarted.collection.take(replica.round.partial)
    restarted.federation.tick()
    assert restarted.notices.latest == RoundNotice(1, tier_pb2.FINISHED)
    expected, got = model_of(single, 1), model_of(restarted.federation, 1)
    for name in expected:
        np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)


def test_a_round_closed_without_a_straggler_leaves_its_partial_work_out_of_every_partial(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    plan = make_plan(SITES, rounds=1, stragglers=StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=2))
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial, clock=clock)
    root = Root(tmp_path / "root", plan, initial, clock)
    replicas = [Replica(tmp_path / "replicas", name, 0, initial) for name in REPLICAS]
    for federation in (single, root.federation):
        federation.get_tasks(SITES[0])  # the round starts: its cutoff counts from now
    for index, (site, (value, size)) in enumerate(contributions(0).items()):
        work = tasks_of(site, 0, value, size)
        if site == SITES[3]:
            work = work[:2]  # trains, never validates its local model: a straggler with partial work
        for position, (task, data_size, tensors) in enumerate(work):
            assert submit(single, site, 0, task, data_size, tensors).accepted
            upload = task_results_bytes(site, 0, task, data_size, tensors)
            assert replicas[(index + position) % 2].take(root, site, task, upload) == ClaimOutcome.GRANTED
    clock.now += 31
    single.tick()
    assert single.round_number == 1

    root.federation.tick()

    assert root.notices.latest == RoundNotice(0, tier_pb2.COLLECTING, (SITES[3],))
    for replica in replicas:
        if any(site == SITES[3] for site, _ in replica.round.partial.contributions):
            with pytest.raises(ClaimMismatch, match="closes without"):
                root.collection.take(replica.round.partial)  # the straggler's work is refused
        assert root.collection.take(replica.round.without(frozenset({SITES[3]})))
    root.federation.tick()
    assert root.notices.latest == RoundNotice(1, tier_pb2.FINISHED)
    expected, got = model_of(single, 1), model_of(root.federation, 1)
    for name in expected:
        np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
    assert any(np.any(values != 0.5) for values in expected.values())


def test_a_lost_replicas_collaborators_become_stragglers_and_the_round_closes_without_them(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    plan = make_plan(SITES, rounds=1, stragglers=StragglerPolicySpec(cutoff_seconds=30, minimum_reporting=2))
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial, clock=ManualClock())
    single.get_tasks(SITES[0])
    root = Root(tmp_path / "root", plan, initial, clock)
    kept, lost = (Replica(tmp_path / "replicas", name, 0, initial) for name in REPLICAS)
    for site, (value, size) in contributions(0).items():
        for task, data_size, tensors in tasks_of(site, 0, value, size):
            replica = (
                lost if (site, task) == (SITES[2], TASKS[1]) else kept
            )  # site-2 trained through the lost one
            upload = task_results_bytes(site, 0, task, data_size, tensors)
            assert replica.take(root, site, task, upload) == ClaimOutcome.GRANTED
            if site != SITES[2]:
                assert submit(single, site, 0, task, data_size, tensors).accepted
    single._clock.now += 31
    single.tick()
    assert root.notices.latest == RoundNotice(0, tier_pb2.COLLECTING)
    assert root.collection.take(kept.round.partial)

    root.book.watching(kept.name, True)  # the kept replica follows the root's rounds: it is heard from
    clock.now += 301  # the replica holding site-2's training is silent past lost_replica_seconds
    root.federation.tick()

    assert root.notices.latest == RoundNotice(0, tier_pb2.COLLECTING, (SITES[2],))
    assert root.federation.round_number == 0, "the kept partial holds site-2's other work: delivered again"
    assert root.collection.take(kept.round.without(frozenset({SITES[2]})))
    root.federation.tick()
    assert root.notices.latest == RoundNotice(1, tier_pb2.FINISHED)
    expected, got = model_of(single, 1), model_of(root.federation, 1)
    for name in expected:
        np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
