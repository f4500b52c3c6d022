"""Aggregation methods: one conformance suite every aggregator passes (built-in or plug-in), then each one's own
arithmetic on hand-made cases with a closed form (attackers included).

Comparisons with OpenFL's and Flower's own implementations run in tests/oracles (their own environments).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from fedagg.federation.aggregators import Aggregator, RoundInputs, TensorInputs, base
from fedagg.federation.aggregators.accountant import gaussian_epsilon
from fedagg.federation.aggregators.adaptive import (
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    YogiAdaptiveAggregation,
)
from fedagg.federation.aggregators.clipping import ClippedUpdates
from fedagg.federation.aggregators.distance import Bulyan, GeometricMedian, Krum
from fedagg.federation.aggregators.elementwise import (
    FedCurvWeightedAverage,
    Median,
    TrimmedMean,
    WeightedAverage,
)
from fedagg.federation.aggregators.privacy import GaussianMechanism
from fedagg.federation.aggregators.registry import BUILT_IN, make_aggregator
from fedagg.federation.plan import AggregationSpec
from fedagg.protocol.codec import Float32Array
from tests.support.aggregation import ArraySource, MemoryState, aggregate, inputs_of, model_of
from tests.support.conformance import subclasses


def ignore(block: Float32Array) -> None:
    """An emit that drops the aggregate."""


class AggregatorConformance:
    """What every aggregator must do. Each aggregator's test class subclasses this and says how to make it."""

    def make(self) -> Aggregator:
        raise NotImplementedError

    def prepared(
        self, *, seed: int, block_elements: int
    ) -> tuple[RoundInputs, list[ArraySource], Aggregator]:
        """Seven contributions near a random model, and a prepared aggregator bound to fresh state."""
        rng = np.random.default_rng(seed)
        model = model_of(rng)
        inputs, sources = inputs_of(
            [model_of(rng, 0.1) for _ in range(7)], [1] * 7, model, block_elements=block_elements
        )
        aggregator = self.make()
        aggregator.prepare(inputs)
        aggregator.bind_state(MemoryState())
        return inputs, sources, aggregator

    def test_contributions_equal_to_the_model_give_the_model(self) -> None:
        """Aggregator.combine: Contributions equal to the model MUST give the model (to float32 rounding)."""
        model = model_of(np.random.default_rng(0))

        result = aggregate(self.make(), [model] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], model)

        assert result is not None
        for name, values in model.items():
            assert result[name].dtype == np.float32
            np.testing.assert_allclose(result[name], values, rtol=1e-6, atol=1e-6)

    def test_no_contribution_gives_no_aggregate(self) -> None:
        """Aggregator.combine: It MUST return False, emitting nothing, when ``tensor`` has no contribution."""
        model = model_of(np.random.default_rng(0))
        inputs, _ = inputs_of([], [], model)
        aggregator = self.make()
        aggregator.prepare(inputs)
        aggregator.bind_state(MemoryState())
        emitted: list[Float32Array] = []

        assert not aggregator.combine(inputs.tensors[0], emitted.append)
        assert not emitted

    def test_an_aggregate_is_float32_blocks_of_the_tensors_size(self) -> None:
        """Aggregator.combine: When it returns True it MUST have emitted float32 blocks of ``tensor.size``
        values in all."""
        inputs, _, aggregator = self.prepared(seed=8, block_elements=5)
        for tensor in inputs.tensors:
            emitted: list[Float32Array] = []

            assert aggregator.combine(tensor, emitted.append)
            assert all(block.dtype == np.float32 for block in emitted)
            assert sum(block.size for block in emitted) == tensor.size

    def test_slot_values_stay_finite_under_finite_extremes(self) -> None:
        """Aggregator.bind_state: Slot values written through ``state`` MUST be finite whenever the
        contributions are finite."""
        model = {"w": np.zeros(6, np.float32)}
        extremes = [{"w": np.full(6, value, np.float32)} for value in (3e38, -3e38, 3e38, 0.5)]
        aggregator, state = self.make(), MemoryState()
        for number in range(3):
            result = aggregate(aggregator, extremes, [1, 1, 1, 1], model, state, number)
            assert result is not None
            assert np.isfinite(result["w"]).all()
            model, state = result, state.next_round()
            assert all(np.isfinite(values).all() for values in state.previous_values.values())

    def test_saved_state_is_json_and_nothing_saved_is_accepted(self) -> None:
        """Aggregator.save: The result MUST be JSON values. Aggregator.load: It MUST accept ``{}`` (nothing saved
        yet)."""
        rng = np.random.default_rng(9)
        model = model_of(rng)
        aggregator = self.make()
        aggregator.load({})
        aggregate(aggregator, [model_of(rng, 0.1) for _ in range(7)], [1] * 7, model)

        assert json.loads(json.dumps(aggregator.save())) == aggregator.save()

    def test_report_never_raises(self) -> None:
        """Aggregator.report: It MUST NOT raise, before any round too."""
        rng = np.random.default_rng(10)
        model = model_of(rng)
        aggregator = self.make()
        assert all(isinstance(value, float | int) for value in aggregator.report().values())
        aggregate(aggregator, [model_of(rng, 0.1) for _ in range(7)], [1] * 7, model)
        assert all(isinstance(value, float | int) for value in aggregator.report().values())

    def test_deterministic(self) -> None:
        """Aggregator.combine: The same inputs, state and loaded state MUST give the same bits (no clock, no
        unseeded generator), so a redone round gives the same model."""
        rng = np.random.default_rng(4)
        model = model_of(rng)
        contributions = [model_of(rng, shift=0.1) for _ in range(7)]

        first = aggregate(self.make(), contributions, [1, 2, 3, 4, 5, 6, 7], model)
        second = aggregate(self.make(), contributions, [1, 2, 3, 4, 5, 6, 7], model)

        assert first is not None
        assert second is not None
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])

    def test_the_result_does_not_depend_on_the_block_size(self) -> None:
        """Aggregator.combine: The aggregate MUST NOT depend on the block size."""
        rng = np.random.default_rng(5)
        model = model_of(rng)
        contributions = [model_of(rng, shift=0.2) for _ in range(7)]
        whole = aggregate(self.make(), contributions, [3, 1, 4, 1, 5, 9, 2], model)

        pieces = aggregate(self.make(), contributions, [3, 1, 4, 1, 5, 9, 2], model, block_elements=5)

        assert whole is not None
        assert pieces is not None
        for name in whole:
            np.testing.assert_allclose(pieces[name], whole[name], rtol=1e-6, atol=1e-7)

    def test_contributions_are_read_block_by_block(self) -> None:
        """Aggregator.prepare: It MUST read contributions only through their sources, at most one block of
        ``tensor.blocks()`` at a time."""
        inputs, sources, aggregator = self.prepared(seed=6, block_elements=4)
        for tensor in inputs.tensors:
            aggregator.combine(tensor, ignore)

        assert max(source.widest for source in sources) <= 4, (
            "no whole tensor of a contributor is read at once"
        )

    def test_its_state_survives_a_restart(self) -> None:
        """Aggregator.load: ``load(save())`` on a fresh instance MUST aggregate the next round as the saved one
        would."""
        rng = np.random.default_rng(7)
        model = model_of(rng)
        rounds = [[model_of(rng, 0.3) for _ in range(7)] for _ in range(2)]
        running, state = self.make(), MemoryState()
        aggregate(running, rounds[0], [1] * 7, model, state)
        saved = dict(running.save())

        restarted = self.make()
        restarted.load(saved)
        expected = aggregate(running, rounds[1], [1] * 7, model, state.next_round())
        actual = aggregate(restarted, rounds[1], [1] * 7, model, state.next_round())

        assert expected is not None
        assert actual is not None
        for name in expected:
            np.testing.assert_array_equal(actual[name], expected[name])


