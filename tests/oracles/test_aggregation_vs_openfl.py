"""fedagg's OpenFL aggregation methods equal OpenFL's own functions, round after round.

The same three rounds of four collaborators (unequal data sizes, several tensors, one collaborator far off in
round 1) go through OpenFL's aggregation function as its aggregator calls it (tests/oracles/openfl_side/
aggregate.py: real Plan.build, TensorDB and _prepare_trained) and through fedagg's aggregator built as a plan
imported from OpenFL would build it (``registry.openfl_aggregation`` then ``make_aggregator``). Every round's
model must agree within float32 rounding: fedagg's model against OpenFL's unrounded aggregate rounded to
float32, and against the float32 model OpenFL's collaborators receive next.

The adaptive methods also run in a real :class:`~fedagg.federation.federation.Federation` (state directory on
disk, optimizer moments in slot files) that is restarted after every round; its kept models must be OpenFL's.

How the optimizer's initial state is taken: OpenFL's optimizer starts from its ``params`` setting (the plan's
values), fedagg's from the round's global model (``openfl_aggregation`` keeps only the names of ``params``).
In OpenFL's own use ``params`` is the initial model (the model interface's tensors), so the oracle gets the
initial model's values as ``params`` (a subset of the tensors for one case: the others are averaged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.federation.aggregators.registry import make_aggregator, openfl_aggregation
from fedagg.federation.federation import Federation
from fedagg.federation.plan import AggregationSpec, default_tasks
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.model_file import read_model
from tests.oracles.openfl_oracle import OpenflContribution, OpenflRun, openfl_aggregate
from tests.oracles.oracles import openfl_python
from tests.support.aggregation import Model, aggregate, run_rounds
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, metric, submit

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(1800)]

COLLABORATORS = ("site-a", "site-b", "site-c", "site-d")
SHAPES = {
    "conv.weight": (4, 3, 2),
    "conv.bias": (4,),
    "fc.weight": (3, 5),
    "fisher_u": (3,),
    "fisher_w": (2, 2),
}
SIZES = ((10, 25, 7, 58), (3, 25, 40, 58), (12, 1, 7, 100))
ROUNDS = len(SIZES)
TEMPLATE = "openfl.interface.aggregation_functions.{}"


def make_data() -> tuple[Model, list[list[Model]]]:
    """The initial model and each round's trained tensors per collaborator (float32, as from a .pbuf)."""
    rng = np.random.default_rng(20240612)
    initial = {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in SHAPES.items()}
    rounds = []
    for r in range(ROUNDS):
        trained = []
        for i in range(len(COLLABORATORS)):
            spread = 20.0 if (r, i) == (1, 3) else 0.1 * (i + 1)
            trained.append(
                {
                    name: (initial[name] + 0.05 * (r + 1) + spread * rng.standard_normal(shape)).astype(
                        np.float32
                    )
                    for name, shape in SHAPES.items()
                }
            )
        rounds.append(trained)
    return initial, rounds


INITIAL, TRAINED = make_data()


@dataclasses.dataclass(frozen=True)
class Case:
    """One OpenFL aggregation function with its plan settings, as a plan would give them."""

    function: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optimized: tuple[str, ...] | None = None
    """The tensors given as the optimizer's ``params`` (None: OpenFL's default, every tensor)."""
    version: str = "1.7.1"

    @property
    def id(self) -> str:
        return f"{self.function}-{self.version}"

    @property
    def adaptive(self) -> bool:
        return self.function.endswith("AdaptiveAggregation")

    def params(self) -> dict[str, np.ndarray] | None:
        return None if self.optimized is None else {name: INITIAL[name] for name in self.optimized}

    def plan_settings(self) -> dict[str, Any]:
        """The plan's ``aggregation_type.settings``: adaptive ones carry ``params`` as YAML would (nested lists)."""
        settings = dict(self.settings)
        if self.adaptive:
            names = self.optimized if self.optimized is not None else tuple(SHAPES)
            settings["params"] = {name: INITIAL[name].tolist() for name in names}
        return settings

    def spec(self) -> AggregationSpec:
        kind, settings = openfl_aggregation(TEMPLATE.format(self.function), self.plan_settings())
        return AggregationSpec(kind, settings)


ADAM_SETTINGS = {
    "learning_rate": 0.03,
    "betas": [0.8, 0.99],
    "initial_accumulator_value": 0.01,
    "epsilon": 1e-5,
}
YOGI_SETTINGS = {
    "learning_rate": 0.02,
    "betas": [0.7, 0.95],
    "initial_accumulator_value": 0.05,
    "epsilon": 1e-4,
}
ADAGRAD_SETTINGS = {"learning_rate": 0.05, "initial_accumulator_value": 0.3, "epsilon": 1e-6}

