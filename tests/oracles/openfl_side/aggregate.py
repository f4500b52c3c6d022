"""Run OpenFL's own aggregation functions over several rounds, the way its aggregator calls them.

Runs only with an OpenFL venv's python (``scripts/openfl-venv [1.7.1|1.9]``); fedagg never imports
openfl. Usage: ``aggregate.py WORKDIR``: reads ``WORKDIR/config.json`` and ``WORKDIR/input.npz``, writes
``WORKDIR/output.npz`` and ``WORKDIR/report.json`` (tests/oracles/openfl_oracle.py writes and reads them).

What is real OpenFL here: the aggregation function object, built by ``Plan.build(template, settings)``
exactly as ``Plan.get_tasks`` builds a task's ``aggregation_type`` from a plan (federated/plan/plan.py:
343-363 and 211-235 in 1.7.1); a real ``TensorDB`` and its ``get_aggregated_tensor`` (databases/
tensor_db.py:154-247 in 1.7.1, 201-294 in 1.9), which builds the ``LocalTensor``s and the ``db_iterator``
and calls the function; and the aggregator's own ``Aggregator._prepare_trained`` (component/aggregator/
aggregator.py:790-875 in 1.7.1, 1007- in 1.9), called unbound on a stand-in holding ``tensor_db``,
``use_delta_updates`` and ``tensor_codec = TensorCodec(NoCompressionPipeline())`` (the aggregator's
default, aggregator.py:149-150), which files the result for the next round. Only the collaborator weights
are computed here, with the aggregator's expression (aggregator.py:901-909 in 1.7.1, 1118-1125 in 1.9).
Paths are relative to ``site-packages/openfl/``; line numbers are 1.7.1's unless 1.9 is named.

Conventions (what the aggregator does, what a fedagg implementation must match):

* The initial model is stored as round-0 records ``TensorKey(name, AGG, 0, False, ("model",))`` (as
  Aggregator._load_initial_tensors, aggregator.py:200-225). It is float32 when it comes from a .pbuf.
* Round r (0-based): collaborator c's trained tensor is the record ``TensorKey(name, AGG, r, False,
  change_tags(("trained",), add_field=c))`` (tags sorted: e.g. ``("one", "trained")``; what _process_named_tensor files after
  decompression, aggregator.py:700-788; with delta updates it has already added the delta to the
  ("model",) record of round r). Pass full trained tensors, not deltas.
* Weights: with s_c = the task's data_size (an int), ``weight_c = s_c / sum(s)`` (Python floats, summing
  to 1; get_aggregated_tensor asserts |1 - sum| < 0.01). Only the collaborators done with the round
  count. ``LocalTensor(col_name=c, tensor=array, weight=weight_c)`` in the order given (the aggregator's
  order is the task's collaborator list from the assigner, i.e. the plan's authorized cols, filtered to
  those done).
* The function is called once per tensor, as
  ``fn(local_tensors, db_iterator, tensor_name, fl_round=r, tags=("trained",))``; ``db_iterator`` yields
  every TensorDB row (pandas Series with tensor_name, origin, round, report, tags, nparray), sorted by
  round descending (tensor_db.py:249-265). The result goes through ``np.array`` (1.7.1: a copy) /
  ``np.asarray`` (1.9: no copy — for the adaptive functions that is the optimizer's own array, so this
  script copies every output) and _prepare_trained files it as ``TensorKey(name, AGG, r + 1, False,
  ("aggregated",))`` unchanged (any dtype), then (delta -> NoCompression float32 bytes -> back, +
  base) as the ("model",) record of round r + 1, which is what collaborators get: float32.
* Adaptive functions (AdaptiveAggregation.call, interface/aggregation_functions/core/
  adaptive_aggregation.py:58-113): a tensor not in ``optimizer.params`` goes to the default
  ``WeightedAverage`` (line 91-92). Otherwise the base model is looked up with
  ``search_tag = "aggregated" if fl_round != 0 else "model"``: the last iterated row (i.e. the lowest
  round, but only round == fl_round matches) with that tensor name, round == fl_round, search_tag in
  tags and "delta" not in tags (lines 95-108): in round 0 the initial model, in round r > 0 the
  *unrounded* result of round r - 1 (the ("aggregated",) record, not the float32 model sent out).
  gradient = sum_c weight_c * (base - tensor_c) (_make_gradient, lines 38-56; Python ``sum`` over the
  list, in collaborator order), ``optimizer.step({name: gradient})`` (line 112), and the result is
  ``optimizer.params[name]`` (line 113): the optimizer's own state, initialised from the ``params``
  setting — not from the base model: the gradient is relative to the TensorDB base, the step applies to
  the optimizer's copy. Both are the initial model unless ``params`` differs.
* ``params`` as a plan gives it: Plan.build passes the YAML ``settings`` as keyword arguments, so
  ``params`` is a dict of nested Python lists (``"params_format": "lists"``, the default: built with
  ``ndarray.tolist()`` of the npz ``params`` arrays, so float32 values become Python floats). The
  optimizers then make float64 state (``np.full_like(list, value)`` -> float64 for float lists), the first
  ``params[name] -= step`` turns the list into a float64 ndarray, and every result is float64. Integer
  lists would make integer accumulators (Adagrad's initial 0.1 truncates to 0): give floats.
  Mixed precision even then: with float32 trained tensors and base, the gradient is float32 (Python-float
  weights keep float32 under NumPy 2), and so are the ``(1 - b1) * g`` and ``(1 - b2) * g**2`` terms and
  Adagrad's ``g**2`` before they meet the float64 state: a float64 restatement agrees to ~1e-7 relative.
  ``"params_format": "arrays"`` passes copies of the npz arrays (their dtype, float32 normally: state and
  results stay float32; NumPy 2 keeps float32 when scaled by Python floats).
* Optimizers (utilities/optimizers/numpy/), with g the gradient, per tensor, t = 1, 2, ... counted per
  tensor:

  - Adagrad (adagrad_optimizer.py; defaults of AdagradAdaptiveAggregation: learning_rate 0.01,
    initial_accumulator_value 0.1, epsilon 1e-10): G = G + g**2 (G0 = initial_accumulator_value,
    line 123); x -= lr * g / (sqrt(G) + eps) (line 101).
  - Adam (adam_optimizer.py; defaults learning_rate 0.01, betas (0.9, 0.999), initial_accumulator_value
    0.0, epsilon 1e-8): m = b1 m + (1 - b1) g (line 118); v = b2 v + (1 - b2) g**2 (line 130);
    m^ = m / (1 - b1**t), v^ = v / (1 - b2**t) (lines 160-161); x -= lr * m^ / (sqrt(v^) + eps) (line
    164). m0 = v0 = initial_accumulator_value. First step with m0 = v0 = 0: x -= lr * g / (|g| + eps).
  - Yogi (yogi_optimizer.py; NumPyAdam with another second moment; same defaults as Adam): v = b2 v +
    (1 - b2) * sign(g**2 - v) * g**2 (lines 80-83; note: b2 also scales v, unlike the Yogi paper's
    v - (1 - b2) sign(v - g**2) g**2), the rest as Adam, bias corrections included.

* YogiAdaptiveAggregation (interface/aggregation_functions/yogi_adaptive_aggregation.py:49-57) passes
  ``epsilo=epsilon`` to NumPyYogi, a TypeError in 1.7.1-1.9, so no plan can build it. This script first
  tries the real class; on that TypeError it builds ``YogiAggregationFixed``, a subclass whose
  constructor does exactly what YogiAdaptiveAggregation.__init__ does with the keyword spelled
  ``epsilon`` (NumPyYogi(params=..., model_interface=None, learning_rate=..., betas=...,
  initial_accumulator_value=..., epsilon=...), then AdaptiveAggregation.__init__(opt, agg_func=
  WeightedAverage())); ``call`` is inherited unchanged. report.json says ``"yogi_fixed": true`` then.
* GeometricMedian (interface/aggregation_functions/geometric_median.py:27-56, 79-112): per tensor (not
  over the whole model). w = weight / sum(weight); median = np.average(tensors, weights=w, axis=0)
  (float64); objective = sum w_i * dist(median, x_i); up to maxiter=4 times: w_i <- w_i / max(1e-5,
  dist(median, x_i)) (the *previous* iteration's w_i, so the reweighting compounds — not Weiszfeld's
  original weight / distance), w <- w / sum(w), median = np.average(...), objective with the new w; stop
  when |prev - obj| < 1e-6 * obj. dist (_l2dist, lines 59-73): 0-d/1-d tensors get a leading axis;
  then the norm of the per-row norms = the Frobenius/L2 norm of the difference. Returns float64.
* FedCurvWeightedAverage (interface/aggregation_functions/fedcurv_weighted_average.py:22-28): a tensor
  whose name ends with ``_u``, ``_v`` or ``_w`` is the plain sum ``np.sum(tensors, axis=0)`` (no weights);
  any other is WeightedAverage: 1.7.1 ``np.average(tensors, weights, axis=0)`` (weighted_average.py:12-14,
  float64 weights -> float64 result); 1.9 ``sum(t * w) / sum(w)`` (weighted_average.py:51-53, keeps
  float32).
* AggregationFunction classes are singletons per process (utilities/types.py:17-41, SingletonABCMeta):
  this script builds one function per run.

config.json::

    {"function": "GeometricMedian" | "AdagradAdaptiveAggregation" | "AdamAdaptiveAggregation"
                 | "YogiAdaptiveAggregation" | "FedCurvWeightedAverage" | "WeightedAverage",
     "settings": {...},           # the plan's settings without params (learning_rate, betas, ...)
     "params_format": "lists" | "arrays",   # adaptive only, see above
     "tensor_names": [...],       # the model's tensors, in order
     "delta_updates": true,       # the aggregator's use_delta_updates (only affects the ("model",) records)
     "rounds": [{"collaborators": [name, ...], "data_sizes": [int, ...]}, ...]}

input.npz: ``initial_t{j}`` = the initial model's tensor j; ``params_t{j}`` (adaptive only, optional: the
optimizer's ``params`` for tensor j; tensors without it are not optimized and use WeightedAverage; when no
``params_*`` key exists at all, every tensor's params = its initial value); ``r{r}_c{i}_t{j}`` =
collaborator i's trained tensor j in round r.

output.npz: ``r{r}_t{j}`` = the aggregated tensor (what get_aggregated_tensor returned, any dtype);
``r{r}_model_t{j}`` = the ("model",) record of round r + 1 (what collaborators receive next);
adaptive: ``r{r}_base_t{j}`` and ``r{r}_grad_t{j}`` = the base model and gradient _make_gradient got.
report.json: ``{"openfl": version, "function": class name, "yogi_fixed": bool, "rounds": [{"weights":
{name: weight}, "dtypes": [...]}, ...]}``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from openfl.component.aggregator.aggregator import Aggregator
from openfl.databases import TensorDB
from openfl.federated.plan.plan import Plan
from openfl.interface.aggregation_functions import WeightedAverage, YogiAdaptiveAggregation
from openfl.interface.aggregation_functions.core import AdaptiveAggregation
from openfl.pipelines import NoCompressionPipeline, TensorCodec
from openfl.utilities import TensorKey, change_tags
from openfl.utilities.optimizers.numpy import NumPyYogi

AGG = "oracle_aggregator_uuid"
ADAPTIVE = ("AdagradAdaptiveAggregation", "AdamAdaptiveAggregation", "YogiAdaptiveAggregation")
TEMPLATE = "openfl.interface.aggregation_functions.{}"


class YogiAggregationFixed(YogiAdaptiveAggregation):
    """YogiAdaptiveAggregation.__init__ with NumPyYogi's ``epsilon`` keyword spelled right (see above)."""

    def __init__(
        self,
        *,
        agg_func: Any = None,
        params: dict[str, Any] | None = None,
        model_interface: Any = None,
        learning_rate: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-8,
    ) -> None:
        opt = NumPyYogi(
            params=params,
            model_interface=model_interface,
            learning_rate=learning_rate,
            betas=betas,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
        )
        AdaptiveAggregation.__init__(self, opt, agg_func if agg_func is not None else WeightedAverage())


