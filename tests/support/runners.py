"""Deterministic task runners whose federated result has a closed form."""

from __future__ import annotations

import numpy as np

from fedagg.collaborator.runner import TaskOutput, Weights
from fedagg.protocol.codec import Float32Array

SHAPES = {"w": (2, 3), "b": (3,)}


def zero_model() -> dict[str, Float32Array]:
    """The initial model the closed forms start from."""
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


class StepRunner:
    """Training adds ``step * (round + 1)`` to every weight; validation reports the mean weight."""

    def __init__(self, step: float, train_size: int, valid_size: int) -> None:
        self.step = step
        self.train_size = train_size
        self.valid_size = valid_size

    def weight_names(self) -> tuple[str, ...]:
        return tuple(SHAPES)

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        trained = {
            name: (values + np.float32(self.step * (round_number + 1))).astype(np.float32)
            for name, values in weights.items()
        }
        return TaskOutput({"loss": self.step / (round_number + 1)}, self.train_size, trained)

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        return TaskOutput({"acc": float(np.mean(weights["w"]))}, self.valid_size)


def expected_models(steps_and_sizes: list[tuple[float, int]], rounds: int) -> list[float]:
    """Closed form: every weight of model r+1 = model r + (r+1) * sum(n_i s_i) / sum(n_i)."""
    total = sum(size for _, size in steps_and_sizes)
    mean_step = sum(step * size for step, size in steps_and_sizes) / total
    values, value = [], 0.0
    for round_number in range(rounds):
        value += (round_number + 1) * mean_step
        values.append(value)
    return values
