"""The oracles themselves run and compute what their docstrings say, on tiny hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.oracles.dp_accounting_oracle import dp_epsilon, rdp_to_epsilon
from tests.oracles.flower_oracle import (
    FlowerRound,
    flower_aggregate_many,
    flower_bulyan,
    flower_dp_adaptive,
    flower_dp_fixed,
    flower_fedavg,
    flower_krum,
)
from tests.oracles.openfl_oracle import OpenflContribution, openfl_aggregate
from tests.oracles.oracles import OracleError

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


# ---- Flower -----------------------------------------------------------------------------------------------


def test_flower_median_and_trimmed_mean() -> None:
    three = [[f32(1, 2, 3)], [f32(10, 20, 30)], [f32(100, -5, 4)]]
    four = [[f32(1, 8)], [f32(2, 6)], [f32(3, 4)], [f32(40, 2)]]
    odd, even = flower_aggregate_many("median", [(three, [1, 1, 1]), (four, [1, 1, 1, 1])])
    np.testing.assert_array_equal(odd.aggregate[0], f32(10, 2, 4))
    np.testing.assert_array_equal(even.aggregate[0], f32(2.5, 5))  # mean of the middle two

    five = [[f32(v, -v)] for v in (1, 2, 3, 4, 100)]
    (trimmed,) = flower_aggregate_many("trimmed_avg", [(five, [1] * 5)], beta=0.2)
    np.testing.assert_allclose(trimmed.aggregate[0], f32(3, -3))  # int(0.2 * 5) = 1 cut at each end
    (untrimmed,) = flower_aggregate_many("trimmed_avg", [(five, [1] * 5)], beta=0.1)
    np.testing.assert_allclose(untrimmed.aggregate[0], f32(22, -22))  # int(0.5) = 0: the plain mean


def test_flower_fedavg_is_weighted_by_num_examples() -> None:
    result = flower_fedavg([[f32(0, 4), f32(1)], [f32(4, 8), f32(3)]], [1, 3])
    np.testing.assert_allclose(result[0], f32(3, 7))
    np.testing.assert_allclose(result[1], f32(2.5))


def _krum_clients() -> list[list[np.ndarray]]:
    # Two attackers first, then honest points a=(0,0) b=(1,0) c=(3,0) d=(7,0). With f=2, N=6 each score
    # sums the N-f-2 = 2 smallest squared distances: a 1+9=10, b 1+4=5, c 4+9=13, d 16+36=52, attackers
    # 1 + (93^2 + 100^2) and 1 + (94^2 + 100^2).
    return [[f32(100, 100)], [f32(101, 100)], [f32(0, 0)], [f32(1, 0)], [f32(3, 0)], [f32(7, 0)]]


def test_flower_krum_picks_the_honest_client() -> None:
    krum = flower_krum(_krum_clients(), num_malicious=2)
    assert krum.selected == [3]  # b
    np.testing.assert_array_equal(krum.aggregate[0], f32(1, 0))


def test_flower_multikrum_averages_the_best_weighted() -> None:
    multi = flower_krum(_krum_clients(), num_malicious=2, to_keep=3, num_examples=[9, 9, 1, 2, 3, 4])
    assert multi.selected == [4, 2, 3]  # argsort(scores)[::-1][N - m:]: c, a, b
    np.testing.assert_allclose(multi.aggregate[0], f32((0 * 1 + 1 * 2 + 3 * 3) / 6, 0), rtol=1e-6)


def test_flower_bulyan() -> None:
    # f=1, N=7 = 4f+3: theta = 5 Krum rounds, beta = 3. Worked by hand (ties go to the first index):
    # Krum picks 2, then 3, 1, 4, 0 (the attacker never); median of {0..4} is 2; the 3 closest are 1, 2, 3.
    clients = [[f32(1000, 0)]] + [[f32(v, 0)] for v in range(6)]
    bulyan = flower_bulyan(clients, num_malicious=1)
    assert bulyan.selected == [3, 4, 2, 5, 1]
    np.testing.assert_allclose(bulyan.aggregate[0], f32(2, 0))
    with pytest.raises(OracleError, match="4 \\* num_malicious \\+ 3"):
        flower_bulyan(clients[:6], num_malicious=1)


def test_flower_dp_fixed_clipping() -> None:
    # Updates against g = 0: client 0 (3, 4, 0) has norm 5 -> scaled to (0.6, 0.8, 0); client 1 (0.3, 0.4,
    # 0) has norm 0.5 < C = 1 -> kept. A large zero layer measures the noise: std = z C / m = 0.5.
    zeros = np.zeros(20000, np.float32)
    clients = [[f32(3, 4, 0), zeros], [f32(0.3, 0.4, 0), zeros]]
    (round0,) = flower_dp_fixed(
        [FlowerRound(clients, [1, 3], [f32(0, 0, 0), zeros])], noise_multiplier=1.0, clipping_norm=1.0, seed=7
    )
    assert round0.update_norms == pytest.approx([5.0, 0.5])
    np.testing.assert_allclose(round0.clipped[0][0], f32(0.6, 0.8, 0), rtol=1e-6)
    np.testing.assert_allclose(round0.clipped[1][0], f32(0.3, 0.4, 0), rtol=1e-6)
    np.testing.assert_allclose(round0.noiseless[0], f32(0.375, 0.5, 0), rtol=1e-6)  # (1 * c0 + 3 * c1) / 4
    assert round0.noise_stddev == pytest.approx(0.5)
    noise = round0.result[1] - round0.noiseless[1]
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.std()) == pytest.approx(0.5, rel=0.03)
    # Flower divides by the update's norm: an unchanged client makes it fail.
    with pytest.raises(OracleError, match="ZeroDivisionError"):
        flower_dp_fixed([FlowerRound([[f32(1)]], [1], [f32(1)])], noise_multiplier=0.0, clipping_norm=1.0)


def test_flower_dp_adaptive_clipping_without_noise() -> None:
    g = f32(0, 0)
    rounds = [
        FlowerRound([[f32(3, 4)], [f32(0.3, 0.4)]], [1, 1], [g]),  # norms 5 and 0.5 against C = 1
        FlowerRound([[f32(30, 40)], [f32(-30, 40)]], [1, 1]),  # against round 0's result: both clipped
    ]
    first, second = flower_dp_adaptive(
        rounds, noise_multiplier=0.0, initial_clipping_norm=1.0, target_clipped_quantile=0.2, clip_norm_lr=0.2
    )
    assert first.norm_bits == [True, False]
    assert first.noised_clipped_count == 1.0  # sigma_b = 0 without noise
    assert first.next_clipping_norm == pytest.approx(math.exp(-0.2 * (0.5 - 0.2)))
    assert first.noise_stddev == 0.0
    np.testing.assert_allclose(first.result[0], f32(0.45, 0.6), rtol=1e-6)
    # Round 1 clips against round 0's result with the updated norm; both clipped -> C shrinks again
    # (Flower compares the fraction *clipped* with the target).
    assert second.clipping_norm == pytest.approx(first.next_clipping_norm)
    assert second.norm_bits == [True, True]
    assert second.next_clipping_norm == pytest.approx(second.clipping_norm * math.exp(-0.2 * (1.0 - 0.2)))
    for clipped, target in zip(second.clipped, ([30, 40], [-30, 40]), strict=True):
        update = clipped[0].astype(np.float64) - first.result[0]
        assert np.linalg.norm(update) == pytest.approx(second.clipping_norm, rel=1e-5)
        direction = np.array(target) - first.result[0]
        np.testing.assert_allclose(
            update / np.linalg.norm(update), direction / np.linalg.norm(direction), rtol=1e-5
        )


def test_flower_dp_adaptive_clipping_with_noise() -> None:
    zeros = np.zeros(20000, np.float32)
    rounds = [FlowerRound([[f32(3, 4), zeros], [f32(0.3, 0.4), zeros]], [1, 1], [f32(0, 0), zeros])]
    (round0,) = flower_dp_adaptive(
        rounds, noise_multiplier=0.5, initial_clipping_norm=1.0, clipped_count_stddev=1.0, seed=3
    )
    z_effective = (0.5**-2 - (2 * 1.0) ** -2) ** -0.5
    assert round0.noise_multiplier == pytest.approx(z_effective)
    assert round0.noised_clipped_count is not None
    assert round0.next_clipping_norm is not None
    assert round0.next_clipping_norm == pytest.approx(
        math.exp(-0.2 * (round0.noised_clipped_count / 2 - 0.5))
    )
    assert round0.noise_stddev == pytest.approx(z_effective * round0.next_clipping_norm / 2)
    noise = round0.result[1] - round0.noiseless[1]
    assert float(noise.std()) == pytest.approx(round0.noise_stddev, rel=0.03)


# ---- OpenFL -----------------------------------------------------------------------------------------------


def _two_rounds() -> tuple[dict[str, np.ndarray], list[list[OpenflContribution]]]:
    initial = {"w": f32(0, 0, 0)}
    rounds = [
        [
            OpenflContribution("one", 1, {"w": f32(1, -2, 0)}),
            OpenflContribution("two", 3, {"w": f32(2, 2, 0)}),
        ],
        [
            OpenflContribution("one", 1, {"w": f32(4, 0, 1)}),
            OpenflContribution("two", 3, {"w": f32(-1, 0, 1)}),
        ],
    ]
    return initial, rounds


def _adam_closed_form(rounds: list[list[OpenflContribution]], *, yogi: bool) -> list[np.ndarray]:
    """Adam/Yogi as the docstring of openfl_side/aggregate.py states, in float64 (OpenFL computes the
    gradient and the (1 - b) g, (1 - b) g^2 terms in float32 for float32 tensors: agreement to ~1e-7)."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    x = np.zeros(3)
    m, v = np.zeros(3), np.zeros(3)
    out = []
    for t, contributions in enumerate(rounds, start=1):
        total = sum(c.data_size for c in contributions)
        g = sum((c.data_size / total) * (x - c.tensors["w"].astype(np.float64)) for c in contributions)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (np.sign(g**2 - v) * g**2 if yogi else g**2)
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(x)
    return out