def build_function(name: str, settings: dict[str, Any]) -> tuple[Any, bool]:
    """The aggregation function as Plan.get_tasks would build it; (function, yogi_fixed)."""
    try:
        return Plan.build(template=TEMPLATE.format(name), settings=dict(settings)), False
    except TypeError as error:
        if name != "YogiAdaptiveAggregation" or "epsilo" not in str(error):
            raise
    return YogiAggregationFixed(**settings), True


def main() -> None:
    work = Path(sys.argv[1])
    config = json.loads((work / "config.json").read_text())
    data = np.load(work / "input.npz")
    names: list[str] = config["tensor_names"]
    function_name: str = config["function"]
    settings: dict[str, Any] = dict(config.get("settings", {}))
    adaptive = function_name in ADAPTIVE

    if adaptive:
        given = {j for j in range(len(names)) if f"params_t{j}" in data.files}
        sources = (
            {j: data[f"params_t{j}"] for j in given}
            if given
            else {j: data[f"initial_t{j}"] for j in range(len(names))}
        )
        if config.get("params_format", "lists") == "lists":
            settings["params"] = {names[j]: array.tolist() for j, array in sources.items()}
        else:
            settings["params"] = {names[j]: np.array(array, copy=True) for j, array in sources.items()}

    function, yogi_fixed = build_function(function_name, settings)

    recorded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if adaptive:
        original = AdaptiveAggregation._make_gradient

        def make_gradient(base: np.ndarray, local_tensors: list[Any]) -> np.ndarray:
            gradient = original(base, local_tensors)
            recorded["last"] = (np.array(base, copy=True), np.array(gradient, copy=True))
            return gradient

        AdaptiveAggregation._make_gradient = staticmethod(make_gradient)  # observe only

    tensor_db = TensorDB()
    tensor_db.cache_tensor(
        {TensorKey(name, AGG, 0, False, ("model",)): data[f"initial_t{j}"] for j, name in enumerate(names)}
    )
    aggregator = SimpleNamespace(
        tensor_db=tensor_db,
        use_delta_updates=bool(config.get("delta_updates", True)),
        tensor_codec=TensorCodec(NoCompressionPipeline()),
    )

    out: dict[str, np.ndarray] = {}
    rounds_report = []
    for r, spec in enumerate(config["rounds"]):
        collaborators: list[str] = spec["collaborators"]
        for i, col in enumerate(collaborators):
            tensor_db.cache_tensor(
                {
                    TensorKey(name, AGG, r, False, change_tags(("trained",), add_field=col)): data[
                        f"r{r}_c{i}_t{j}"
                    ]
                    for j, name in enumerate(names)
                }
            )
        # The aggregator's expression (aggregator.py:901-909).
        unnormalized = {c: int(s) for c, s in zip(collaborators, spec["data_sizes"], strict=True)}
        weight_total = sum(unnormalized.values())
        weights = {k: v / weight_total for k, v in unnormalized.items()}
        dtypes = []
        for j, name in enumerate(names):
            recorded.clear()
            result = tensor_db.get_aggregated_tensor(
                TensorKey(name, AGG, r, False, ("trained",)), weights, aggregation_function=function
            )
            if result is None:
                raise SystemExit(f"round {r}: no aggregate for {name}")
            out[f"r{r}_t{j}"] = np.array(result, copy=True)
            dtypes.append(str(out[f"r{r}_t{j}"].dtype))
            if "last" in recorded:
                out[f"r{r}_base_t{j}"], out[f"r{r}_grad_t{j}"] = recorded["last"]
            Aggregator._prepare_trained(aggregator, name, AGG, r, False, result)
            model = tensor_db.get_tensor_from_cache(TensorKey(name, AGG, r + 1, False, ("model",)))
            out[f"r{r}_model_t{j}"] = np.array(model, copy=True)
        rounds_report.append({"weights": weights, "dtypes": dtypes})

    np.savez(work / "output.npz", **out)
    report = {
        "openfl": md.version("openfl"),
        "function": type(function).__name__,
        "yogi_fixed": yogi_fixed,
        "rounds": rounds_report,
    }
    (work / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
