"""Differential privacy from partial sums: contributions clipped at the replicas (as a single pod's round end clips
them), delivered over the tier protocol, merged, and noised once by the root's mechanism."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from fedagg.federation.aggregators.base import BoundedAggregator
from fedagg.federation.aggregators.clipping import HeldValues, clip_contribution, clip_scales, clipped
from fedagg.federation.aggregators.clipping import update_norms as norms_of
from fedagg.federation.aggregators.elementwise import FedCurvWeightedAverage, WeightedAverage
from fedagg.federation.aggregators.privacy import GaussianMechanism
from fedagg.protocol import tier_pb2
from fedagg.tier.division import divide, task_inputs
from fedagg.tier.partials import RoundPartial, merge
from fedagg.tier.wire import PartialRefused, partial_chunks, received_partial
from tests.support.aggregation import Model, aggregate, inputs_of, model_of

SITES = ("site-0", "site-1", "site-2", "site-3")
WEIGHTS = (120.0, 7.0, 33.0, 1.0)
CLIP = 3.0
INNER: dict[str, Callable[[], BoundedAggregator]] = {
    "weighted_average": WeightedAverage,
    "fedcurv_weighted_average": FedCurvWeightedAverage,
}


def mechanism(inner: str) -> GaussianMechanism:
    return GaussianMechanism(
        INNER[inner](),
        noise_multiplier=0.7,
        clipping_norm=CLIP,
        adaptive=True,
        clipped_count_stddev=2.0,
        seed=5,
    )


def sites_models(model: Model) -> list[Model]:
    """Each site moves every tensor of ``model`` (a FedCurv Fisher term too, if it has one): norms about 1, 2, 4 and 8,
    two above CLIP."""
    rng = np.random.default_rng(9)
    return [
        {
            name: (values + rng.standard_normal(values.shape) * 2**index / 4.6).astype(np.float32)
            for name, values in model.items()
        }
        for index in range(len(SITES))
    ]


def received(chunks: list[tier_pb2.PartialChunk], replica: str) -> RoundPartial:
    """The partial the root receives from ``chunks`` over the tier protocol."""

    async def stream() -> AsyncIterator[tier_pb2.PartialChunk]:
        for chunk in chunks:
            yield chunk

    return asyncio.run(received_partial(stream(), replica, 1 << 30))


def clipped_partials(
    models: list[Model], model: Model, norm: float = CLIP, inner: str = "weighted_average"
) -> list[RoundPartial]:
    """Two replicas' partials: every contribution clipped to ``norm`` before it is folded, as an ingest round
    folds it (FedCurv's Fisher terms summed unweighted)."""
    fedcurv = inner == "fedcurv_weighted_average"
    replicas = [RoundPartial(0, f"ingest-{index}", 1) for index in range(2)]
    for index, site in enumerate(SITES):
        tensors, was_clipped = clip_contribution(models[index], model, norm)
        replicas[index % 2].fold(
            "train",
            site,
            WEIGHTS[index],
            tensors,
            plain=lambda name: fedcurv and name.endswith("_u"),
            clipping=(norm, was_clipped),
        )
    return replicas


def test_a_contribution_clipped_alone_has_the_round_ends_values_bit_for_bit() -> None:
    model = {**model_of(np.random.default_rng(2)), "w_u": np.zeros(4, np.float32)}
    models = sites_models(model)
    inputs, _ = inputs_of(models, WEIGHTS, model)
    scales = clip_scales(norms_of(inputs), CLIP)
    assert list(scales < 1) == [False, False, True, True]
    together = clipped(inputs, scales)
    for index, contribution in enumerate(models):
        alone, was_clipped = clip_contribution(contribution, model, CLIP)
        assert was_clipped == bool(scales[index] < 1)
        for tensor in together.tensors:
            np.testing.assert_array_equal(
                alone[tensor.name].reshape(-1), tensor.sources[index].block(0, tensor.size)
            )


@pytest.mark.parametrize("inner", sorted(INNER))
def test_noise_added_once_to_the_merged_clipped_sums_is_a_single_pods_private_aggregate(inner: str) -> None:
    model = {**model_of(np.random.default_rng(2)), "w_u": np.zeros(4, np.float32)}
    models = sites_models(model)
    pod = mechanism(inner)
    expected = aggregate(pod, models, WEIGHTS, model)
    assert expected is not None
    root = mechanism(inner)
    merged = merge(
        0,
        [received(list(partial_chunks(p)), p.replica) for p in clipped_partials(models, model, inner=inner)],
    )
    assert merged.tasks["train"].clipped == 2
    got = divide(root, 0, "train", merged.tasks["train"], model)
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-6, atol=1e-6)
    assert root.save() == pod.save()  # the adaptive norm moved alike, from the same noised count
    assert root.report() == pod.report()


