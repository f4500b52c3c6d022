"""fedagg's server-side differential privacy against Flower's wrappers.

Flower (flwr 1.42.0, tests/oracles/flower_side/aggregate.py): DifferentialPrivacyServerSideFixedClipping and
...AdaptiveClipping around FedAvg, over several rounds whose global model is given explicitly (so a round does not
depend on the previous round's noise). fedagg's GaussianMechanism with ``flower_compatible=True`` must clip the
same updates to the same values (what the wrapped average receives), compute the same update norms, follow the
same clipping-norm trajectory and use the same noise standard deviation; its noiseless aggregate must be
Flower's. The noise itself is compared through its distribution (a fixed seed, 20000 values).

For adaptive clipping with noise, Flower's noised count of clipped updates is a random draw: the test gives
fedagg's mechanism the counts Flower drew (a stand-in for its generator) so both follow one trajectory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedagg.federation.aggregators.privacy import GaussianMechanism, adaptive_noise
from tests.oracles.flower_oracle import FlowerRound, flower_dp_adaptive, flower_dp_fixed
from tests.oracles.privacy_rounds import (
    CLIENTS,
    NORMS,
    NUM_EXAMPLES,
    ROUNDS,
    ROUNDS_IN,
    ReplayedDraws,
    as_model,
    assert_same_round,
    run_fedagg,
)
from tests.support.aggregation import RecordingAverage, aggregate, assert_gaussian

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(1800)]


# ---- fixed clipping -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flower_compatible", [True, False], ids=["flower_compatible", "default"])
def test_fixed_clipping_equals_flower(flower_compatible: bool) -> None:
    """Fixed clipping: both settings must give Flower's clipping; the noise std is Flower's ``z C / n`` with
    ``flower_compatible``, and by default ``z C max(w) / sum(w)``, the weighted average's declared share (the
    data sizes differ, so one client moves the aggregate by more than ``C / n``)."""
    z, clipping_norm = 1.3, 1.0
    theirs = flower_dp_fixed(ROUNDS_IN, noise_multiplier=z, clipping_norm=clipping_norm, seed=1)
    recorder = RecordingAverage()
    mechanism = GaussianMechanism(
        recorder, noise_multiplier=z, clipping_norm=clipping_norm, flower_compatible=flower_compatible
    )
    draws = ReplayedDraws()
    mechanism._generator = draws.generator  # type: ignore[method-assign]  # noiseless: compare the aggregate

    ours, used, norms = run_fedagg(mechanism, recorder, ROUNDS_IN)

    for r, (mine, flower, spec) in enumerate(zip(ours, theirs, ROUNDS_IN, strict=True)):
        where = f"round {r}"
        assert used[r] == flower.clipping_norm == clipping_norm
        assert norms[r] == pytest.approx(flower.update_norms, rel=1e-6), where
        assert norms[r] == pytest.approx(NORMS[r], rel=1e-5), where
        assert flower.noise_stddev is not None
        assert flower.noise_stddev == pytest.approx(z * clipping_norm / CLIENTS, rel=1e-12)
        share = 1 / CLIENTS if flower_compatible else max(NUM_EXAMPLES[r]) / sum(NUM_EXAMPLES[r])
        assert mine.report["noise_stddev"] == pytest.approx(z * clipping_norm * share, rel=1e-12), where
        assert_same_round(mine, flower, spec, where)
    assert draws.stddevs
    if flower_compatible:
        assert draws.stddevs == pytest.approx([z * clipping_norm / CLIENTS] * len(draws.stddevs), rel=1e-12)


def test_clipping_scales_every_update_to_at_most_the_norm() -> None:
    """Many updates of random norms (log-normal around C): each clipped update keeps its direction and has norm
    C; each update below C is left as it was."""
    rng = np.random.default_rng(11)
    count, clipping_norm = 400, 2.0
    global_model = {
        "w": rng.standard_normal(50).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }
    norms = np.exp(rng.normal(math.log(clipping_norm), 1.0, count))
    updates = []
    for norm in norms:
        direction = {name: rng.standard_normal(v.shape) for name, v in global_model.items()}
        length = math.sqrt(sum(float(np.sum(d**2)) for d in direction.values()))
        updates.append({name: direction[name] * (norm / length) for name in global_model})
    contributions = [{name: (global_model[name] + u[name]).astype(np.float32) for name in u} for u in updates]
    recorder = RecordingAverage()
    mechanism = GaussianMechanism(recorder, noise_multiplier=0.0, clipping_norm=clipping_norm)

    aggregate(mechanism, contributions, [1] * count, global_model)

    clipped = 0
    for i, (contribution, norm) in enumerate(zip(contributions, norms, strict=True)):
        before = np.concatenate([contribution[name] - global_model[name] for name in global_model]).astype(
            np.float64
        )
        after = np.concatenate(
            [recorder.received[name][i] - global_model[name].astype(np.float64) for name in global_model]
        )
        if norm > clipping_norm:
            clipped += 1
            assert float(np.linalg.norm(after)) == pytest.approx(clipping_norm, rel=1e-5)
            cosine = float(before @ after) / float(np.linalg.norm(before) * np.linalg.norm(after))
            assert cosine == pytest.approx(1.0, abs=1e-9)
        else:
            np.testing.assert_array_equal(recorder.received["w"][i], contribution["w"])
    assert 150 < clipped < 250, "about half the updates are above C"


# ---- adaptive clipping --------------------------------------------------------------------------------------

ADAPTIVE: dict[str, Any] = {"initial_clipping_norm": 1.0, "target_clipped_quantile": 0.4, "clip_norm_lr": 0.3}


def adaptive_mechanism(
    recorder: RecordingAverage, z: float, *, flower_compatible: bool, count_stddev: float | None = None
) -> GaussianMechanism:
    return GaussianMechanism(
        recorder,
        noise_multiplier=z,
        clipping_norm=ADAPTIVE["initial_clipping_norm"],
        adaptive=True,
        target_clipped_quantile=ADAPTIVE["target_clipped_quantile"],
        clip_norm_lr=ADAPTIVE["clip_norm_lr"],
        clipped_count_stddev=count_stddev,
        flower_compatible=flower_compatible,
    )


@pytest.mark.parametrize(("z", "count_stddev"), [(0.0, None), (0.8, 1.0)], ids=["noiseless", "noised"])
def test_flower_compatible_adaptive_clipping_equals_flower(z: float, count_stddev: float | None) -> None:
    theirs = flower_dp_adaptive(
        ROUNDS_IN, noise_multiplier=z, clipped_count_stddev=count_stddev, seed=3, **ADAPTIVE
    )
    recorder = RecordingAverage()
    mechanism = adaptive_mechanism(recorder, z, flower_compatible=True, count_stddev=count_stddev)
    counts = [flower.noised_clipped_count for flower in theirs]
    assert None not in counts
    mechanism._generator = ReplayedDraws(counts).generator  # type: ignore[method-assign,arg-type]  # Flower's

    ours, used, norms = run_fedagg(mechanism, recorder, ROUNDS_IN)

    stddev, effective = adaptive_noise(z, CLIENTS, count_stddev)
    trajectory = [flower.clipping_norm for flower in theirs]
    assert len(set(trajectory)) == ROUNDS, "the clipping norm moves every round"
    for r, (mine, flower, spec) in enumerate(zip(ours, theirs, ROUNDS_IN, strict=True)):
        where = f"round {r}"
        assert used[r] == pytest.approx(flower.clipping_norm, rel=1e-12), where
        assert norms[r] == pytest.approx(flower.update_norms, rel=1e-6), where
        assert flower.norm_bits == [n > used[r] for n in norms[r]], where
        assert 0 < sum(flower.norm_bits or []) < CLIENTS, f"{where}: some updates clipped, some not"
        assert flower.clipped_count_stddev == pytest.approx(stddev)
        assert flower.noise_multiplier == pytest.approx(effective, rel=1e-12)
        assert mine.report["clipping_norm"] == pytest.approx(flower.next_clipping_norm, rel=1e-12), where
        assert flower.noise_stddev is not None
        assert mine.report["noise_stddev"] == pytest.approx(flower.noise_stddev, rel=1e-12), where
        assert_same_round(mine, flower, spec, where)
    if z:
        assert any(c != sum(f.norm_bits or []) for c, f in zip(counts, theirs, strict=True)), (
            "the counts were noised"
        )


def test_default_adaptive_clipping_moves_the_norm_towards_the_target_quantile() -> None:
    """fedagg's default grows C when more than the target share of updates is clipped and shrinks it when fewer
    are (Andrew et al.); Flower moves it the other way. Round 0 starts from the same C with the same clipped
    count, so fedagg's factor is the inverse of Flower's; later rounds follow fedagg's own trajectory, and the
    noise uses the norm that clipped."""
    theirs = flower_dp_adaptive(ROUNDS_IN, noise_multiplier=0.0, seed=0, **ADAPTIVE)
    recorder = RecordingAverage()
    mechanism = adaptive_mechanism(recorder, 0.0, flower_compatible=False)

    ours, used, norms = run_fedagg(mechanism, recorder, ROUNDS_IN)

    flower_factor = theirs[0].next_clipping_norm / theirs[0].clipping_norm  # type: ignore[operator]
    assert ours[0].report["clipping_norm"] / used[0] == pytest.approx(1 / flower_factor, rel=1e-12)
    lr, target = ADAPTIVE["clip_norm_lr"], ADAPTIVE["target_clipped_quantile"]
    moved = []
    for r in range(ROUNDS):
        share = sum(n > used[r] for n in norms[r]) / CLIENTS
        following = used[r + 1] if r + 1 < ROUNDS else ours[r].report["clipping_norm"]
        assert following == pytest.approx(used[r] * math.exp(lr * (share - target)), rel=1e-12), f"round {r}"
        moved.append((share > target) == (following > used[r]))
        assert ours[r].report["noise_stddev"] == 0.0
    assert all(moved)
    assert_same_round(ours[0], theirs[0], ROUNDS_IN[0], "round 0")  # same C in round 0: same clipping


def test_default_adaptive_noise_uses_the_norm_that_clipped() -> None:
    recorder = RecordingAverage()
    mechanism = adaptive_mechanism(recorder, 0.8, flower_compatible=False, count_stddev=1.0)
    mechanism._generator = ReplayedDraws([2.0]).generator  # type: ignore[method-assign]
    _, effective = adaptive_noise(0.8, CLIENTS, 1.0)

    ours, used, _ = run_fedagg(mechanism, recorder, ROUNDS_IN[:1])

    share = max(NUM_EXAMPLES[0]) / sum(NUM_EXAMPLES[0])  # the weighted average's declared share
    assert ours[0].report["noise_stddev"] == pytest.approx(effective * used[0] * share, rel=1e-12)
    assert ours[0].report["clipping_norm"] != used[0]


# ---- the noise --------------------------------------------------------------------------------------------

NOISE_VALUES = 20000


def noise_rounds() -> list[FlowerRound]:
    """Four clients; a small layer with updates above C = 2 (clipped), a large layer without updates: the
    aggregate's large layer is the noise alone, of std z C / n = 1.5 * 2 / 4."""
    rng = np.random.default_rng(5)
    global_model = [rng.standard_normal(3).astype(np.float32), np.zeros(NOISE_VALUES, np.float32)]
    clients = [
        [
            (global_model[0] + rng.standard_normal(3) * 4).astype(np.float32),
            np.zeros(NOISE_VALUES, np.float32),
        ]
        for _ in range(4)
    ]
    return [FlowerRound(clients, [3, 1, 4, 1], global_model)]


