"""Server-side differential privacy through a tier: the replicas clip each contribution to the norm the root
publishes with the round, the root adds the noise once and moves an adaptive norm from the summed clipped count.
The models, the clipping norm after each round and epsilon are a single pod's, for the same experiment seed; with
clipping alone (``clipping_norm``), the models are.

The first test drives fedagg's ingest code in-process against a real root federation (tests/tier/test_root_rounds.py's
harness); the second runs replicas following the root over its tier port, collaborators uploading over gRPC
(tests/tier/ingest_tier.py's harness), so the norm reaches the replicas in the round notices. The experiment seed is the state directory's (a round end gives it to the mechanism, whatever its
``seed`` setting), so the root's state directory gets a copy of the single pod's.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.federation.aggregators.noise import SEED_FILE, experiment_seed
from fedagg.federation.federation import Federation
from fedagg.federation.plan import AggregationSpec, FederationPlan, TaskSpec, default_tasks
from fedagg.protocol import tier_pb2
from fedagg.protocol.base_pb2 import NamedTensor
from fedagg.protocol.codec import encode_tensor
from fedagg.tier.claims import ClaimOutcome
from fedagg.tier.round_notices import RoundNotice
from tests.support.pki import Pki
from tests.support.servers import make_federation, make_plan
from tests.support.uploads import TASKS, metric, submit, task_results_bytes
from tests.tier.conftest import COLLABORATORS, REPLICAS
from tests.tier.ingest_tier import INITIAL, PLAN, RootParts, running_tier
from tests.tier.test_ingest_rounds import round_through
from tests.tier.test_root_rounds import SHAPES, SITES, Replica, Root, model_of
from tests.tier.tier_rounds import model, tick_on_partials
from tests.tier.tier_rounds import work as tier_work

ROUNDS = 3
CLIP = 1.0
OFFSETS = (-0.5, 0.4, 0.05, -0.02)
"""Each site's update, per value: norms 2.06, 1.65, 0.21 and 0.08 over the 17 values (C = 1: two are clipped)."""
PRIVACY: dict[str, dict[str, Any]] = {
    "fixed": {"noise_multiplier": 0.3, "clipping_norm": CLIP},
    "adaptive": {
        "noise_multiplier": 0.3,
        "clipping_norm": CLIP,
        "adaptive": True,
        "clipped_count_stddev": 1.0,
        "target_clipped_quantile": 0.25,
    },
}


def private_plan(
    privacy: dict[str, Any] | None, sites: tuple[str, ...] = SITES, rounds: int = ROUNDS, **clipping: float
) -> FederationPlan:
    """The default tasks, ``train`` a weighted average under ``privacy`` (or only ``clipping_norm``)."""
    tasks = default_tasks()
    aggregation = AggregationSpec("weighted_average", privacy=privacy, **clipping)
    tasks["train"] = TaskSpec("train", "train_task", {"metrics": ["loss"]}, aggregation)
    return make_plan(sites, rounds=rounds, tasks=tasks)


def same_experiment_seed(single_state: Path, root_state: Path) -> None:
    """Give the root's state directory the single pod's noise seed (made now)."""
    experiment_seed(single_state)
    root_state.mkdir(parents=True, exist_ok=True)
    shutil.copy(single_state / SEED_FILE, root_state / SEED_FILE)


def work(
    index: int, round_number: int, model: dict[str, np.ndarray]
) -> list[tuple[str, int, list[NamedTensor]]]:
    """Site ``index``'s three tasks: its training moves every value of the round's model by its offset."""
    value = 0.1 * (index + 1) + round_number
    trained = [
        encode_tensor(
            name, model[name] + np.float32(OFFSETS[index]), round_number=round_number, tags=("trained",)
        )
        for name in SHAPES
    ]
    return [
        (TASKS[0], 5, [metric("acc", value, round_number, "validate_agg")]),
        (TASKS[1], 10 + 7 * index, [metric("loss", value, round_number), *trained]),
        (TASKS[2], 5, [metric("acc", value, round_number, "validate_local")]),
    ]


def figures(federation: Federation) -> dict[str, float]:
    return dict(dict(federation.describe().aggregation)["train"])


def take_round(root: Root, state: Path, single: Federation | None = None) -> list[Replica]:
    """The root's open round through two replicas that clip to the norms of its notice (and the same uploads to
    ``single``): every site's uploads land on both."""
    notice = root.notices.latest
    assert notice is not None
    round_number = notice.round_number
    model = model_of(root.federation, round_number)
    replicas = [Replica(state, name, round_number, model, dict(notice.clipping_norms)) for name in REPLICAS]
    for index, site in enumerate(SITES):
        for position, (task, size, tensors) in enumerate(work(index, round_number, model)):
            if single is not None:
                assert submit(single, site, round_number, task, size, tensors).accepted
            upload = task_results_bytes(site, round_number, task, size, tensors)
            replica = replicas[(index + position) % len(replicas)]
            assert replica.take(root, site, task, upload) == ClaimOutcome.GRANTED
    return replicas


