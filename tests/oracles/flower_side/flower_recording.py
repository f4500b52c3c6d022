"""What the Flower oracle observes of Flower's strategies without changing their results: the helpers they call,
what a DP wrapper's inner strategy receives and returns, and which clients a selection chose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.strategy import aggregate as agg_module
from flwr.server.strategy import dp_adaptive_clipping as dp_adaptive_module
from flwr.supercore import differential_privacy as dp_module

NDArrays = list[np.ndarray]


def _unused(*_: Any, **__: Any) -> Any:
    raise NotImplementedError("the oracle's client proxies only label results")


# A concrete ClientProxy: the strategies take (proxy, FitRes) pairs and use only the FitRes.
OracleProxy = type("OracleProxy", (ClientProxy,), dict.fromkeys(ClientProxy.__abstractmethods__, _unused))


class Recorder:
    """Wraps module-level Flower helpers to observe what they are called with; results are unchanged."""

    def __init__(self) -> None:
        self.averaged: list[NDArrays] | None = None  # Multi-Krum: the clients passed to `aggregate`
        self.bulyan_set: list[NDArrays] | None = None  # Bulyan: the selected set
        self.noise_stddevs: list[float] = []
        self.update_norms: list[float] = []
        self.norm_bits: list[bool] = []
        self.inner_output: NDArrays | None = None
        self.inner_input: list[NDArrays] | None = None

        original_aggregate = agg_module.aggregate
        original_closest = agg_module._aggregate_n_closest_weights
        original_noise = dp_module.add_gaussian_noise_inplace
        original_get_norm = dp_module.get_norm
        original_adaptive_clip = dp_adaptive_module.adaptive_clip_inputs_inplace

        def aggregate(results: list[tuple[NDArrays, int]]) -> NDArrays:
            self.averaged = [w for w, _ in results]
            return original_aggregate(results)

        def closest(reference: NDArrays, results: list[tuple[NDArrays, int]], beta_closest: int) -> NDArrays:
            self.bulyan_set = [w for w, _ in results]
            return original_closest(reference, results, beta_closest)

        def noise(arrays: NDArrays, std_dev: float) -> None:
            self.noise_stddevs.append(float(std_dev))
            original_noise(arrays, std_dev)

        def get_norm(arrays: NDArrays) -> float:
            norm = original_get_norm(arrays)
            self.update_norms.append(norm)
            return norm

        def adaptive_clip(arrays: NDArrays, clipping_norm: float) -> bool:
            bit = original_adaptive_clip(arrays, clipping_norm)
            self.norm_bits.append(bool(bit))
            return bit

        agg_module.aggregate = aggregate
        agg_module._aggregate_n_closest_weights = closest
        dp_module.add_gaussian_noise_inplace = noise
        dp_module.get_norm = get_norm
        dp_adaptive_module.adaptive_clip_inputs_inplace = adaptive_clip

    def reset(self) -> None:
        self.averaged = self.bulyan_set = self.inner_output = self.inner_input = None
        self.noise_stddevs, self.update_norms, self.norm_bits = [], [], []


class RecordingStrategy(Strategy):
    """The inner strategy of a DP wrapper, recording what it receives and returns (unchanged)."""

    def __init__(self, inner: Strategy, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self.recorder.inner_input = [parameters_to_ndarrays(res.parameters) for _, res in results]
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self.recorder.inner_output = parameters_to_ndarrays(params) if params is not None else None
        return params, metrics

    def initialize_parameters(self, client_manager: Any) -> Any:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        return []  # the oracle never samples clients

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Any) -> Any:
        return self.inner.evaluate(server_round, parameters)


def match(chosen: list[NDArrays], clients: list[NDArrays]) -> list[int]:
    """Indices of the clients equal to ``chosen`` (each client used once, the first equal unused one)."""
    used: set[int] = set()
    indices = []
    for weights in chosen:
        for i, client in enumerate(clients):
            if i not in used and all(np.array_equal(a, b) for a, b in zip(weights, client, strict=True)):
                used.add(i)
                indices.append(i)
                break
        else:
            raise AssertionError("a chosen client matches no input")
    return indices


def fit_results(clients: list[NDArrays], num_examples: list[int]) -> list[tuple[ClientProxy, FitRes]]:
    return [
        (
            OracleProxy(str(i)),
            FitRes(
                status=Status(code=Code.OK, message=""),
                parameters=ndarrays_to_parameters(client),
                num_examples=n,
                metrics={},
            ),
        )
        for i, (client, n) in enumerate(zip(clients, num_examples, strict=True))
    ]