class TestWeightedAverage(AggregatorConformance):
    def make(self) -> Aggregator:
        return WeightedAverage()

    def test_weights_by_data_size_like_numpy_average(self) -> None:
        rng = np.random.default_rng(1)
        contributions = [{"w": rng.standard_normal(10).astype(np.float32)} for _ in range(4)]
        sizes = [10, 30, 0, 60]

        result = aggregate(self.make(), contributions, sizes)

        expected = np.average([c["w"] for c in contributions], weights=sizes, axis=0).astype(np.float32)
        assert result is not None
        np.testing.assert_array_equal(result["w"], expected)

    def test_only_zero_weight_gives_no_aggregate(self) -> None:
        assert aggregate(self.make(), [{"w": np.ones(2, np.float32)}], [0.0]) is None


class TestMedian(AggregatorConformance):
    def make(self) -> Aggregator:
        return Median()

    def test_ignores_weights_and_resists_an_outlier(self) -> None:
        contributions = [{"w": np.array(values, np.float32)} for values in ([1, 1], [2, 2], [1000, -1000])]

        result = aggregate(self.make(), contributions, [1, 1, 100])

        assert result is not None
        np.testing.assert_array_equal(result["w"], [2, 1])


class TestTrimmedMean(AggregatorConformance):
    def make(self) -> Aggregator:
        return TrimmedMean(beta=0.2)

    def test_ignores_f_outliers_at_each_end(self) -> None:
        honest = [[1.0, 2.0], [1.2, 2.2], [0.8, 1.8]]
        attackers = [[1e6, -1e6], [-1e6, 1e6]]
        contributions = [{"w": np.array(v, np.float32)} for v in honest + attackers]

        result = aggregate(TrimmedMean(beta=0.2), contributions, [1] * 5)

        assert result is not None
        np.testing.assert_allclose(result["w"], [1.0, 2.0], rtol=1e-6)


