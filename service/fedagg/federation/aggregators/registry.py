"""From a plan's aggregation settings to an aggregator: built-in methods by name, plug-ins by class path."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedagg.federation.aggregators.adaptive import (
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    YogiAdaptiveAggregation,
)
from fedagg.federation.aggregators.base import Aggregator, BoundedAggregator
from fedagg.federation.aggregators.clipping import clipped_updates
from fedagg.federation.aggregators.distance import Bulyan, GeometricMedian, Krum
from fedagg.federation.aggregators.elementwise import (
    FedCurvWeightedAverage,
    Median,
    TrimmedMean,
    WeightedAverage,
)
from fedagg.federation.aggregators.privacy import GaussianMechanism
from fedagg.federation.errors import PlanError
from fedagg.federation.plan import AggregationSpec


def _multi_krum(malicious: int = 0, keep: int = 1) -> Krum:
    return Krum(malicious, keep)


def _krum(malicious: int = 0) -> Krum:
    return Krum(malicious, 0)


BUILT_IN: dict[str, Callable[..., Aggregator]] = {
    "weighted_average": WeightedAverage,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": _krum,
    "multi_krum": _multi_krum,
    "bulyan": Bulyan,
    "geometric_median": GeometricMedian,
    "fedcurv_weighted_average": FedCurvWeightedAverage,
    "adagrad": AdagradAdaptiveAggregation,
    "adam": AdamAdaptiveAggregation,
    "yogi": YogiAdaptiveAggregation,
}


def make_aggregator(spec: AggregationSpec, key: str) -> Aggregator:
    """The aggregator ``spec`` describes; errors are :class:`PlanError` naming ``key`` (the plan's task key).

    Under ``privacy`` the method (behind its clipping) must be a :class:`BoundedAggregator`: noise is sized from
    the share it declares, and a method that declares none is refused with its reason.
    """
    factory = _factory(spec.kind, f"{key}.aggregation")
    try:
        aggregator = factory(**dict(spec.settings))
        if spec.clipping_norm is not None:
            aggregator = clipped_updates(aggregator, spec.clipping_norm)
    except (TypeError, ValueError) as error:
        raise _settings_error(spec, key, factory, error) from None
    if spec.privacy is None:
        return aggregator
    if not isinstance(aggregator, BoundedAggregator):
        raise PlanError(
            f"{key}.privacy",
            dict(spec.privacy),
            f"no privacy with aggregation {spec.kind}: {aggregator.privacy_refusal}, so no noise sized from "
            "the clipping norm bounds what one collaborator reveals (use weighted_average, "
            "fedcurv_weighted_average, median or trimmed_mean)",
        )
    try:
        return GaussianMechanism(aggregator, **dict(spec.privacy))
    except (TypeError, ValueError) as error:
        raise PlanError(f"{key}.privacy", dict(spec.privacy), f"privacy settings: {error}") from None


def _settings_error(
    spec: AggregationSpec, key: str, factory: Callable[..., Aggregator], error: Exception
) -> PlanError:
    accepted = ", ".join(inspect.signature(factory).parameters) or "none"
    return PlanError(
        f"{key}.aggregation_settings", dict(spec.settings), f"settings of {spec.kind} ({accepted}): {error}"
    )


def _factory(kind: str, key: str) -> Callable[..., Aggregator]:
    if kind in BUILT_IN:
        return BUILT_IN[kind]
    module_name, _, class_name = kind.rpartition(".")
    if not module_name:
        raise PlanError(key, kind, f"one of {sorted(BUILT_IN)} or the class path of an Aggregator subclass")
    try:
        found: Any = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise PlanError(key, kind, f"an importable class path ({error})") from None
    if not (inspect.isclass(found) and issubclass(found, Aggregator)):
        raise PlanError(key, kind, "a subclass of fedagg.federation.aggregators.Aggregator")
    return found


def openfl_aggregation(template: str, settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The kind and settings of an OpenFL plan's ``aggregation_type`` (1.7.1 to 1.9 class paths)."""
    name = template.rpartition(".")[2]
    kinds = {
        "WeightedAverage": "weighted_average",
        "Median": "median",
        "GeometricMedian": "geometric_median",
        "FedCurvWeightedAverage": "fedcurv_weighted_average",
        "AdagradAdaptiveAggregation": "adagrad",
        "AdamAdaptiveAggregation": "adam",
        "YogiAdaptiveAggregation": "yogi",
    }
    if not template.startswith("openfl.interface.aggregation_functions.") or name not in kinds:
        raise ValueError(f"one of {sorted(kinds)} under openfl.interface.aggregation_functions")
    converted = {key: value for key, value in settings.items() if key not in ("agg_func", "model_interface")}
    if "params" in converted and isinstance(converted["params"], Mapping):
        converted["params"] = sorted(
            converted["params"]
        )  # the tensors the optimizer covers; the values are the
        # initial model, which fedagg already has
    if "betas" in converted:
        converted["betas"] = list(converted["betas"])
    return kinds[name], converted
