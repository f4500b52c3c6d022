"""Driving an aggregator in memory, without a federation: contributions as numpy arrays, slot state in a dict.

Used by the conformance suite (tests/unit/test_aggregation.py) and by the comparisons with the reference
implementations (tests/oracles/).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedagg.federation.aggregators import Aggregator, Emit, RoundInputs, TensorInputs
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.protocol.codec import Float32Array, Shape

Model = dict[str, Float32Array]


class ArraySource:
    """A contribution held in memory that records how much it is asked for at once."""

    def __init__(self, values: Float32Array) -> None:
        self._flat = np.asarray(values, np.float32).reshape(-1)
        self.size = self._flat.size
        self.widest = 0

    def block(self, start: int, stop: int) -> Float32Array:
        self.widest = max(self.widest, stop - start)
        return self._flat[start:stop].copy()


class MemoryState:
    """Slot files kept in memory: what one round wrote is what the next reads."""

    def __init__(self, previous: Mapping[tuple[str, str], Float32Array] | None = None) -> None:
        self.previous_values = dict(previous or {})
        self.written: dict[tuple[str, str], list[Float32Array]] = {}

    def previous(self, slot: str, tensor: str) -> ArraySource | None:
        values = self.previous_values.get((slot, tensor))
        return None if values is None else ArraySource(values)

    def write(self, slot: str, tensor: str, shape: Shape) -> Callable[[Float32Array], None]:
        return self.written.setdefault((slot, tensor), []).append

    def next_round(self) -> MemoryState:
        return MemoryState({key: np.concatenate(parts) for key, parts in self.written.items()})


def inputs_of(
    contributions: Sequence[Model],
    weights: Sequence[float],
    model: Model | None = None,
    round_number: int = 0,
    block_elements: int | None = None,
) -> tuple[RoundInputs, list[ArraySource]]:
    """The round inputs of ``contributions`` (every one with every tensor, read ``block_elements`` at a time), and
    every source made."""
    names = list(contributions[0]) if contributions else list(model or {})
    every: list[ArraySource] = []
    tensors = []
    for name in names:
        sources = tuple(ArraySource(c[name]) for c in contributions)
        every += sources
        shape = (contributions[0][name] if contributions else (model or {})[name]).shape
        base_values = None if model is None or name not in model else ArraySource(model[name])
        tensors.append(
            TensorInputs(
                name,
                shape,
                tuple(range(len(contributions))),
                sources,
                tuple(weights),
                base_values,
                block_elements,
            )
        )
    names_of = tuple(f"site-{i}" for i in range(len(contributions)))
    return RoundInputs(round_number, "train", names_of, tuple(tensors)), every


def aggregate(
    aggregator: Aggregator,
    contributions: Sequence[Model],
    weights: Sequence[float],
    model: Model | None = None,
    state: MemoryState | None = None,
    round_number: int = 0,
    block_elements: int | None = None,
) -> Model | None:
    """The aggregate of every tensor, or None when the aggregator gives none."""
    inputs, _ = inputs_of(contributions, weights, model, round_number, block_elements)
    aggregator.prepare(inputs)
    if aggregator.slots:
        aggregator.bind_state(state or MemoryState())
    result: Model = {}
    for tensor in inputs.tensors:
        parts: list[Float32Array] = []
        if not aggregator.combine(tensor, parts.append):
            return None
        result[tensor.name] = (
            np.concatenate(parts).reshape(tensor.shape) if parts else np.empty(0, np.float32)
        )
    return result


def run_rounds(
    aggregator: Aggregator, initial: Model, rounds: Sequence[tuple[Sequence[Model], Sequence[float]]]
) -> list[Model]:
    """Each round's aggregate, as a federation would chain them: every round starts from the previous result
    (tensors without an aggregate keep their value) and the slots of one round are the next one's state."""
    model, state, models = dict(initial), MemoryState(), []
    for number, (contributions, weights) in enumerate(rounds):
        result = aggregate(aggregator, contributions, weights, model, state, number)
        assert result is not None, f"round {number} has no aggregate"
        model = {**model, **result}
        state = state.next_round()
        models.append(model)
    return models


def model_of(rng: np.random.Generator, shift: float = 0.0) -> Model:
    return {
        "w": (rng.standard_normal((3, 4)) + shift).astype(np.float32),
        "b": (rng.standard_normal(5) + shift).astype(np.float32),
    }


def assert_gaussian(noise: np.ndarray, stddev: float) -> None:
    """Mean, variance (chi-square) and the share within one and two standard deviations, each at about five of
    its own standard errors: a wrong std by 5 % or a non-Gaussian shape fails, a correct one passes by far."""
    n = noise.size
    assert abs(float(noise.mean())) < 5 * stddev / math.sqrt(n)
    chi_square = float(np.sum((noise - noise.mean()) ** 2)) / stddev**2
    assert abs(chi_square - (n - 1)) < 5 * math.sqrt(2 * (n - 1)), f"std {noise.std()} vs {stddev}"
    for k, share in ((1, 0.682689), (2, 0.954500)):
        observed = float(np.mean(np.abs(noise) < k * stddev))
        assert abs(observed - share) < 5 * math.sqrt(share * (1 - share) / n), (k, observed)


class RecordingAverage(WeightedAverage):
    """The weighted average, recording the contributions it receives (the clipped ones) in the last round."""

    def __init__(self) -> None:
        self.received: dict[str, list[np.ndarray]] = {}

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        self.received[tensor.name] = [
            source.block(0, tensor.size).reshape(tensor.shape) for source in tensor.sources
        ]
        return super().combine(tensor, emit)