def test_openfl_adam_matches_its_closed_form() -> None:
    initial, rounds = _two_rounds()
    run = openfl_aggregate("AdamAdaptiveAggregation", initial, rounds, settings={"learning_rate": 0.1})
    assert run.openfl_version == "1.7.1"
    assert not run.yogi_fixed
    assert run.rounds[0].weights == {"one": 0.25, "two": 0.75}
    # First step from m = v = 0: x1 = -lr * g / (|g| + eps), g = 0.25 (0 - x_one) + 0.75 (0 - x_two).
    g = -(0.25 * np.array([1, -2, 0]) + 0.75 * np.array([2, 2, 0]))
    np.testing.assert_allclose(run.rounds[0].gradient["w"], g)
    np.testing.assert_allclose(run.rounds[0].aggregated["w"], -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-6)
    # Round 1 starts from round 0's unrounded result (the "aggregated" record) and keeps m, v, t.
    np.testing.assert_array_equal(run.rounds[1].base["w"], run.rounds[0].aggregated["w"])
    expected = _adam_closed_form(rounds, yogi=False)
    for result, want in zip(run.rounds, expected, strict=True):
        assert result.aggregated["w"].dtype == np.float64  # "lists" params: float64 state
        np.testing.assert_allclose(result.aggregated["w"], want, rtol=1e-6, atol=1e-12)
        # What collaborators get: float32 (the delta against the round's model, through float32 and back).
        assert result.model["w"].dtype == np.float32
        np.testing.assert_allclose(result.model["w"], result.aggregated["w"], rtol=2e-7)