CASES = [
    Case("WeightedAverage"),
    Case("Median"),
    Case("GeometricMedian"),
    Case("FedCurvWeightedAverage"),
    Case("AdagradAdaptiveAggregation", ADAGRAD_SETTINGS),
    Case("AdamAdaptiveAggregation", ADAM_SETTINGS, optimized=("conv.weight", "fc.weight", "fisher_w")),
    Case("YogiAdaptiveAggregation", YOGI_SETTINGS),
    # OpenFL 1.9, with the optimizers' defaults.
    Case("AdagradAdaptiveAggregation", version="1.9"),
    Case("AdamAdaptiveAggregation", version="1.9"),
    Case("YogiAdaptiveAggregation", optimized=("conv.bias", "fisher_u"), version="1.9"),
]
ADAPTIVE_171 = [case for case in CASES if case.adaptive and case.version == "1.7.1"]


def run_openfl(case: Case) -> OpenflRun:
    contributions = [
        [
            OpenflContribution(name, size, tensors)
            for name, size, tensors in zip(COLLABORATORS, SIZES[r], TRAINED[r], strict=True)
        ]
        for r in range(ROUNDS)
    ]
    return openfl_aggregate(
        case.function,
        INITIAL,
        contributions,
        settings=case.settings,
        params=case.params(),
        version=case.version,
    )


@pytest.fixture(scope="module")
def openfl_runs() -> dict[str, OpenflRun]:
    """Every case's OpenFL run, a few at a time (each is a process importing OpenFL)."""
    for version in sorted({case.version for case in CASES}):
        openfl_python(version)  # build (or find) each venv once, before any concurrent use
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(run_openfl, CASES))
    return {case.id: run for case, run in zip(CASES, runs, strict=True)}


def fedagg_models(case: Case) -> list[Model]:
    """fedagg's model after each round, the aggregator built from the plan's settings, chained in memory."""
    aggregator = make_aggregator(case.spec(), "tasks.train")
    return run_rounds(aggregator, INITIAL, [(TRAINED[r], SIZES[r]) for r in range(ROUNDS)])


def assert_float32_close(
    actual: np.ndarray, expected: np.ndarray, ulps: float, scale: np.ndarray | float = 0.0
) -> None:
    """``actual`` (float32) is within ``ulps`` float32 spacings of ``expected``, the spacing taken at
    ``max(|expected|, scale)``: ``scale`` is the magnitude a float32 computation cancelled from."""
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    target = np.asarray(expected, np.float64)
    magnitude = np.maximum(np.abs(target), scale)
    tolerance = ulps * np.spacing(magnitude.astype(np.float32)).astype(np.float64)
    error = np.abs(actual.astype(np.float64) - target)
    worst = int(np.argmax(error - tolerance))
    assert np.all(error <= tolerance), (
        f"{np.sum(error > tolerance)} of {error.size} values differ by more than {ulps} float32 spacing(s); "
        f"worst at {worst}: {actual.reshape(-1)[worst]!r} != {target.reshape(-1)[worst]!r}"
    )


def assert_matches_openfl(models: Sequence[Model], run: OpenflRun, case: Case) -> None:
    """Round by round, fedagg's model against OpenFL's unrounded aggregate and against the float32 model
    OpenFL's collaborators receive (its delta round trip rounds once more: one spacing of the larger of the two
    models).

    Where OpenFL computes in float64 (1.7.1's ``np.average``, the median, the geometric median) fedagg must
    give its result rounded once. Elsewhere OpenFL computes in float32 and fedagg in float64, so they agree to
    a few float32 spacings of what the computation cancelled from: the trained values for 1.9's weighted
    average (``sum(w * x) / sum(w)`` in float32); for an optimized tensor the base model and the learning
    rate (OpenFL's gradient is float32 and its base the unrounded previous aggregate, fedagg's the float32
    model, and an optimizer step is at most about the learning rate).
    """
    assert len(run.rounds) == len(models) == ROUNDS
    learning_rate = float(case.settings.get("learning_rate", 0.01))
    previous: Model = INITIAL
    for r, (ours, theirs) in enumerate(zip(models, run.rounds, strict=True)):
        assert set(ours) == set(SHAPES), f"round {r}"
        for name in SHAPES:
            trained = np.max(np.abs([t[name] for t in TRAINED[r]]), axis=0)
            if case.adaptive and (case.optimized is None or name in case.optimized):
                ulps, scale = 8, np.maximum(np.abs(previous[name]), learning_rate)
            elif case.version != "1.7.1" and case.function != "Median":
                ulps, scale = 8, trained
            else:
                ulps, scale = 1, np.zeros_like(trained)
            model_scale = np.maximum(np.maximum(np.abs(previous[name]), np.abs(theirs.model[name])), scale)
            try:
                assert_float32_close(ours[name], theirs.aggregated[name], ulps, scale)
                assert_float32_close(ours[name], theirs.model[name], ulps + 1, model_scale)
            except AssertionError as error:
                raise AssertionError(f"{case.id}, round {r}, tensor {name}: {error}") from None
        previous = theirs.model


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_round_equals_openfl(case: Case, openfl_runs: dict[str, OpenflRun]) -> None:
    run = openfl_runs[case.id]
    assert run.openfl_version.startswith(case.version)

    assert_matches_openfl(fedagg_models(case), run, case)


