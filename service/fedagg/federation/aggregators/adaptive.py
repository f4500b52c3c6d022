"""Adaptive (server-optimizer) aggregation as OpenFL's FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021).

Each round the weighted mean update of the collaborators, ``g = sum(w_i * (global - x_i))`` with weights summing to
one, is the "gradient" of a server optimizer whose parameters are the global model. The optimizer's moments are
model-sized: they are kept between rounds (and across restarts) in state files written with the round, block by
block, never held whole in memory. Tensors the optimizer does not cover (``params`` names the covered ones; all by
default) are averaged by weight, as OpenFL's default ``agg_func``.

The optimizer steps from the round's global model as served (float32), with float32 moments in the state files.
Finite updates never make them overflow: the step is computed in float64 and the moments (and the model) are
kept within float32's finite range. One enormous update still dominates the moments for many rounds (Adagrad's
for good): ``max_update`` leaves out of the round, as content, every contribution with an update value (relative
to the model, over the task's tensors) beyond it, and says so.
OpenFL's optimizer keeps its own float64 copy, started from its ``params`` values (in OpenFL's use the initial
model's tensors: fedagg takes only their names and starts from the initial model it has), and takes the gradient
against the unrounded previous aggregate; the models agree to float32 rounding
(tests/oracles/test_aggregation_vs_openfl.py, across restarts too).

OpenFL's own YogiAdaptiveAggregation cannot be constructed (1.7.1 to 1.9 pass ``epsilo=`` to its optimizer); this
one works and follows OpenFL's Yogi optimizer otherwise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from fedagg.federation.aggregators.base import (
    Aggregator,
    AggregatorState,
    Emit,
    Float64Array,
    RoundInputs,
    TensorInputs,
    finite_float32,
)
from fedagg.federation.aggregators.clipping import base_block
from fedagg.federation.aggregators.distance import log_selection
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.federation.sources import TensorSource


class AdaptiveAggregation(Aggregator, ABC):
    """The shared machinery; subclasses define the moments (``slots``) and the update rule (:meth:`_update`)."""

    privacy_refusal = (
        "its step divides the mean update by its own moments, so the noise added to the new model is not sized "
        "to one contribution's share of C"
    )

    def __init__(
        self,
        learning_rate: float,
        epsilon: float,
        initial_accumulator_value: float,
        params: Mapping[str, Any] | Collection[str] | None = None,
        max_update: float | None = None,
    ) -> None:
        if max_update is not None and not 0 < max_update < math.inf:
            raise ValueError(f"max_update must be a positive number or null, got {max_update}")
        if learning_rate < 0:
            raise ValueError(f"learning_rate must be 0 or more, got {learning_rate}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be above 0, got {epsilon}")
        if initial_accumulator_value < 0:
            raise ValueError(f"initial_accumulator_value must be 0 or more, got {initial_accumulator_value}")
        self.learning_rate = learning_rate
        self.epsilon = epsilon
        self.initial_accumulator_value = initial_accumulator_value
        self.optimized = None if params is None else frozenset(params)
        self.max_update = max_update
        self._steps: dict[str, int] = {}
        self._state: AggregatorState | None = None
        self._counted: tuple[int, ...] | None = None
        self._left_out = 0

    def prepare(self, inputs: RoundInputs) -> None:
        """With ``max_update``: leave out every contribution with an update value beyond it (one pass)."""
        self._counted, self._left_out = None, 0
        if self.max_update is None:
            return
        largest = np.zeros(len(inputs.collaborators), dtype=np.float64)
        for tensor in inputs.tensors:
            for start, stop in tensor.blocks():
                base = base_block(tensor.base, start, stop)
                for index, source in zip(tensor.contributors, tensor.sources, strict=True):
                    update = float(np.max(np.abs(source.block(start, stop) - base), initial=0.0))
                    largest[index] = max(largest[index], update)
        self._counted = tuple(int(index) for index in np.flatnonzero(largest <= self.max_update))
        self._left_out = log_selection(f"max_update {self.max_update:g}", inputs, self._counted)

    def report(self) -> Mapping[str, float]:
        return {"left_out": self._left_out} if self.max_update is not None else {}

    def bind_state(self, state: AggregatorState) -> None:
        self._state = state

    def save(self) -> Mapping[str, Any]:
        return {"steps": dict(self._steps)}

    def load(self, saved: Mapping[str, Any]) -> None:
        self._steps = {str(name): int(step) for name, step in saved.get("steps", {}).items()}

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        if self._counted is not None:
            tensor = tensor.only(self._counted)
        covered = self.optimized is None or tensor.name in self.optimized
        if not covered or tensor.base is None or not tensor.sources or sum(tensor.weights) <= 0:
            return WeightedAverage().combine(tensor, emit)
        assert self._state is not None, "the round end binds the state before combining"
        weights = np.asarray(tensor.weights, dtype=np.float64)
        weights /= weights.sum()
        step = self._steps.get(tensor.name, 0) + 1
        previous = {slot: self._state.previous(slot, tensor.name) for slot in self.slots}
        writers = {slot: self._state.write(slot, tensor.name, tensor.shape) for slot in self.slots}
        for start, stop in tensor.blocks():
            base = tensor.base.block(start, stop).astype(np.float64)
            gradient = np.zeros(stop - start, dtype=np.float64)
            for source, weight in zip(tensor.sources, weights, strict=True):
                gradient += weight * (base - source.block(start, stop))
            moments = {slot: self._moment(previous[slot], start, stop) for slot in self.slots}
            change = self._update(gradient, moments, step)
            for slot in self.slots:
                writers[slot](finite_float32(moments[slot]))
            emit(finite_float32(base - self.learning_rate * change))
        self._steps[tensor.name] = step
        return True

    def _moment(self, source: TensorSource | None, start: int, stop: int) -> Float64Array:
        if source is None:
            return np.full(stop - start, self.initial_accumulator_value, dtype=np.float64)
        return source.block(start, stop).astype(np.float64)

    @abstractmethod
    def _update(self, gradient: Float64Array, moments: dict[str, Float64Array], step: int) -> Float64Array:
        """Update ``moments`` in place; return the step direction (multiplied by the learning rate)."""


class AdagradAdaptiveAggregation(AdaptiveAggregation):
    """OpenFL's AdagradAdaptiveAggregation (NumPyAdagrad)."""

    slots = ("accumulator",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-10,
        params: Mapping[str, Any] | Collection[str] | None = None,
        max_update: float | None = None,
    ) -> None:
        super().__init__(learning_rate, epsilon, initial_accumulator_value, params, max_update)

    def _update(self, gradient: Float64Array, moments: dict[str, Float64Array], step: int) -> Float64Array:
        accumulator = moments["accumulator"]
        accumulator += gradient**2
        return gradient / (np.sqrt(accumulator) + self.epsilon)


