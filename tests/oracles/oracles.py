"""Call reference implementations from tests: Flower, OpenFL and dp-accounting, each from its own venv.

Each wrapper writes its inputs to a temporary directory, runs a script of ``flower_side/``,
``openfl_side/`` or ``dp_side/`` with the python of that oracle's venv in a separate process, and reads
the outputs back. fedagg's test process never imports flwr, openfl or dp_accounting. The venvs are built
on first use and cached, pinned by frozen constraint files: ``.venv-flower/`` and
``.venv-dp-accounting/`` by ``scripts/oracle-venv`` (``tests/oracles/*-constraints.txt``),
``.venv-openfl[-VERSION]/`` by ``scripts/openfl-venv``. A venv that cannot be built skips the test
locally and fails it under ``CI=true`` (``tests.conftest.require``).

Conventions: a model or a client's contribution is a sequence of numpy arrays ("layers"), float32
normally; arrays are passed with their dtype and shape unchanged, and results come back as the oracle
computed them (its dtype). What each oracle computes, with file:line references into the installed
packages, is in the docstring of its side script (flower_side/aggregate.py, openfl_side/aggregate.py,
dp_side/accountant.py). An oracle that fails (e.g. Flower's ValueError for Bulyan with too few clients)
raises ``OracleError`` carrying the script's stderr.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
Layers = Sequence[np.ndarray]
"""A model or one client's contribution: its arrays in order."""


class OracleError(RuntimeError):
    """The oracle's script failed; the message ends with its stderr."""


# ---- venvs ------------------------------------------------------------------------------------------------


def _venv_python(command: list[str], what: str) -> Path:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    require(result.returncode == 0, f"cannot build the {what} venv: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@functools.cache
def flower_python() -> Path:
    """The python of ``.venv-flower/`` (flwr 1.42.0), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "oracle-venv"), "flower"], "Flower")


@functools.cache
def dp_accounting_python() -> Path:
    """The python of ``.venv-dp-accounting/`` (dp-accounting 0.6.0), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "oracle-venv"), "dp-accounting"], "dp-accounting")