def test_the_oracle_ran_the_aggregation_functions_named(openfl_runs: dict[str, OpenflRun]) -> None:
    for case in CASES:
        run = openfl_runs[case.id]
        if case.function == "YogiAdaptiveAggregation":
            # OpenFL's own class cannot be built (``epsilo=``); fedagg's Yogi follows the corrected one.
            assert (run.function, run.yogi_fixed) == ("YogiAggregationFixed", True)
        else:
            assert (run.function, run.yogi_fixed) == (case.function, False)


def test_the_comparisons_are_not_trivial(openfl_runs: dict[str, OpenflRun]) -> None:
    """Guard the comparison itself: the robust methods differ from the average, and the optimizers really step
    (and differently from the average) in every round."""
    average = openfl_runs["WeightedAverage-1.7.1"].rounds
    for function in ("Median", "GeometricMedian"):
        for r, result in enumerate(openfl_runs[f"{function}-1.7.1"].rounds):
            assert float(np.max(np.abs(result.model["fc.weight"] - average[r].model["fc.weight"]))) > 1e-3
    for case in [case for case in CASES if case.adaptive]:
        previous = INITIAL
        for r, result in enumerate(openfl_runs[case.id].rounds):
            name = case.optimized[0] if case.optimized else "conv.weight"
            step = result.model[name] - previous[name]
            assert float(np.max(np.abs(step))) > 1e-3, (case.id, r)
            assert float(np.max(np.abs(result.model[name] - average[r].model[name]))) > 1e-3, (case.id, r)
            previous = result.model


def assert_same_models(actual: Sequence[Model], expected: Sequence[Model]) -> None:
    for r, (ours, theirs) in enumerate(zip(actual, expected, strict=True)):
        for name in SHAPES:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"round {r}, tensor {name}")


def run_round(federation: Federation, r: int) -> None:
    """Every collaborator runs the three default tasks; training sends full (lossless) tensors."""
    for collaborator, size, tensors in zip(COLLABORATORS, SIZES[r], TRAINED[r], strict=True):
        trained = [
            encode_tensor(name, values, round_number=r, tags=("trained",)) for name, values in tensors.items()
        ]
        outcomes = [
            submit(federation, collaborator, r, TASKS[0], 5, [metric("acc", 0.5, r, "validate_agg")]),
            submit(federation, collaborator, r, TASKS[1], size, [metric("loss", 0.5, r), *trained]),
            submit(federation, collaborator, r, TASKS[2], 5, [metric("acc", 0.5, r, "validate_local")]),
        ]
        assert all(outcome.accepted for outcome in outcomes), outcomes


@pytest.mark.parametrize("case", ADAPTIVE_171, ids=lambda case: case.id)
def test_a_restarted_federation_keeps_openfls_models(
    case: Case, openfl_runs: dict[str, OpenflRun], tmp_path: Path
) -> None:
    """Round 0 in one federation, then a restart before each further round: the optimizer's moments come back
    from the slot files on disk and its step counts from the checkpoint."""
    tasks = default_tasks()
    tasks["train"] = dataclasses.replace(tasks["train"], aggregation=case.spec())
    plan = make_plan(COLLABORATORS, ROUNDS, tasks=tasks, rounds_kept=ROUNDS + 1)
    federation = make_federation(tmp_path, plan, INITIAL)
    for r in range(ROUNDS):
        if r:
            federation = restart_federation(tmp_path, plan)
        assert federation.round_number == r
        run_round(federation, r)
    assert federation.finished
    slots = sorted(path.name for path in (tmp_path / "state").glob("aggregators/train/round-*/*.pbuf"))
    assert slots, "the optimizer's moments are kept in slot files"

    kept = []
    for r in range(1, ROUNDS + 1):
        model = read_model(tmp_path / "state" / "models" / f"round-{r:06d}.pbuf")
        assert model.round_number == r
        kept.append({name: np.array(values) for name, values in model.tensors.items()})
        model.release()

    assert_matches_openfl(kept, openfl_runs[case.id], case)
    assert_same_models(kept, fedagg_models(case))  # restarting changes nothing


def test_fedcurv_sums_the_fisher_terms_of_every_collaborator() -> None:
    """A closed form next to the oracle's: the ``_u``/``_w`` tensors are plain sums, whatever the sizes."""
    aggregator = make_aggregator(Case("FedCurvWeightedAverage").spec(), "tasks.train")

    result = aggregate(aggregator, TRAINED[0], SIZES[0], INITIAL)

    assert result is not None
    np.testing.assert_allclose(
        result["fisher_u"], np.sum([t["fisher_u"] for t in TRAINED[0]], axis=0), rtol=1e-6
    )
    expected = np.average([t["conv.bias"] for t in TRAINED[0]], weights=SIZES[0], axis=0)
    np.testing.assert_allclose(result["conv.bias"], expected, rtol=1e-6)
