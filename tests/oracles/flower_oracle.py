"""Flower's strategies as oracles (flower_side/aggregate.py in ``.venv-flower/``): one aggregation, several
rounds, and the differential-privacy wrappers' rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.oracles.oracles import HERE, Layers, flower_python, run_in_workdir


@dataclass(frozen=True)
class FlowerResult:
    """One aggregation by a Flower strategy.

    ``selected``: for Krum the chosen client's index, for Multi-Krum the kept clients (in Flower's order),
    for Bulyan the clients Bulyan's Krum rounds selected (in selection order); None for the others.
    """

    aggregate: list[np.ndarray]
    selected: list[int] | None


@dataclass(frozen=True)
class FlowerRound:
    """One round of client results for a Flower DP wrapper.

    ``global_model``: the current global model the wrapper clips updates against (what ``configure_fit``
    received). Required in round 0; None later means the previous round's final (noised) result, as
    Flower's server would use.
    """

    clients: Sequence[Layers]
    num_examples: Sequence[int]
    global_model: Layers | None = None


@dataclass(frozen=True)
class FlowerDpRound:
    """What a Flower server-side DP wrapper did in one round (see flower_side/aggregate.py).

    ``result`` = ``noiseless`` + Gaussian noise of std ``noise_stddev`` per element (seeded);
    ``clipped[i]`` = client i's parameters after clipping, ``global + min(1, C / ||update||) * update``,
    as handed to the inner strategy; ``noiseless`` = the inner strategy's result. ``clipping_norm`` is C
    used for clipping in this round; adaptive: ``norm_bits[i]`` is True when client i was clipped,
    ``noised_clipped_count`` the noisy count Flower drew and ``next_clipping_norm`` the updated C (which
    the noise of this round already used: noise_stddev = noise_multiplier * next_clipping_norm / m).
    """

    result: list[np.ndarray]
    noiseless: list[np.ndarray]
    clipped: list[list[np.ndarray]]
    clipping_norm: float
    update_norms: list[float]
    noise_stddev: float | None
    noise_multiplier: float
    num_sampled_clients: int
    norm_bits: list[bool] | None = None
    clipped_count: int | None = None
    noised_clipped_count: float | None = None
    clipped_count_stddev: float | None = None
    next_clipping_norm: float | None = None


def _flower_run(
    method: str, options: dict[str, Any], rounds: Sequence[FlowerRound], seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    layer_counts = {len(client) for spec in rounds for client in spec.clients}
    assert len(layer_counts) == 1, "every client needs the same number of layers"
    num_layers = layer_counts.pop()
    arrays: dict[str, np.ndarray] = {}
    round_specs = []
    for r, spec in enumerate(rounds):
        assert len(spec.clients) == len(spec.num_examples), "one num_examples per client"
        for i, client in enumerate(spec.clients):
            for j, layer in enumerate(client):
                arrays[f"r{r}_c{i}_l{j}"] = np.asarray(layer)
        arrays[f"r{r}_num_examples"] = np.asarray(spec.num_examples, np.int64)
        if spec.global_model is not None:
            for j, layer in enumerate(spec.global_model):
                arrays[f"r{r}_global_l{j}"] = np.asarray(layer)
        round_specs.append({"num_clients": len(spec.clients), "has_global": spec.global_model is not None})
    config = {
        "method": method,
        "options": options,
        "num_layers": num_layers,
        "rounds": round_specs,
        "seed": seed,
    }
    out, report = run_in_workdir(flower_python(), HERE / "flower_side" / "aggregate.py", config, arrays)
    return out, report, num_layers


def flower_aggregate_many(
    method: str, cases: Sequence[tuple[Sequence[Layers], Sequence[int]]], **options: Any
) -> list[FlowerResult]:
    """Aggregate several independent cases (clients, num_examples) with one Flower method in one process.

    ``method``: "fedavg" (option ``inplace``), "median", "trimmed_avg" (``beta``), "krum"
    (``num_malicious``, ``to_keep``), "bulyan" (``num_malicious``).
    """
    rounds = [FlowerRound(clients, num_examples) for clients, num_examples in cases]
    out, report, num_layers = _flower_run(method, options, rounds)
    return [
        FlowerResult([out[f"r{r}_l{j}"] for j in range(num_layers)], info.get("selected"))
        for r, info in enumerate(report["rounds"])
    ]


def flower_aggregate(
    method: str, clients: Sequence[Layers], num_examples: Sequence[int] | None = None, **options: Any
) -> FlowerResult:
    """One aggregation by a Flower strategy (see ``flower_aggregate_many``); num_examples default 1 each."""
    examples = list(num_examples) if num_examples is not None else [1] * len(clients)
    return flower_aggregate_many(method, [(clients, examples)], **options)[0]


def flower_fedavg(
    clients: Sequence[Layers], num_examples: Sequence[int], *, inplace: bool = True
) -> list[np.ndarray]:
    """FedAvg: the num_examples-weighted mean."""
    return flower_aggregate("fedavg", clients, num_examples, inplace=inplace).aggregate


def flower_median(clients: Sequence[Layers]) -> list[np.ndarray]:
    """FedMedian: the coordinate-wise median (unweighted; mean of the middle two for an even count)."""
    return flower_aggregate("median", clients).aggregate


def flower_trimmed_avg(clients: Sequence[Layers], beta: float) -> list[np.ndarray]:
    """FedTrimmedAvg: per coordinate, drop int(beta * N) lowest and highest values, mean of the rest."""
    return flower_aggregate("trimmed_avg", clients, beta=beta).aggregate


def flower_krum(
    clients: Sequence[Layers],
    num_malicious: int,
    to_keep: int = 0,
    num_examples: Sequence[int] | None = None,
) -> FlowerResult:
    """Krum (to_keep 0: the best-scored client) or Multi-Krum (the num_examples-weighted mean of the
    to_keep best-scored clients)."""
    return flower_aggregate("krum", clients, num_examples, num_malicious=num_malicious, to_keep=to_keep)


def flower_bulyan(clients: Sequence[Layers], num_malicious: int) -> FlowerResult:
    """Bulyan with Krum as its selection rule (needs N >= 4f + 3)."""
    return flower_aggregate("bulyan", clients, num_malicious=num_malicious)


def _dp_rounds(
    out: dict[str, np.ndarray], report: dict[str, Any], rounds: Sequence[FlowerRound], num_layers: int
) -> list[FlowerDpRound]:
    results = []
    layers = range(num_layers)
    for r, info in enumerate(report["rounds"]):
        results.append(
            FlowerDpRound(
                result=[out[f"r{r}_l{j}"] for j in layers],
                noiseless=[out[f"r{r}_noiseless_l{j}"] for j in layers],
                clipped=[
                    [out[f"r{r}_clipped_c{i}_l{j}"] for j in layers] for i in range(len(rounds[r].clients))
                ],
                clipping_norm=info["clipping_norm"],
                update_norms=info["update_norms"],
                noise_stddev=info["noise_stddev"],
                noise_multiplier=info["noise_multiplier"],
                num_sampled_clients=info["num_sampled_clients"],
                norm_bits=info.get("norm_bits"),
                clipped_count=info.get("clipped_count"),
                noised_clipped_count=info.get("noised_clipped_count"),
                clipped_count_stddev=info.get("clipped_count_stddev"),
                next_clipping_norm=info.get("next_clipping_norm"),
            )
        )
    return results


def flower_dp_fixed(
    rounds: Sequence[FlowerRound],
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sampled_clients: int | None = None,
    inner: str = "fedavg",
    inner_options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[FlowerDpRound]:
    """DifferentialPrivacyServerSideFixedClipping around Flower's ``inner`` strategy, over ``rounds``.

    num_sampled_clients defaults to round 0's client count; ``seed`` seeds numpy's global RNG once.
    """
    options = {
        "noise_multiplier": noise_multiplier,
        "clipping_norm": clipping_norm,
        "num_sampled_clients": num_sampled_clients,
        "inner": {"method": inner, **(inner_options or {})},
    }
    out, report, num_layers = _flower_run("dp_fixed", options, rounds, seed)
    return _dp_rounds(out, report, rounds, num_layers)


def flower_dp_adaptive(
    rounds: Sequence[FlowerRound],
    *,
    noise_multiplier: float,
    num_sampled_clients: int | None = None,
    initial_clipping_norm: float = 0.1,
    target_clipped_quantile: float = 0.5,
    clip_norm_lr: float = 0.2,
    clipped_count_stddev: float | None = None,
    inner: str = "fedavg",
    inner_options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[FlowerDpRound]:
    """DifferentialPrivacyServerSideAdaptiveClipping around Flower's ``inner`` strategy, over ``rounds``
    (Flower's defaults; num_sampled_clients defaults to round 0's client count)."""
    options = {
        "noise_multiplier": noise_multiplier,
        "num_sampled_clients": num_sampled_clients,
        "initial_clipping_norm": initial_clipping_norm,
        "target_clipped_quantile": target_clipped_quantile,
        "clip_norm_lr": clip_norm_lr,
        "clipped_count_stddev": clipped_count_stddev,
        "inner": {"method": inner, **(inner_options or {})},
    }
    out, report, num_layers = _flower_run("dp_adaptive", options, rounds, seed)
    return _dp_rounds(out, report, rounds, num_layers)