class TestKrum(AggregatorConformance):
    def make(self) -> Aggregator:
        return Krum(malicious=1)

    def test_picks_an_honest_update_among_attackers(self) -> None:
        honest = [np.full(4, value, np.float32) for value in (1.0, 1.1, 0.9, 1.05)]
        attackers = [np.full(4, 50.0, np.float32), np.full(4, -40.0, np.float32)]
        contributions = [{"w": values} for values in honest + attackers]

        krum = aggregate(Krum(malicious=2), contributions, [1] * 6)
        multi = aggregate(Krum(malicious=2, keep=3), contributions, [1, 1, 1, 1, 1, 1])

        assert krum is not None
        assert multi is not None
        assert float(krum["w"][0]) in {float(np.float32(v)) for v in (1.0, 1.05, 1.1, 0.9)}
        assert 0.9 <= float(multi["w"][0]) <= 1.1, "the average of the three best is honest"

    def test_the_chosen_update_is_the_aggregate_whatever_its_weight(self) -> None:
        contributions = [{"w": np.array(v, np.float32)} for v in ([2, 0], [3, 0], [5, 0], [50, 50])]

        krum = Krum(malicious=1)
        result = aggregate(krum, contributions, [0, 5, 5, 5])

        assert krum.selected == (0,), "a score of 1 (first on ties)"
        assert result is not None
        np.testing.assert_array_equal(result["w"], [2, 0])


def krum_clients() -> list[dict[str, Float32Array]]:
    """Two attackers, then a=(0,0) b=(1,0) c=(3,0) d=(7,0). With f=2 and n=6 a score sums the n-f-2 = 2 smallest
    squared distances: a 1+9=10, b 1+4=5, c 4+9=13, d 16+36=52, the attackers 1 + 93^2 + 100^2 and more."""
    points = ([100, 100], [101, 100], [0, 0], [1, 0], [3, 0], [7, 0])
    return [{"w": np.array(p, np.float32)} for p in points]


