"""The reference task runner: softmax regression in numpy on a deterministic, non-IID synthetic dataset.

Every collaborator draws its own data from the same classes, but with a skewed label mix (a Dirichlet draw
seeded by its name), as federated sites usually are. Training is mini-batch gradient descent on the
cross-entropy; validation reports accuracy on the collaborator's own held-out data. Used by ``fedagg demo``,
``fedagg collaborator``, the tests and the benchmarks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedagg.collaborator.runner import TaskOutput, Weights
from fedagg.protocol.codec import Float32Array

WEIGHTS, BIAS = "softmax/weights", "softmax/bias"


@dataclass(frozen=True)
class DatasetSpec:
    """Shape of the synthetic task shared by the whole federation."""

    classes: int = 10
    features: int = 32
    train_samples: int = 600
    valid_samples: int = 1000
    skew: float = 0.5
    noise: float = 2.5
    seed: int = 2024


def initial_weights(spec: DatasetSpec) -> dict[str, Float32Array]:
    """The starting model: zeros."""
    return {
        WEIGHTS: np.zeros((spec.features, spec.classes), np.float32),
        BIAS: np.zeros(spec.classes, np.float32),
    }


def site_seed(name: str) -> int:
    """A stable seed derived from a collaborator's name."""
    return zlib.crc32(name.encode())


class SiteData:
    """One collaborator's train and validation sets."""

    def __init__(self, spec: DatasetSpec, site: int) -> None:
        centers = np.random.default_rng(spec.seed).normal(0.0, 1.0, (spec.classes, spec.features))
        rng = np.random.default_rng([spec.seed, site])
        mix = rng.dirichlet(np.full(spec.classes, spec.skew))
        self.train_x, self.train_y = self._draw(rng, centers, mix, spec.train_samples, spec.noise)
        self.valid_x, self.valid_y = self._draw(rng, centers, mix, spec.valid_samples, spec.noise)

    @staticmethod
    def _draw(
        rng: np.random.Generator,
        centers: npt.NDArray[np.float64],
        mix: npt.NDArray[np.float64],
        count: int,
        noise: float,
    ) -> tuple[Float32Array, npt.NDArray[np.int64]]:
        labels = rng.choice(len(mix), size=count, p=mix)
        points = centers[labels] + rng.normal(0.0, noise, (count, centers.shape[1]))
        return points.astype(np.float32), labels


def _probabilities(weights: Weights, x: Float32Array) -> Float32Array:
    logits = x @ weights[WEIGHTS] + weights[BIAS]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probabilities: Float32Array = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


class ModelMismatch(ValueError):
    """The aggregator's model is not the one this runner trains (other features or classes)."""


class SoftmaxRegressionRunner:
    """A :class:`~fedagg.collaborator.runner.TaskRunner` for the synthetic task."""

    def __init__(
        self, spec: DatasetSpec, site: int, epochs: int = 1, learning_rate: float = 0.01, batch_size: int = 32
    ) -> None:
        self.spec = spec
        self.data = SiteData(spec, site)
        self._site = site
        self._epochs = epochs
        self._learning_rate = learning_rate
        self._batch_size = batch_size

    def weight_names(self) -> tuple[str, ...]:
        return (WEIGHTS, BIAS)

    def _checked(self, weights: Weights) -> Weights:
        """``weights`` if they have the shapes of :attr:`spec`, else :class:`ModelMismatch` saying what to change."""
        expected = {WEIGHTS: (self.spec.features, self.spec.classes), BIAS: (self.spec.classes,)}
        shapes = {name: tuple(np.shape(weights[name])) for name in expected if name in weights}
        if shapes != expected:
            got = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items()) or "none"
            hint = ""
            if len(shapes.get(WEIGHTS, ())) == 2:
                features, classes = shapes[WEIGHTS]
                hint = f" (--features {features} --classes {classes} match it)"
            raise ModelMismatch(
                f"the aggregator's model has {got}; this collaborator trains {self.spec.features} features x "
                f"{self.spec.classes} classes{hint}"
            )
        return weights

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        weights = self._checked(weights)
        w = np.array(weights[WEIGHTS], np.float32)
        b = np.array(weights[BIAS], np.float32)
        x, y = self.data.train_x, self.data.train_y
        rng = np.random.default_rng([self._site, round_number])
        losses = []
        for _ in range(self._epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), self._batch_size):
                batch = order[start : start + self._batch_size]
                probabilities = _probabilities({WEIGHTS: w, BIAS: b}, x[batch])
                losses.append(float(-np.log(probabilities[np.arange(len(batch)), y[batch]] + 1e-12).mean()))
                probabilities[np.arange(len(batch)), y[batch]] -= 1.0
                w -= self._learning_rate * (x[batch].T @ probabilities) / len(batch)
                b -= self._learning_rate * probabilities.mean(axis=0)
        return TaskOutput({"loss": float(np.mean(losses))}, len(x), {WEIGHTS: w, BIAS: b})

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        predicted = _probabilities(self._checked(weights), self.data.valid_x).argmax(axis=1)
        accuracy = float((predicted == self.data.valid_y).mean())
        return TaskOutput({"acc": accuracy}, len(self.data.valid_y))