class AdamAdaptiveAggregation(AdaptiveAggregation):
    """OpenFL's AdamAdaptiveAggregation (NumPyAdam, with bias correction)."""

    slots = ("first_moment", "second_moment")

    def __init__(
        self,
        learning_rate: float = 0.01,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-8,
        params: Mapping[str, Any] | Collection[str] | None = None,
        max_update: float | None = None,
    ) -> None:
        super().__init__(learning_rate, epsilon, initial_accumulator_value, params, max_update)
        beta_1, beta_2 = betas
        for index, beta in enumerate((beta_1, beta_2)):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)

    def _update(self, gradient: Float64Array, moments: dict[str, Float64Array], step: int) -> Float64Array:
        first, second = moments["first_moment"], moments["second_moment"]
        first *= self.beta_1
        first += (1.0 - self.beta_1) * gradient
        self._second_moment(second, gradient)
        first_normalized = first / (1.0 - self.beta_1**step)
        second_normalized = second / (1.0 - self.beta_2**step)
        return first_normalized / (np.sqrt(second_normalized) + self.epsilon)

    def _second_moment(self, second: Float64Array, gradient: Float64Array) -> None:
        second *= self.beta_2
        second += (1.0 - self.beta_2) * gradient**2


class YogiAdaptiveAggregation(AdamAdaptiveAggregation):
    """OpenFL's YogiAdaptiveAggregation (NumPyYogi): Adam with the sign-controlled second moment."""

    def _second_moment(self, second: Float64Array, gradient: Float64Array) -> None:
        squared = gradient**2
        sign = np.sign(squared - second)
        second *= self.beta_2
        second += (1.0 - self.beta_2) * sign * squared