class TestMultiKrum(AggregatorConformance):
    def make(self) -> Aggregator:
        return Krum(malicious=1, keep=3)

    def test_averages_the_best_scored_by_weight(self) -> None:
        multi = Krum(malicious=2, keep=3)

        result = aggregate(multi, krum_clients(), [9, 9, 1, 2, 3, 4])

        assert multi.selected == (4, 2, 3), "c, a, b: Flower's order (highest score first)"
        assert result is not None
        np.testing.assert_allclose(result["w"], [(0 * 1 + 1 * 2 + 3 * 3) / 6, 0], rtol=1e-6)

    def test_with_fewer_contributions_than_it_keeps_averages_them_all(self) -> None:
        contributions = krum_clients()[2:5]  # a, b, c

        multi = Krum(malicious=0, keep=5)
        result = aggregate(multi, contributions, [1, 2, 3])

        assert sorted(multi.selected) == [0, 1, 2]
        assert result is not None
        np.testing.assert_allclose(result["w"], [(0 * 1 + 1 * 2 + 3 * 3) / 6, 0], rtol=1e-6)


class TestBulyan(AggregatorConformance):
    def make(self) -> Aggregator:
        return Bulyan(malicious=0)

    def test_needs_4f_plus_3_contributions(self) -> None:
        inputs, _ = inputs_of([{"w": np.ones(2, np.float32)}] * 6, [1] * 6)

        with pytest.raises(ValueError, match="needs at least 7 contributions"):
            Bulyan(malicious=1).prepare(inputs)

    def test_closed_form_with_an_attacker(self) -> None:
        # f=1, n=7 = 4f+3: n-2f = 5 Krum rounds pick 2, 3, 1, 4, 0 of the honest 0..5 (first index on ties), never
        # the attacker; their median is 2 and the n-4f = 3 values closest to it are 1, 2, 3.
        contributions = [{"w": np.array([1000, 0], np.float32)}] + [
            {"w": np.array([v, 0], np.float32)} for v in range(6)
        ]

        bulyan = Bulyan(malicious=1)
        result = aggregate(bulyan, contributions, [1] * 7)

        assert bulyan.selected == (3, 4, 2, 5, 1)
        assert result is not None
        np.testing.assert_allclose(result["w"], [2, 0])

    def test_outliers_do_not_move_the_aggregate(self) -> None:
        honest = [np.full(3, value, np.float32) for value in (1.0, 1.1, 0.9, 1.05, 0.95)]
        attackers = [np.full(3, 100.0, np.float32), np.full(3, -80.0, np.float32)]
        contributions = [{"w": values} for values in honest + attackers]

        result = aggregate(Bulyan(malicious=1), contributions, [1] * 7)

        assert result is not None
        assert 0.9 <= float(result["w"][0]) <= 1.1


class TestGeometricMedian(AggregatorConformance):
    def make(self) -> Aggregator:
        return GeometricMedian()

    def test_resists_a_far_outlier_better_than_the_mean(self) -> None:
        contributions = [{"w": np.array(v, np.float32)} for v in ([0, 0], [1, 0], [0, 1], [100, 100])]

        result = aggregate(GeometricMedian(maxiter=50), contributions, [1] * 4)

        assert result is not None
        assert np.linalg.norm(result["w"]) < 5, "the mean would be near (25, 25)"


class TestFedCurv(AggregatorConformance):
    def make(self) -> Aggregator:
        return FedCurvWeightedAverage()

    def test_fisher_terms_are_summed_the_rest_averaged(self) -> None:
        contributions = [
            {"w": np.array([1.0], np.float32), "fisher_u": np.array([2.0], np.float32)},
            {"w": np.array([3.0], np.float32), "fisher_u": np.array([5.0], np.float32)},
        ]

        result = aggregate(self.make(), contributions, [1, 3])

        assert result is not None
        assert (float(result["w"][0]), float(result["fisher_u"][0])) == (2.5, 7.0)