@functools.cache
def openfl_python(version: str = "1.7.1") -> Path:
    """The python of OpenFL ``version``'s venv (``scripts/openfl-venv VERSION``: 1.7.1, and 1.9 where the
    script knows it), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "openfl-venv"), version], f"OpenFL {version}")


def _clean_env() -> dict[str, str]:
    """Environment without this venv's paths, so an oracle never sees fedagg's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(python: Path, script: Path, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
        timeout=timeout,
    )
    if result.returncode != 0:
        raise OracleError(f"{script.name} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def _run_workdir(
    python: Path, script: Path, config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``script WORKDIR`` on config.json + input.npz; return output.npz and report.json."""
    with tempfile.TemporaryDirectory(prefix="oracle-") as tmp:
        work = Path(tmp)
        (work / "config.json").write_text(json.dumps(config))
        np.savez(work / "input.npz", **arrays)
        _run(python, script, str(work))
        with np.load(work / "output.npz") as output:
            out = {key: output[key] for key in output.files}
        report: dict[str, Any] = json.loads((work / "report.json").read_text())
    return out, report


# ---- Flower -----------------------------------------------------------------------------------------------


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
    out, report = _run_workdir(flower_python(), HERE / "flower_side" / "aggregate.py", config, arrays)
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


# ---- OpenFL -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenflContribution:
    """One collaborator's train-task result in a round: its name, data_size and trained tensors."""

    name: str
    data_size: int
    tensors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OpenflRoundResult:
    """One round of OpenFL aggregation.

    ``aggregated``: what the aggregation function returned per tensor (its dtype; the unrounded value the
    adaptive functions use as the next round's base); ``model``: the ("model",) record of the next round,
    i.e. what collaborators receive (float32); ``weights``: the LocalTensor weights; adaptive only:
    ``base`` and ``gradient`` per optimized tensor (what ``_make_gradient`` got and returned).
    """

    aggregated: dict[str, np.ndarray]
    model: dict[str, np.ndarray]
    weights: dict[str, float]
    base: dict[str, np.ndarray]
    gradient: dict[str, np.ndarray]


@dataclass(frozen=True)
class OpenflRun:
    openfl_version: str
    function: str
    """The class that ran (``YogiAggregationFixed`` when OpenFL's Yogi defect was worked around)."""
    yogi_fixed: bool
    rounds: list[OpenflRoundResult]


def openfl_aggregate(
    function: str,
    initial: Mapping[str, np.ndarray],
    rounds: Sequence[Sequence[OpenflContribution]],
    *,
    settings: Mapping[str, Any] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    params_format: str = "lists",
    delta_updates: bool = True,
    version: str = "1.7.1",
) -> OpenflRun:
    """Run OpenFL ``version``'s aggregation function ``function`` over ``rounds`` (see
    openfl_side/aggregate.py for every convention).

    ``function``: "GeometricMedian", "AdagradAdaptiveAggregation", "AdamAdaptiveAggregation",
    "YogiAdaptiveAggregation", "FedCurvWeightedAverage" or "WeightedAverage". ``initial``: the initial
    model (tensor name -> array; float32 as from a .pbuf), the round-0 ("model",) records. ``settings``:
    the plan's ``aggregation_type.settings`` without ``params`` (learning_rate, betas,
    initial_accumulator_value, epsilon). ``params``: the adaptive optimizer's ``params`` (default: the
    initial model; only these tensors are optimized, the others weighted-averaged), given to OpenFL as
    nested lists like a plan's YAML (``params_format="lists"``) or as the arrays (``"arrays"``).
    """
    names = list(initial)
    arrays: dict[str, np.ndarray] = {
        f"initial_t{j}": np.asarray(initial[name]) for j, name in enumerate(names)
    }
    if params is not None:
        for j, name in enumerate(names):
            if name in params:
                arrays[f"params_t{j}"] = np.asarray(params[name])
        assert set(params) <= set(names), "params for tensors the model does not have"
    round_specs = []
    for r, contributions in enumerate(rounds):
        for i, contribution in enumerate(contributions):
            assert set(contribution.tensors) == set(names), (
                f"{contribution.name}: tensors differ from the model"
            )
            for j, name in enumerate(names):
                arrays[f"r{r}_c{i}_t{j}"] = np.asarray(contribution.tensors[name])
        round_specs.append(
            {
                "collaborators": [c.name for c in contributions],
                "data_sizes": [c.data_size for c in contributions],
            }
        )
    config = {
        "function": function,
        "settings": dict(settings or {}),
        "params_format": params_format,
        "tensor_names": names,
        "delta_updates": delta_updates,
        "rounds": round_specs,
    }
    out, report = _run_workdir(openfl_python(version), HERE / "openfl_side" / "aggregate.py", config, arrays)
    results = []
    for r, info in enumerate(report["rounds"]):
        results.append(
            OpenflRoundResult(
                aggregated={name: out[f"r{r}_t{j}"] for j, name in enumerate(names)},
                model={name: out[f"r{r}_model_t{j}"] for j, name in enumerate(names)},
                weights=info["weights"],
                base={
                    name: out[f"r{r}_base_t{j}"] for j, name in enumerate(names) if f"r{r}_base_t{j}" in out
                },
                gradient={
                    name: out[f"r{r}_grad_t{j}"] for j, name in enumerate(names) if f"r{r}_grad_t{j}" in out
                },
            )
        )
    return OpenflRun(report["openfl"], report["function"], report["yogi_fixed"], results)


# ---- dp-accounting ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DpAccounting:
    """dp-accounting's answer for T compositions of a (Poisson-sampled) Gaussian mechanism.

    ``rdp[k]`` is the composed RDP at ``orders[k]``; ``rdp_epsilon`` is min over orders of the library's
    conversion (see dp_side/accountant.py), reached at ``rdp_optimal_order``; ``pld_epsilon`` the PLD
    accountant's; ``gaussian_exact`` the analytic Gaussian epsilon (sampling probability 1 only).
    """

    version: str
    event: str
    rdp_epsilon: float
    rdp_optimal_order: float
    orders: list[float]
    rdp: list[float]
    pld_epsilon: float
    gaussian_exact: float | None


def dp_epsilon(
    noise_multiplier: float,
    sampling_probability: float,
    rounds: int,
    delta: float,
    *,
    orders: Sequence[float] | None = None,
    pld_discretization: float = 1e-4,
    neighboring: str = "add_or_remove_one",
) -> DpAccounting:
    """Epsilon of ``rounds`` compositions of a Gaussian mechanism with ``noise_multiplier``, Poisson-sampled
    with ``sampling_probability`` (1.0: every client every round), at ``delta``: RDP and PLD accountants."""
    args = [
        "--noise-multiplier",
        repr(float(noise_multiplier)),
        "--sampling-probability",
        repr(float(sampling_probability)),
        "--rounds",
        str(int(rounds)),
        "--delta",
        repr(float(delta)),
        "--pld-discretization",
        repr(float(pld_discretization)),
        "--neighboring",
        neighboring,
    ]
    if orders is not None:
        args += ["--orders", ",".join(repr(float(o)) for o in orders)]
    answer = json.loads(_run(dp_accounting_python(), HERE / "dp_side" / "accountant.py", *args))
    return DpAccounting(
        version=answer["dp_accounting"],
        event=answer["event"],
        rdp_epsilon=float(answer["rdp"]["epsilon"]),
        rdp_optimal_order=answer["rdp"]["optimal_order"],
        orders=answer["rdp"]["orders"],
        rdp=[float(v) for v in answer["rdp"]["rdp"]],
        pld_epsilon=float(answer["pld"]["epsilon"]),
        gaussian_exact=answer["gaussian_exact"],
    )


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """dp-accounting's RDP -> (epsilon, delta) conversion (compute_epsilon), restated in plain Python so a
    test can check a fedagg implementation against the same formula without the venv."""
    eps = []
    for a, r in zip(orders, rdp, strict=True):
        if r < 0 or delta**2 + math.expm1(-r) > 0:
            eps.append(0.0)
        elif a > 1.01:
            eps.append(r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
        else:
            eps.append(math.inf)
    return max(0.0, min(eps))