def test_a_tensor_few_sent_sizes_the_noise_by_its_own_contributors() -> None:
    model = model_of(np.random.default_rng(2))
    models = sites_models(model)
    models[1]["extra"] = np.ones(3, np.float32)  # one site sends a tensor the model lacks: share 1 for it
    merged = merge(0, clipped_partials(models, model)).tasks["train"]
    private = mechanism("weighted_average")

    inputs, _ = task_inputs(
        0, "train", merged, private, lambda name: HeldValues(model[name]) if name in model else None
    )

    assert inputs.clipped is not None
    contributed = inputs.clipped.contributed
    extra = next(tensor for tensor in contributed.tensors if tensor.name == "extra")
    assert [contributed.collaborators[index] for index in extra.contributors] == [SITES[1]]
    assert extra.weights == (WEIGHTS[1],)
    assert private.sensitivity_share(contributed) == 1.0
    whole = next(tensor for tensor in contributed.tensors if tensor.name == "w")
    assert sorted(whole.weights) == sorted(WEIGHTS)


def test_partials_clipped_to_another_norm_than_the_rounds_are_refused() -> None:
    model = model_of(np.random.default_rng(2))
    models = sites_models(model)
    other = merge(0, clipped_partials(models, model, norm=2.0)).tasks["train"]
    with pytest.raises(
        ValueError, match=r"clipped its contributions to 2\.0, the round's clipping norm is 3\.0"
    ):
        divide(mechanism("weighted_average"), 0, "train", other, model)
    with pytest.raises(
        ValueError, match=r"clipped its contributions to 2\.0, the round's clipping norm is None"
    ):
        divide(WeightedAverage(), 0, "train", other, model)
    unclipped = RoundPartial(0, "ingest-1", 1)
    unclipped.fold("train", "site-9", 1.0, models[0])
    with pytest.raises(ValueError, match=r"clipped to None, the contributions before it to 3\.0"):
        merge(0, [*clipped_partials(models, model), unclipped])


def test_the_mechanism_refuses_inputs_clipped_to_another_norm_than_its_own() -> None:
    model = model_of(np.random.default_rng(2))
    merged = merge(0, clipped_partials(sites_models(model), model)).tasks["train"]
    inputs, _ = task_inputs(
        0, "train", merged, mechanism("weighted_average"), lambda name: HeldValues(model[name])
    )
    moved = mechanism("weighted_average")
    moved.clipping_norm = 2.5

    with pytest.raises(ValueError, match=r"clipped to 3\.0, the round's clipping norm is 2\.5"):
        moved.prepare(inputs)


def test_a_partial_claiming_more_clipped_contributions_than_it_holds_is_refused() -> None:
    model = model_of(np.random.default_rng(2))
    partial = clipped_partials(sites_models(model), model)[0]
    chunks = list(partial_chunks(partial))
    chunks[0].header.tasks[0].clipped = 3

    with pytest.raises(PartialRefused, match=r"TaskPartial\.clipped is 3 of 2 contributions clipped to 3\.0"):
        received(chunks, partial.replica)