class AdaptiveConformance(AggregatorConformance):
    """The adaptive ones also carry moments between rounds in their slots."""

    def test_moments_are_written_for_the_next_round(self) -> None:
        rng = np.random.default_rng(8)
        model = model_of(rng)
        state = MemoryState()

        aggregate(self.make(), [model_of(rng, 0.5) for _ in range(3)], [1, 2, 3], model, state)

        assert {slot for slot, _ in state.written} == set(self.make().slots)


class TestAdagrad(AdaptiveConformance):
    def make(self) -> Aggregator:
        return AdagradAdaptiveAggregation(learning_rate=0.1)

    def test_first_step_closed_form(self) -> None:
        model = {"w": np.array([1.0], np.float32)}
        contributions = [{"w": np.array([0.0], np.float32)}, {"w": np.array([0.5], np.float32)}]

        result = aggregate(self.make(), contributions, [1, 1], model)

        gradient = 0.5 * (1.0 - 0.0) + 0.5 * (1.0 - 0.5)
        expected = 1.0 - 0.1 * gradient / (np.sqrt(0.1 + gradient**2) + 1e-10)
        assert result is not None
        assert float(result["w"][0]) == pytest.approx(expected, rel=1e-6)


class TestAdam(AdaptiveConformance):
    def make(self) -> Aggregator:
        return AdamAdaptiveAggregation(learning_rate=0.1)

    def test_first_step_moves_by_the_learning_rate(self) -> None:
        model = {"w": np.array([1.0, -2.0], np.float32)}
        contributions = [{"w": np.array([0.0, -1.0], np.float32)}]

        result = aggregate(self.make(), contributions, [1], model)

        assert result is not None
        np.testing.assert_allclose(result["w"], [1.0 - 0.1, -2.0 + 0.1], rtol=1e-5)

    def test_only_the_tensors_it_optimizes(self) -> None:
        model = {"w": np.array([1.0], np.float32), "b": np.array([1.0], np.float32)}
        contributions = [{"w": np.array([0.0], np.float32), "b": np.array([0.0], np.float32)}]

        result = aggregate(
            AdamAdaptiveAggregation(learning_rate=0.1, params=["w"]), contributions, [1], model
        )

        assert result is not None
        assert (float(result["w"][0]), float(result["b"][0])) == (pytest.approx(0.9), 0.0)


class TestYogi(AdaptiveConformance):
    def make(self) -> Aggregator:
        return YogiAdaptiveAggregation(learning_rate=0.1)