@pytest.mark.parametrize("clipping", sorted(PRIVACY))
def test_private_rounds_through_ingest_replicas_give_the_single_pods_models_norms_and_epsilon(
    tmp_path: Path, clipping: str
) -> None:
    plan = private_plan(PRIVACY[clipping])
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial)
    root = Root(tmp_path / "root", plan, initial)
    same_experiment_seed(tmp_path / "single" / "state", tmp_path / "root" / "state")
    norms = [CLIP]
    for round_number in range(ROUNDS):
        notice = root.notices.latest
        assert notice is not None
        assert (notice.round_number, notice.phase) == (round_number, tier_pb2.OPEN)
        assert notice.clipping_norms == (("train", norms[-1]),)  # the single pod's norm of the round
        replicas = take_round(root, tmp_path / f"r{round_number}", single)
        if round_number == 0:
            counts = [r.round.partial.tasks[TASKS[1]].clipped for r in replicas]
            assert sum(counts) == 2, "sites 0 and 1 are clipped, 2 and 3 are not"
            assert all(count == 1 for count in counts), (
                "each replica clipped one site and folded another whole"
            )
        for replica in replicas:
            assert root.collection.take(replica.round.partial)
        root.federation.tick()
        assert root.federation.round_number == single.round_number == round_number + 1

        expected, got = model_of(single, round_number + 1), model_of(root.federation, round_number + 1)
        for name in SHAPES:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)
            assert not np.allclose(expected[name], expected[name].flat[0]), "noise was added"
        single_figures, root_figures = figures(single), figures(root.federation)
        assert root_figures["clipping_norm"] == pytest.approx(single_figures["clipping_norm"], rel=1e-12)
        assert root_figures["noise_stddev"] == pytest.approx(single_figures["noise_stddev"], rel=1e-12)
        assert root_figures["epsilon"] == single_figures["epsilon"] > 0
        norms.append(single_figures["clipping_norm"])
    if clipping == "adaptive":
        assert len(set(norms)) == len(norms), "adaptive clipping moved the norm every round"
    else:
        assert set(norms) == {CLIP}


def test_clipping_without_privacy_through_ingest_replicas_gives_the_single_pods_models(
    tmp_path: Path,
) -> None:
    plan = private_plan(None, clipping_norm=CLIP)
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    single = make_federation(tmp_path / "single", plan, initial)
    root = Root(tmp_path / "root", plan, initial)
    for round_number in range(ROUNDS):
        assert root.notices.latest is not None
        assert root.notices.latest.clipping_norms == (("train", CLIP),)
        for replica in take_round(root, tmp_path / f"r{round_number}", single):
            assert root.collection.take(replica.round.partial)
        root.federation.tick()

        expected, got = model_of(single, round_number + 1), model_of(root.federation, round_number + 1)
        for name in SHAPES:
            np.testing.assert_array_max_ulp(got[name], expected[name], maxulp=1)
        assert figures(root.federation) == figures(single) == {"clipped_share": 0.5}


def test_a_restarted_root_tells_the_replicas_the_norm_it_committed(tmp_path: Path) -> None:
    plan = private_plan(PRIVACY["adaptive"])
    initial = {name: np.full(shape, 0.5, np.float32) for name, shape in SHAPES.items()}
    root = Root(tmp_path / "root", plan, initial)
    for replica in take_round(root, tmp_path / "replicas"):
        assert root.collection.take(replica.round.partial)
    root.federation.tick()
    moved = figures(root.federation)["clipping_norm"]
    assert moved != CLIP
    root.book.close()

    restarted = Root(tmp_path / "root", plan, initial)

    assert restarted.notices.latest == RoundNotice(1, tier_pb2.OPEN, (), (("train", moved),))


def test_replicas_learn_the_rounds_norm_from_the_roots_notices_and_the_tier_trains_as_one_pod(
    pki: Pki, tmp_path: Path
) -> None:
    norm = 8.0  # the sites' round-0 updates have norms 5.9, 7.5, 10.8 and 13.0: two are clipped
    plan = private_plan({**PRIVACY["adaptive"], "clipping_norm": norm}, COLLABORATORS, PLAN.rounds_to_train)
    single = make_federation(tmp_path / "single", plan, INITIAL)
    parts = RootParts.counting(tmp_path, plan)
    same_experiment_seed(tmp_path / "single" / "state", tmp_path / "root" / "state")
    norms = []
    for round_number in range(plan.rounds_to_train):
        norms.append(figures(single)["clipping_norm"])
        for index, name in enumerate(COLLABORATORS):
            for task, size, tensors in tier_work(index, round_number):
                assert submit(single, name, round_number, task, size, tensors).accepted

    async def scenario() -> None:
        async with running_tier(pki, tmp_path, parts=parts) as (root, replicas):
            ticking = asyncio.create_task(tick_on_partials(root))
            for round_number in range(plan.rounds_to_train):
                for each in replicas:
                    await each.acted_on(round_number, tier_pb2.OPEN)
                    assert each.watch is not None
                    assert each.watch.notice is not None
                    assert each.watch.notice.clipping_norms == (("train", norms[round_number]),)
                await round_through(pki, replicas, round_number)
                for each in replicas:
                    current = each.uploads.round
                    assert current is not None
                    assert current.ingest.partial.tasks["train"].clipping_norm == norms[round_number]
            for each in replicas:
                await each.acted_on(plan.rounds_to_train, tier_pb2.FINISHED)
            ticking.cancel()

    asyncio.run(scenario())
    for round_number in range(1, plan.rounds_to_train + 1):
        expected, got = model(single, round_number), model(parts.federation, round_number)
        for name in INITIAL:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)
    assert figures(parts.federation) == pytest.approx(figures(single), rel=1e-12)
    assert figures(single)["clipping_norm"] != norm