def test_the_noise_has_flowers_distribution() -> None:
    rounds = noise_rounds()
    z, clipping_norm = 1.5, 2.0
    (theirs,) = flower_dp_fixed(rounds, noise_multiplier=z, clipping_norm=clipping_norm, seed=9)
    mechanism = GaussianMechanism(
        noise_multiplier=z, clipping_norm=clipping_norm, flower_compatible=True, seed=9
    )
    spec = rounds[0]
    assert spec.global_model is not None

    result = aggregate(
        mechanism, [as_model(c) for c in spec.clients], spec.num_examples, as_model(spec.global_model)
    )

    assert result is not None
    stddev = z * clipping_norm / 4
    assert theirs.noise_stddev == pytest.approx(stddev)
    assert mechanism.report()["noise_stddev"] == pytest.approx(stddev)
    assert_gaussian(theirs.result[1].astype(np.float64) - theirs.noiseless[1], stddev)
    assert_gaussian(result["layer1"].astype(np.float64), stddev)
    # The small layer's updates were all clipped (the noise is calibrated to C, not to the updates).
    assert theirs.update_norms == pytest.approx(
        [float(np.linalg.norm(c[0] - spec.global_model[0])) for c in spec.clients], rel=1e-6
    )
    assert all(norm > clipping_norm for norm in theirs.update_norms)


def test_the_noise_is_fresh_in_every_round_and_value() -> None:
    """No two rounds (or blocks) reuse noise: consecutive rounds' noise is uncorrelated."""
    rounds = noise_rounds()
    spec = rounds[0]
    assert spec.global_model is not None
    mechanism = GaussianMechanism(noise_multiplier=1.5, clipping_norm=2.0, seed=4)
    draws = []
    for number in range(3):
        result = aggregate(
            mechanism,
            [as_model(c) for c in spec.clients],
            spec.num_examples,
            as_model(spec.global_model),
            round_number=number,
        )
        assert result is not None
        draws.append(result["layer1"].astype(np.float64))
    for a, b in ((0, 1), (1, 2), (0, 2)):
        correlation = float(np.corrcoef(draws[a], draws[b])[0, 1])
        assert abs(correlation) < 5 / math.sqrt(NOISE_VALUES)
    half = NOISE_VALUES // 2
    assert abs(float(np.corrcoef(draws[0][:half], draws[0][half:])[0, 1])) < 5 / math.sqrt(half)
