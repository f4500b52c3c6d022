"""Run Flower's own server-side aggregation (flwr 1.42.0) on given client results: an oracle for fedagg.

Runs only with the Flower venv's python (``scripts/oracle-venv flower``); fedagg never imports flwr.
Usage: ``aggregate.py WORKDIR``. Reads ``WORKDIR/config.json`` and ``WORKDIR/input.npz``; writes
``WORKDIR/output.npz`` and ``WORKDIR/report.json``. tests/oracles/flower_oracle.py writes and reads these.

Every aggregation goes through the legacy strategy classes of ``flwr.server.strategy`` (their
``aggregate_fit``), which call the functions of ``flwr/server/strategy/aggregate.py``; each client
result is a real ``FitRes`` whose ``Parameters`` were serialized by ``ndarrays_to_parameters``
(``np.save``, so dtype and shape survive, flwr/compat/common/parameter.py:37-55). Paths below are
relative to ``site-packages/flwr/`` of flwr 1.42.0; ``aggregate.py`` means server/strategy/aggregate.py.

config.json::

    {"method": "fedavg" | "median" | "trimmed_avg" | "krum" | "bulyan" | "dp_fixed" | "dp_adaptive",
     "options": {...},            # see below
     "num_layers": L,
     "rounds": [{"num_clients": N, "has_global": bool}, ...],
     "seed": int}                 # np.random.seed(seed) once, before round 0 (DP noise only)

input.npz: ``r{r}_c{i}_l{j}`` = round r, client i, layer j (any float dtype; kept as given, float32
normally); ``r{r}_num_examples`` = int64[N]; ``r{r}_global_l{j}`` = the current global model of round r
(DP methods: required for round 0; for a later round without it, the previous round's final, noised
output is used, as Flower's server would). Rounds are independent for the non-DP methods (a batch of
cases in one process); the DP wrappers keep their state (the adaptive clipping norm) across rounds.

output.npz: ``r{r}_l{j}`` = the strategy's result (DP: with noise); DP methods also
``r{r}_noiseless_l{j}`` (what the wrapped strategy returned, before noise) and ``r{r}_clipped_c{i}_l{j}``
(each client's parameters after clipping, exactly as handed to the wrapped strategy).
report.json: ``{"flwr": version, "rounds": [{...per round...}]}`` with, per round, ``"selected"`` (Krum,
Multi-Krum, Bulyan: client indices, see below) and for DP ``"clipping_norm"`` (used to clip),
``"update_norms"`` (L2 norm of each client's update before clipping, via Flower's get_norm),
``"noise_stddev"`` (the std Flower passed to its noise function), ``"noise_multiplier"`` (the wrapper's,
effective for adaptive), adaptive also ``"norm_bits"``, ``"clipped_count"``, ``"noised_clipped_count"``,
``"clipped_count_stddev"``, ``"next_clipping_norm"``.

What each method computes (N clients, weights n_i = num_examples):

* ``fedavg`` (options: ``inplace`` = true): FedAvg.aggregate_fit (server/strategy/fedavg.py:219-253):
  sum_i (n_i / sum n) x_i; inplace (fedavg.py:113, the default) uses aggregate_inplace (aggregate.py:46-82:
  scales each client by the float64 factor n_i/sum n, casting into the client's dtype, then adds in
  client order); inplace=false uses aggregate (aggregate.py:28-43: sum(n_i x_i) / sum n).
* ``median``: FedMedian.aggregate_fit (fedmedian.py:45-64) -> aggregate_median (aggregate.py:85-94):
  per layer ``np.median(np.asarray(layer), axis=0)``, i.e. coordinate-wise, unweighted; for even N the
  mean of the two middle values. num_examples is ignored.
* ``trimmed_avg`` (options: ``beta``, default 0.2, 0 <= beta < 0.5, fedtrimmedavg.py:93-96):
  FedTrimmedAvg.aggregate_fit (fedtrimmedavg.py:119-138) -> aggregate_trimmed_avg (aggregate.py:283-295)
  -> _trim_mean (aggregate.py:259-280): per coordinate, k = int(beta * N) lowest and k highest values
  dropped (np.partition), unweighted mean of the middle N - 2k. num_examples is ignored.
* ``krum`` (options: ``num_malicious`` f, ``to_keep`` m, default 0): Krum.aggregate_fit (krum.py:124-145)
  -> aggregate_krum (aggregate.py:97-132). Distances (aggregate.py:243-256): all layers of a client
  flattened and concatenated (in the client's dtype), d_ij = ``np.linalg.norm(x_i - x_j) ** 2`` (squared
  L2, stored as float64). k = max(1, N - f - 2) closest: ``np.argsort(d_i)[1:k+1]`` (position 0 is
  skipped as "self": with a tie at distance 0 another client may be skipped instead); score_i = sum of
  those k distances. m = 0 (Krum): returns the client with ``np.argmin(score)`` (the first on ties),
  unchanged. m > 0 (Multi-Krum): ``np.argsort(scores)[::-1][N - m:]`` = the m lowest scores, then
  ``aggregate`` (aggregate.py:28-43) = their num_examples-weighted average (weighted, unlike median).
* ``bulyan`` (options: ``num_malicious`` f, ``to_keep`` = 0 passed to Krum): Bulyan.aggregate_fit
  (bulyan.py:127-155; Bulyan's constructor, bulyan.py:79-120, takes the Krum kwargs as
  **aggregation_rule_kwargs and Krum needs to_keep, so it is always passed) -> aggregate_bulyan
  (aggregate.py:136-215): requires N >= 4f + 3 (else ValueError); theta = N - 2f times: run Krum with f on
  the remaining clients, move its choice (found by exact equality, aggregate.py:308-335) to the selected
  set; then per coordinate the median of the theta selected (aggregate_median) and the mean of the
  beta = theta - 2f selected values closest to it (|x - median|, np.argpartition, aggregate.py:338-382).
  Unweighted.
* ``dp_fixed`` (options: ``noise_multiplier`` z, ``clipping_norm`` C, ``num_sampled_clients`` m = N by
  default, ``inner``: a method above with its options, default ``{"method": "fedavg"}``):
  DifferentialPrivacyServerSideFixedClipping (server/strategy/dp_fixed_clipping.py:47-199).
  configure_fit stores the current global model g (dp_fixed_clipping.py:113-118; here: this round's
  global). aggregate_fit (dp_fixed_clipping.py:128-184): for each client, compute_clip_model_update
  (supercore/differential_privacy.py:71-81): u = x - g (np.subtract, client dtype), scale
  = min(1, C / ||u||) with ||u|| = get_norm (differential_privacy.py:36-40: sqrt of the sum of the layers'
  squared ``np.linalg.norm(layer.flat)``, a Python float), u *= scale in place, x' = g + u. A zero update
  (||u|| = 0) raises ZeroDivisionError in Flower (C / 0.0 on Python floats). The inner strategy aggregates
  the x' (with the clients' num_examples). Then add_gaussian_noise_to_params (differential_privacy.py:
  114-126): every element of every layer gets ``np.random.normal(0, std, shape).astype(dtype)`` added, std
  = compute_stdv = z * C / m (differential_privacy.py:61-68) — m is num_sampled_clients, not the number
  or weight of the results; layers are noised in order from numpy's global RNG.
* ``dp_adaptive`` (options: ``noise_multiplier`` z, ``num_sampled_clients`` m = N by default,
  ``initial_clipping_norm`` 0.1, ``target_clipped_quantile`` 0.5, ``clip_norm_lr`` 0.2,
  ``clipped_count_stddev`` null, ``inner`` as above): DifferentialPrivacyServerSideAdaptiveClipping
  (server/strategy/dp_adaptive_clipping.py:52-254). Constructor (dp_adaptive_clipping.py:89-141) ->
  compute_adaptive_noise_params (differential_privacy.py:129-169): z > 0: sigma_b = clipped_count_stddev
  or m / 20 when null, ValueError unless z < 2 sigma_b, effective z_d = (z^-2 - (2 sigma_b)^-2)^-1/2;
  z = 0: sigma_b = clipped_count_stddev or 0, z_d = 0. aggregate_fit (dp_adaptive_clipping.py:167-239):
  each client clipped with the current C as in dp_fixed (adaptive_clip_inputs_inplace,
  differential_privacy.py:84-94), norm_bit = (scale < 1), i.e. True when the update was clipped
  (||u|| > C); b = number of True; noised b~ = ``np.random.normal(b, sigma_b)`` (one draw from the global
  RNG, before the parameter noise, drawn even when sigma_b = 0); then C <- C * exp(-clip_norm_lr *
  (b~ / len(results) - target_clipped_quantile)) (dp_adaptive_clipping.py:208-217); the inner strategy
  aggregates; noise std = z_d * C_new / m with the *updated* C (dp_adaptive_clipping.py:223-237).
  Note the sign: the fraction *clipped* is compared with the target, so when more updates are clipped
  than the target C shrinks (Andrew et al. 2019 use the fraction *unclipped*, which grows C then). The
  Message-API twin (serverapp/strategy/dp_adaptive_clipping.py:106-111) has the same sign.

Krum / Multi-Krum / Bulyan ``selected``: Flower returns only arrays, so the script records which clients
were chosen by wrapping (not changing) module-level helpers of aggregate.py — ``aggregate`` (Multi-Krum's
average) and ``_aggregate_n_closest_weights`` (Bulyan's selected set) — and matches the arrays to the
inputs by exact equality (the first unused equal client; identical clients are interchangeable). For
Krum it is the client equal to the result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flower_recording import (  # a sibling module: the script directory is on sys.path
    NDArrays,
    Recorder,
    RecordingStrategy,
    fit_results,
    match,
)
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)


def make_strategy(method: str, options: dict[str, Any]) -> Strategy:
    if method == "fedavg":
        return FedAvg(inplace=bool(options.get("inplace", True)))
    if method == "median":
        return FedMedian()
    if method == "trimmed_avg":
        return FedTrimmedAvg(beta=float(options.get("beta", 0.2)))
    if method == "krum":
        return Krum(
            num_malicious_clients=int(options["num_malicious"]),
            num_clients_to_keep=int(options.get("to_keep", 0)),
        )
    if method == "bulyan":
        return Bulyan(
            num_malicious_clients=int(options["num_malicious"]), to_keep=int(options.get("to_keep", 0))
        )
    raise SystemExit(f"unknown method {method!r}")


def main() -> None:
    work = Path(sys.argv[1])
    config = json.loads((work / "config.json").read_text())
    data = np.load(work / "input.npz")
    method: str = config["method"]
    options: dict[str, Any] = config.get("options", {})
    layers = range(int(config["num_layers"]))
    recorder = Recorder()
    np.random.seed(int(config.get("seed", 0)))
    out: dict[str, np.ndarray] = {}
    report_rounds: list[dict[str, Any]] = []

    dp = method in ("dp_fixed", "dp_adaptive")
    strategy: Any
    if dp:
        inner_spec = dict(options.get("inner", {"method": "fedavg"}))
        inner = RecordingStrategy(make_strategy(inner_spec.pop("method"), inner_spec), recorder)
    previous: NDArrays | None = None

    for r, spec in enumerate(config["rounds"]):
        recorder.reset()
        n_clients = int(spec["num_clients"])
        clients = [[data[f"r{r}_c{i}_l{j}"] for j in layers] for i in range(n_clients)]
        num_examples = [int(n) for n in data[f"r{r}_num_examples"]]
        info: dict[str, Any] = {}
        if not dp:
            strategy = make_strategy(method, options)
            params, _ = strategy.aggregate_fit(r + 1, fit_results(clients, num_examples), [])
            result = parameters_to_ndarrays(params)
            if method == "krum" and int(options.get("to_keep", 0)) == 0:
                info["selected"] = match([result], clients)
            elif method == "krum":
                assert recorder.averaged is not None
                info["selected"] = match(recorder.averaged, clients)
            elif method == "bulyan":
                assert recorder.bulyan_set is not None
                info["selected"] = match(recorder.bulyan_set, clients)
        else:
            if spec["has_global"]:
                current = [data[f"r{r}_global_l{j}"] for j in layers]
            elif previous is not None:
                current = previous
            else:
                raise SystemExit("round 0 needs a global model")
            if r == 0:
                m = int(options.get("num_sampled_clients") or n_clients)
                if method == "dp_fixed":
                    strategy = DifferentialPrivacyServerSideFixedClipping(
                        inner, float(options["noise_multiplier"]), float(options["clipping_norm"]), m
                    )
                else:
                    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
                        inner,
                        float(options["noise_multiplier"]),
                        m,
                        initial_clipping_norm=float(options.get("initial_clipping_norm", 0.1)),
                        target_clipped_quantile=float(options.get("target_clipped_quantile", 0.5)),
                        clip_norm_lr=float(options.get("clip_norm_lr", 0.2)),
                        clipped_count_stddev=options.get("clipped_count_stddev"),
                    )
            info["clipping_norm"] = float(strategy.clipping_norm)
            # What Flower's server does before a round: configure_fit records the current global model.
            strategy.configure_fit(r + 1, ndarrays_to_parameters(current), None)
            state = np.random.get_state()
            params, _ = strategy.aggregate_fit(r + 1, fit_results(clients, num_examples), [])
            if params is None:
                raise SystemExit("the DP strategy returned no parameters")
            result = parameters_to_ndarrays(params)
            assert recorder.inner_input is not None
            assert recorder.inner_output is not None
            for i, client in enumerate(recorder.inner_input):
                for j in layers:
                    out[f"r{r}_clipped_c{i}_l{j}"] = client[j]
            for j in layers:
                out[f"r{r}_noiseless_l{j}"] = recorder.inner_output[j]
            info["update_norms"] = recorder.update_norms
            info["noise_stddev"] = recorder.noise_stddevs[0] if recorder.noise_stddevs else None
            info["noise_multiplier"] = float(strategy.noise_multiplier)
            info["num_sampled_clients"] = int(strategy.num_sampled_clients)
            if method == "dp_adaptive":
                # Replay the count draw from the saved RNG state: the first draw of the round.
                probe = np.random.RandomState()
                probe.set_state(state)
                bits = recorder.norm_bits
                info["norm_bits"] = bits
                info["clipped_count"] = int(sum(bits))
                info["noised_clipped_count"] = float(probe.normal(sum(bits), strategy.clipped_count_stddev))
                info["clipped_count_stddev"] = float(strategy.clipped_count_stddev)
                info["next_clipping_norm"] = float(strategy.clipping_norm)
            previous = result
        for j in layers:
            out[f"r{r}_l{j}"] = result[j]
        report_rounds.append(info)

    np.savez(work / "output.npz", **out)
    (work / "report.json").write_text(json.dumps({"flwr": flwr.__version__, "rounds": report_rounds}))


if __name__ == "__main__":
    main()