def test_openfl_yogi_with_the_keyword_fixed() -> None:
    initial, rounds = _two_rounds()
    run = openfl_aggregate("YogiAdaptiveAggregation", initial, rounds, settings={"learning_rate": 0.1})
    assert run.yogi_fixed
    assert run.function == "YogiAggregationFixed"
    for result, want in zip(run.rounds, _adam_closed_form(rounds, yogi=True), strict=True):
        np.testing.assert_allclose(result.aggregated["w"], want, rtol=1e-6, atol=1e-12)


def test_openfl_adagrad_first_step_and_float32_params() -> None:
    initial, rounds = _two_rounds()
    run = openfl_aggregate(
        "AdagradAdaptiveAggregation",
        initial,
        rounds[:1],
        settings={"learning_rate": 0.5},
        params_format="arrays",
    )
    g = -(0.25 * np.array([1, -2, 0]) + 0.75 * np.array([2, 2, 0]))
    want = -0.5 * g / (np.sqrt(0.1 + g**2) + 1e-10)  # G = initial_accumulator_value 0.1 + g^2
    assert run.rounds[0].aggregated["w"].dtype == np.float32  # float32 params keep float32 state
    np.testing.assert_allclose(run.rounds[0].aggregated["w"], want, rtol=1e-6)


def test_openfl_geometric_median_and_fedcurv() -> None:
    initial = {"w": f32(0, 0), "w_u": f32(0, 0)}
    points = [f32(0, 0), f32(0, 0.1), f32(10, 10)]
    contributions = [
        [
            OpenflContribution(name, 1, {"w": p, "w_u": p})
            for name, p in zip(("a", "b", "c"), points, strict=True)
        ]
    ]
    median = openfl_aggregate("GeometricMedian", initial, contributions).rounds[0].aggregated["w"]
    # OpenFL's Weiszfeld variant as documented (compounding reweighting, maxiter 4, eps 1e-5, ftol 1e-6).
    x = np.array(points, np.float64)
    w = np.full(3, 1 / 3)
    est = w @ x
    objective = float(np.sum(w * np.linalg.norm(x - est, axis=1)))
    for _ in range(4):
        previous = objective
        w = w / np.maximum(1e-5, np.linalg.norm(x - est, axis=1))
        w = w / w.sum()
        est = w @ x
        objective = float(np.sum(w * np.linalg.norm(x - est, axis=1)))
        if abs(previous - objective) < 1e-6 * objective:
            break
    np.testing.assert_allclose(median, est, rtol=1e-6)
    assert np.linalg.norm(median) < 0.5  # pulled to the two close points, away from the outlier

    sizes = [OpenflContribution("a", 1, {"w": f32(4, 0), "w_u": f32(1, 2)})]
    sizes.append(OpenflContribution("b", 3, {"w": f32(0, 4), "w_u": f32(10, 20)}))
    fedcurv = openfl_aggregate("FedCurvWeightedAverage", initial, [sizes]).rounds[0].aggregated
    np.testing.assert_allclose(fedcurv["w"], [1, 3])  # weighted by data size
    np.testing.assert_allclose(fedcurv["w_u"], [11, 22])  # "_u": a plain sum


