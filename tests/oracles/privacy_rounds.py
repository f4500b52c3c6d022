"""The rounds fedagg's Gaussian mechanism and Flower's differential-privacy wrappers both aggregate, fedagg's
side of them, and how a round of each compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedagg.federation.aggregators.clipping import update_norms
from fedagg.federation.aggregators.privacy import GaussianMechanism
from tests.oracles.flower_oracle import FlowerDpRound, FlowerRound
from tests.support.aggregation import Model, RecordingAverage, aggregate, inputs_of

LAYERS = ((4, 3), (5,), (2, 2))
CLIENTS = 6
ROUNDS = 4
NUM_EXAMPLES = (
    (10, 40, 25, 7, 60, 33),
    (5, 5, 80, 12, 9, 44),
    (30, 1, 2, 50, 70, 8),
    (12, 12, 12, 90, 3, 41),
)
# Each client's update norm per round (relative to C = 1): some clipped, some not, away from any boundary
# the trajectories cross.
NORMS = (
    (0.31, 0.62, 1.7, 4.2, 0.45, 9.3),
    (2.6, 0.12, 0.77, 3.3, 5.4, 0.58),
    (0.21, 7.7, 1.9, 0.36, 0.83, 2.9),
    (6.1, 0.52, 0.27, 1.55, 3.8, 0.69),
)


def make_rounds() -> list[FlowerRound]:
    """Per round: a random global model and clients whose updates have the norms of ``NORMS``."""
    rng = np.random.default_rng(7)
    rounds = []
    for r in range(ROUNDS):
        global_model = [rng.standard_normal(shape).astype(np.float32) for shape in LAYERS]
        clients = []
        for norm in NORMS[r]:
            direction = [rng.standard_normal(shape) for shape in LAYERS]
            length = math.sqrt(sum(float(np.sum(d**2)) for d in direction))
            clients.append(
                [
                    (g + d * (norm / length)).astype(np.float32)
                    for g, d in zip(global_model, direction, strict=True)
                ]
            )
        rounds.append(FlowerRound(clients, list(NUM_EXAMPLES[r]), global_model))
    return rounds


ROUNDS_IN = make_rounds()


def as_model(layers: Sequence[np.ndarray]) -> Model:
    return {f"layer{j}": np.asarray(layer, np.float32) for j, layer in enumerate(layers)}


def as_layers(model: Model) -> list[np.ndarray]:
    return [model[f"layer{j}"] for j in range(len(LAYERS))]


class ReplayedDraws:
    """Stands in for the mechanism's generator: scalar draws (the noised count) are the given values in turn,
    array draws (the aggregate's noise) are zeros, so the mechanism's output is its noiseless aggregate."""

    def __init__(self, counts: Sequence[float] = ()) -> None:
        self.counts = list(counts)
        self.stddevs: list[float] = []

    def generator(self, draw: str) -> Any:
        """What the mechanism's ``_generator`` returns for every draw: these replayed draws."""
        return self

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> Any:
        if size is None:
            return self.counts.pop(0)
        self.stddevs.append(float(scale))
        return np.zeros(size)


@dataclass(frozen=True)
class FedaggRound:
    """What fedagg's mechanism did in one round, in the terms of :class:`FlowerDpRound`."""

    result: list[np.ndarray]
    clipped: list[list[np.ndarray]]
    report: dict[str, float]


def run_fedagg(
    mechanism: GaussianMechanism, recorder: RecordingAverage, rounds: Sequence[FlowerRound]
) -> tuple[list[FedaggRound], list[float], list[list[float]]]:
    """Each round's result, clipped contributions and report; the clipping norm used in each round; the norms."""
    done, used, norms = [], [], []
    for spec in rounds:
        assert spec.global_model is not None
        contributions = [as_model(client) for client in spec.clients]
        used.append(mechanism.clipping_norm)
        inputs, _ = inputs_of(contributions, spec.num_examples, as_model(spec.global_model))
        norms.append([float(n) for n in update_norms(inputs)])
        result = aggregate(mechanism, contributions, spec.num_examples, as_model(spec.global_model))
        assert result is not None
        clipped = [
            [recorder.received[f"layer{j}"][i] for j in range(len(LAYERS))] for i in range(len(spec.clients))
        ]
        done.append(FedaggRound(as_layers(result), clipped, dict(mechanism.report())))
    return done, used, norms


def spacing_at(*arrays: np.ndarray) -> np.ndarray:
    """The float32 spacing at the largest magnitude of ``arrays``, value by value."""
    largest = np.max(np.abs(np.stack([np.asarray(a, np.float32) for a in arrays])), axis=0)
    return np.asarray(np.spacing(largest))


def assert_same_round(ours: FedaggRound, theirs: FlowerDpRound, spec: FlowerRound, where: str) -> None:
    """Clipped contributions to two float32 spacings of the values involved (Flower clips in float32, fedagg in
    float64); the noiseless aggregate to a few spacings of the clients' values (FedAvg sums in float32)."""
    assert spec.global_model is not None
    for i, (client_ours, client_theirs) in enumerate(zip(ours.clipped, theirs.clipped, strict=True)):
        for j, (a, b) in enumerate(zip(client_ours, client_theirs, strict=True)):
            tolerance = 2 * spacing_at(b, spec.global_model[j], spec.clients[i][j])
            assert np.all(np.abs(a.astype(np.float64) - b) <= tolerance), (
                f"{where}: client {i}, layer {j} clipped"
            )
    for j, (a, b) in enumerate(zip(ours.result, theirs.noiseless, strict=True)):
        tolerance = 8 * spacing_at(b, *[client[j] for client in theirs.clipped])
        assert np.all(np.abs(a.astype(np.float64) - b) <= tolerance), f"{where}: layer {j} aggregate"
