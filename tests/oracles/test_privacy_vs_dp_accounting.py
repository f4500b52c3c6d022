"""fedagg's privacy accountant against dp-accounting.

dp-accounting (0.6.0, tests/oracles/dp_side/accountant.py): ``gaussian_epsilon`` must be its RDP accountant's
epsilon for the same noise multiplier, rounds and delta, over the same orders; the epsilon the mechanism reports
is dp-accounting's for the noise it actually added.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from fedagg.federation.aggregators.accountant import RDP_ORDERS, gaussian_epsilon
from fedagg.federation.aggregators.base import BoundedAggregator
from fedagg.federation.aggregators.clipping import clipped_updates
from fedagg.federation.aggregators.elementwise import Median, TrimmedMean, WeightedAverage
from fedagg.federation.aggregators.privacy import GaussianMechanism, adaptive_noise
from tests.oracles.dp_accounting_oracle import DpAccounting, dp_epsilon
from tests.oracles.oracles import dp_accounting_python
from tests.oracles.privacy_rounds import CLIENTS, ROUNDS_IN, as_model
from tests.support.aggregation import aggregate, inputs_of

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(1800)]


# ---- the accountant ---------------------------------------------------------------------------------------

ACCOUNTED = [
    (0.5, 1, 1e-5),
    (1.1, 10, 1e-6),
    (2.0, 100, 1e-5),
    (4.0, 3, 1e-3),
    (0.8, 1000, 1e-7),
    (10.0, 50, 1e-5),
]


@pytest.fixture(scope="module")
def accounted() -> dict[tuple[float, int, float], DpAccounting]:
    dp_accounting_python()  # build (or find) the venv once, before any concurrent use
    with ThreadPoolExecutor(max_workers=3) as pool:
        # Only the RDP accountant is compared: a coarse PLD discretization keeps its (unused) part fast.
        answers = list(
            pool.map(
                lambda case: dp_epsilon(case[0], 1.0, case[1], case[2], pld_discretization=1e-2), ACCOUNTED
            )
        )
    return dict(zip(ACCOUNTED, answers, strict=True))


@pytest.mark.parametrize(("z", "rounds", "delta"), ACCOUNTED)
def test_gaussian_epsilon_equals_dp_accounting(
    z: float, rounds: int, delta: float, accounted: dict[tuple[float, int, float], DpAccounting]
) -> None:
    answer = accounted[(z, rounds, delta)]

    assert answer.orders == pytest.approx(list(RDP_ORDERS), rel=0, abs=0)
    assert gaussian_epsilon(z, rounds, delta) == pytest.approx(answer.rdp_epsilon, rel=1e-9)
    assert answer.rdp == pytest.approx([rounds * a / (2 * z**2) for a in RDP_ORDERS], rel=1e-12)
    if answer.gaussian_exact is not None:  # RDP is an upper bound of the exact epsilon
        assert answer.rdp_epsilon >= answer.gaussian_exact


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_the_reported_epsilon_is_dp_accountings(
    adaptive: bool, accounted: dict[tuple[float, int, float], DpAccounting]
) -> None:
    """After 10 rounds at z = 1.1 the mechanism reports dp-accounting's epsilon for z = 1.1, with adaptive
    clipping too: its raised aggregate multiplier z_a and the count's noise sigma_b compose to one Gaussian of
    z ((z_a^-2 + (2 sigma_b)^-2)^-1/2 = z), which is what it costs, not the z_a of the aggregate alone."""
    z, rounds, delta = 1.1, 10, 1e-6
    mechanism = GaussianMechanism(
        noise_multiplier=z,
        clipping_norm=1.0,
        adaptive=adaptive,
        clipped_count_stddev=1.0,
        delta=delta,
        seed=2,
    )
    spec = ROUNDS_IN[0]
    assert spec.global_model is not None
    for _ in range(rounds):
        aggregate(
            mechanism, [as_model(c) for c in spec.clients], spec.num_examples, as_model(spec.global_model)
        )

    assert mechanism.report()["epsilon"] == pytest.approx(accounted[(z, rounds, delta)].rdp_epsilon, rel=1e-9)
    stddev, effective = adaptive_noise(z, CLIENTS, 1.0)
    assert (effective**-2 + (2 * stddev) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)


INNER: dict[str, Callable[[], BoundedAggregator]] = {
    "weighted_average": WeightedAverage,
    "clipping_then_weighted_average": lambda: clipped_updates(WeightedAverage(), 0.7),
    "median": Median,
    "trimmed_mean": lambda: TrimmedMean(0.2),
}


@pytest.mark.parametrize("inner", sorted(INNER))
def test_the_epsilon_is_dp_accountings_for_the_noise_actually_added(
    inner: str, accounted: dict[tuple[float, int, float], DpAccounting]
) -> None:
    """Whatever the method behind the mechanism (accepted ones: a declared sensitivity share), the noise added is
    ``z * share * C`` and the reported epsilon is dp-accounting's for that z: the noise's multiplier relative to
    how far one collaborator can move the aggregate."""
    z, rounds, delta, clipping_norm = 1.1, 10, 1e-6, 1.0
    mechanism = GaussianMechanism(
        INNER[inner](), noise_multiplier=z, clipping_norm=clipping_norm, delta=delta, seed=3
    )
    spec = ROUNDS_IN[1]
    assert spec.global_model is not None
    contributions = [as_model(c) for c in spec.clients]
    inputs, _ = inputs_of(contributions, spec.num_examples, as_model(spec.global_model))
    for number in range(rounds):
        aggregate(
            mechanism, contributions, spec.num_examples, as_model(spec.global_model), round_number=number
        )

    share = mechanism.sensitivity_share(inputs)
    assert mechanism.report()["noise_stddev"] / (share * clipping_norm) == pytest.approx(z, rel=1e-12)
    assert mechanism.report()["epsilon"] == pytest.approx(accounted[(z, rounds, delta)].rdp_epsilon, rel=1e-9)