def test_openfl_19_agrees_where_available() -> None:
    if "1.9" not in (ROOT / "scripts" / "openfl-venv").read_text():
        pytest.skip("scripts/openfl-venv does not know OpenFL 1.9")
    initial, rounds = _two_rounds()
    run = openfl_aggregate(
        "AdamAdaptiveAggregation", initial, rounds, settings={"learning_rate": 0.1}, version="1.9"
    )
    assert run.openfl_version == "1.9"
    for result, want in zip(run.rounds, _adam_closed_form(rounds, yogi=False), strict=True):
        np.testing.assert_allclose(result.aggregated["w"], want, rtol=1e-6, atol=1e-12)


# ---- dp-accounting ----------------------------------------------------------------------------------------


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang 2018: the smallest epsilon with Phi(1/2s - eps s) - e^eps Phi(-1/2s - eps s) <= delta."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_at(eps: float) -> float:
        return phi(0.5 / sigma - eps * sigma) - math.exp(eps) * phi(-0.5 / sigma - eps * sigma)

    low, high = 0.0, 100.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_at(mid) > delta else (low, mid)
    return high


def test_dp_accounting_gaussian() -> None:
    z, t, delta = 2.0, 10, 1e-5
    answer = dp_epsilon(z, 1.0, t, delta)
    assert answer.version == "0.6.0"
    default_orders = [1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
    assert answer.orders == pytest.approx(default_orders)
    np.testing.assert_allclose(answer.rdp, [t * a / (2 * z**2) for a in answer.orders], rtol=1e-12)
    assert answer.rdp_epsilon == pytest.approx(rdp_to_epsilon(answer.orders, answer.rdp, delta), rel=1e-12)
    exact = _analytic_gaussian_epsilon(z / math.sqrt(t), delta)
    assert answer.gaussian_exact == pytest.approx(exact, rel=1e-6)
    assert exact <= answer.pld_epsilon <= exact * 1.01  # pessimistic PLD: a tight upper bound
    assert answer.pld_epsilon < answer.rdp_epsilon


def test_dp_accounting_poisson_sampled() -> None:
    z, q, t, delta = 1.1, 0.01, 1000, 1e-5
    answer = dp_epsilon(z, q, t, delta, orders=[2, 4, 8, 16, 32])
    # Integer orders: log A_a = log sum_i C(a, i) q^i (1 - q)^(a - i) exp((i^2 - i) / (2 z^2)).
    for order, value in zip(answer.orders, answer.rdp, strict=True):
        a = int(order)
        terms = [
            math.lgamma(a + 1)
            - math.lgamma(i + 1)
            - math.lgamma(a - i + 1)
            + i * math.log(q)
            + (a - i) * math.log1p(-q)
            + (i * i - i) / (2 * z**2)
            for i in range(a + 1)
        ]
        top = max(terms)
        log_a = top + math.log(sum(math.exp(s - top) for s in terms))
        assert value == pytest.approx(t * log_a / (a - 1), rel=1e-9)
    assert answer.rdp_epsilon == pytest.approx(rdp_to_epsilon(answer.orders, answer.rdp, delta), rel=1e-12)
    assert answer.gaussian_exact is None
    assert 0.5 < answer.pld_epsilon < answer.rdp_epsilon < 5