class TestClippedUpdates(AggregatorConformance):
    def make(self) -> Aggregator:
        return ClippedUpdates(WeightedAverage(), norm=1.0)

    def test_updates_are_clipped_relative_to_the_model(self) -> None:
        model = {"w": np.zeros(2, np.float32)}
        contributions = [{"w": np.array([3.0, 4.0], np.float32)}, {"w": np.array([0.3, 0.4], np.float32)}]

        result = aggregate(self.make(), contributions, [1, 1], model)

        assert result is not None
        np.testing.assert_allclose(result["w"], [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)


class TestNoiselessGaussianMechanism(AggregatorConformance):
    """With no noise the mechanism is clipping plus its inner method: it must behave like any aggregator."""

    def make(self) -> Aggregator:
        return GaussianMechanism(noise_multiplier=0.0, clipping_norm=10.0)


def test_noise_has_the_advertised_standard_deviation() -> None:
    model = {"w": np.zeros(200_000, np.float32)}
    contributions = [{"w": np.zeros(200_000, np.float32)} for _ in range(4)]

    result = aggregate(
        GaussianMechanism(noise_multiplier=2.0, clipping_norm=0.5, seed=3), contributions, [1] * 4, model
    )

    assert result is not None
    assert float(np.std(result["w"])) == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    assert abs(float(np.mean(result["w"]))) < 0.002


def test_adaptive_clipping_grows_the_norm_when_too_many_updates_are_clipped() -> None:
    model = {"w": np.zeros(4, np.float32)}
    contributions = [{"w": np.full(4, 10.0, np.float32)} for _ in range(20)]

    correct = GaussianMechanism(noise_multiplier=0.0, clipping_norm=1.0, adaptive=True, seed=1)
    flower = GaussianMechanism(
        noise_multiplier=0.0, clipping_norm=1.0, adaptive=True, flower_compatible=True, seed=1
    )
    aggregate(correct, contributions, [1] * 20, model)
    aggregate(flower, contributions, [1] * 20, model)

    assert correct.clipping_norm == pytest.approx(np.exp(0.2 * 0.5))
    assert flower.clipping_norm == pytest.approx(np.exp(-0.2 * 0.5)), "Flower moves it the other way"


def test_adaptive_clipping_reports_the_epsilon_of_its_noise_multiplier() -> None:
    """The raised aggregate noise and the count's noise together cost one Gaussian mechanism of multiplier z."""
    model = {"w": np.zeros(4, np.float32)}
    contributions = [{"w": np.full(4, float(i), np.float32)} for i in range(10)]
    mechanism = GaussianMechanism(
        noise_multiplier=1.2, clipping_norm=1.0, adaptive=True, clipped_count_stddev=1.0, seed=1
    )

    for _ in range(3):
        aggregate(mechanism, contributions, [1] * 10, model)

    assert mechanism.report()["epsilon"] == gaussian_epsilon(1.2, 3, 1e-5)


def test_the_noise_figures_survive_a_restart() -> None:
    model = {"w": np.zeros(4, np.float32)}
    contributions = [{"w": np.full(4, float(i), np.float32)} for i in range(10)]
    running = GaussianMechanism(
        noise_multiplier=1.2, clipping_norm=1.0, adaptive=True, clipped_count_stddev=1.0, seed=1
    )
    aggregate(running, contributions, [1] * 10, model)

    restarted = GaussianMechanism(
        noise_multiplier=1.2, clipping_norm=1.0, adaptive=True, clipped_count_stddev=1.0
    )
    restarted.load(running.save())

    assert restarted.report() == running.report()
    assert running.report()["noise_stddev"] > 0


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0
    assert gaussian_epsilon(0.0, 1, 1e-5) == float("inf")
    assert gaussian_epsilon(1.0, 10, 1e-5) > gaussian_epsilon(1.0, 1, 1e-5)
    assert gaussian_epsilon(4.0, 10, 1e-5) < gaussian_epsilon(1.0, 10, 1e-5)


class ScaledAverage(Aggregator):
    """A user's plug-in: a weighted average scaled by a setting."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor

    def combine(self, tensor: TensorInputs, emit: Callable[[Float32Array], None]) -> bool:
        return WeightedAverage().combine(tensor, lambda block: emit(block * np.float32(self.factor)))


class TestPlugIn(AggregatorConformance):
    def make(self) -> Aggregator:
        return make_aggregator(AggregationSpec(f"{__name__}.ScaledAverage", {"factor": 1.0}), "tasks.train")


def test_blocks_shrink_as_contributions_grow_within_bounds() -> None:
    budget = 64 << 20

    assert base.block_elements_for(budget, 16) == budget // (16 * base.BYTES_PER_BLOCK_VALUE)
    assert base.block_elements_for(budget, 64) == base.block_elements_for(budget, 16) // 4
    assert base.block_elements_for(budget, 1) == base.BLOCK_ELEMENTS
    assert base.block_elements_for(1 << 10, 1000) == base.MIN_BLOCK_ELEMENTS


def test_every_built_in_method_has_a_conformance_class() -> None:
    tested = {
        type(cls().make()).__name__ for cls in subclasses(AggregatorConformance) if "make" in cls.__dict__
    }
    built = {type(make_aggregator(AggregationSpec(kind), "tasks.t")).__name__ for kind in BUILT_IN}

    assert built <= tested
