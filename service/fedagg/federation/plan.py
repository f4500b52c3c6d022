"""The federation plan: who collaborates, which tasks run each round, and how rounds end."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedagg.federation.aggregators.privacy import signal_to_noise
from fedagg.federation.errors import PlanError
from fedagg.federation.names import collaborator_name_problem, name_problem
from fedagg.settings import INT32_MAX, ONE_DAY, Range

ROUNDS_TO_TRAIN = Range(1, INT32_MAX, "an integer")
"""Round numbers travel in protobuf int32 fields."""
SLEEP_SECONDS = Range(1, ONE_DAY, "an integer number of seconds")
"""GetTasks' sleep_time is a protobuf int32; a collaborator asked to sleep longer than a day looks lost."""
ROUNDS_KEPT = Range(2, INT32_MAX, "an integer")
"""Deltas need the previous round's model."""
CUTOFF_SECONDS = Range(0, math.inf, "a number of seconds", exclusive_minimum=True, infinite="no cutoff")
PERCENT_NEEDED = Range(0, 1, "a share", exclusive_minimum=True)


@dataclass(frozen=True)
class AggregationSpec:
    """How a task's results are combined: a built-in method's name (``weighted_average``, ``median``, ``krum``...)
    or the class path of an :class:`~fedagg.federation.aggregators.Aggregator`, with its settings, optionally behind
    update clipping and server-side differential privacy."""

    kind: str = "weighted_average"
    settings: Mapping[str, Any] = field(default_factory=dict)
    clipping_norm: float | None = None
    privacy: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        extras = [f"clipping {self.clipping_norm}"] if self.clipping_norm is not None else []
        extras += ["differential privacy"] if self.privacy is not None else []
        return ", ".join([self.kind, *extras])


class AssignerKind(StrEnum):
    """OpenFL's grouped assigners."""

    STATIC_GROUPED = "static_grouped"
    RANDOM_GROUPED = "random_grouped"


class StragglerPolicyKind(StrEnum):
    """OpenFL's straggler handling policies."""

    CUTOFF_TIME = "cutoff_time"
    PERCENTAGE = "percentage"


@dataclass(frozen=True)
class TaskSpec:
    """A plan task: the collaborator-side function it runs and how its results are aggregated."""

    name: str
    function: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)

    @property
    def task_type(self) -> str:
        """``"train"`` or ``"validate"`` as OpenFL's TrainTask/ValidateTask say it, ``""`` when unknown."""
        if "train" in self.function:
            return "train"
        if "valid" in self.function:
            return "validate"
        return ""

    @property
    def apply_local(self) -> bool:
        """Whether a validation task runs on the locally trained model (OpenFL's ``apply: local``)."""
        return self.kwargs.get("apply") == "local"


@dataclass(frozen=True)
class TaskGroup:
    """A group of collaborators that run the same tasks: fixed members (static) or a share (random)."""

    name: str
    tasks: tuple[str, ...]
    collaborators: tuple[str, ...] = ()
    percentage: float = 0.0


@dataclass(frozen=True)
class AssignerSpec:
    """Which grouped assigner hands out tasks, with its groups; ``seed`` makes random grouping reproducible."""

    kind: AssignerKind
    groups: tuple[TaskGroup, ...]
    seed: int = 0


@dataclass(frozen=True)
class StragglerPolicySpec:
    """When a round may end before every collaborator is done."""

    kind: StragglerPolicyKind = StragglerPolicyKind.CUTOFF_TIME
    cutoff_seconds: float = math.inf
    minimum_reporting: int = 1
    percent_needed: float = 1.0


@dataclass(frozen=True)
class UploadLimits:
    """How much an authenticated collaborator's upload may carry; None derives a byte limit from the initial model.

    ``extra_tensor_bytes`` bounds the data of tensors that are not in the model (optimizer state that OpenFL's
    runners send as ``trained``) in one upload, and how much such tensors may add to the model
    (:attr:`ResolvedLimits.model_bytes`); ``upload_bytes`` bounds a whole upload. ``metrics_per_upload`` bounds the
    metrics of one upload (more is rejected as content, decided when the metric beyond the limit is decoded);
    ``metric_names_per_task`` bounds the distinct metric names (the metric series) a task may ever report: values
    of names beyond it are left out of the metric log and the aggregated metrics, and counted.
    """

    upload_bytes: int | None = None
    extra_tensor_bytes: int | None = None
    metrics_per_upload: int = 1024
    metric_names_per_task: int = 256

    def resolve(self, initial_model_bytes: int) -> ResolvedLimits:
        """The limits of an experiment whose initial model holds ``initial_model_bytes`` bytes of float32 data.

        The initial model, not the current one: a limit derived from the current model would let each round's
        extra tensors raise the next round's allowance.
        """
        extra = 2 * initial_model_bytes if self.extra_tensor_bytes is None else self.extra_tensor_bytes
        upload = (
            initial_model_bytes + extra + UPLOAD_OVERHEAD_BYTES
            if self.upload_bytes is None
            else self.upload_bytes
        )
        return ResolvedLimits(upload, extra, initial_model_bytes + extra, self.metrics_per_upload)


UPLOAD_OVERHEAD_BYTES = 16 << 20
"""Room for metrics, names, tags and framing in the default upload limit."""


@dataclass(frozen=True)
class ResolvedLimits:
    """Upload limits in bytes, and the model's size cap, for an experiment."""

    upload_bytes: int
    extra_tensor_bytes: int
    model_bytes: int
    """The model size cap: the initial model's bytes plus ``extra_tensor_bytes``. Tensors that would take the next
    model past it are left out of it (:mod:`fedagg.federation.model_building`)."""
    metrics_per_upload: int


@dataclass(frozen=True)
class FederationPlan:
    """Everything the federation core needs to run an experiment. Validated on construction."""

    federation_uuid: str
    aggregator_uuid: str
    collaborators: tuple[str, ...]
    rounds_to_train: int
    tasks: Mapping[str, TaskSpec]
    assigner: AssignerSpec
    stragglers: StragglerPolicySpec = field(default_factory=StragglerPolicySpec)
    experiment_name: str = ""
    single_col_cert_common_name: str = ""
    sleep_seconds: int = 10
    rounds_kept: int = 2
    limits: UploadLimits = field(default_factory=UploadLimits)
    aggregation_bytes: int = 64 << 20
    """Memory for the blocks of contributions a round end's aggregation holds at once."""
    evaluation: bool = False
    """An evaluation run (OpenFL's ``evaluation`` task group): the model is validated, never trained further
    or published, and the initial model's round is not resumed."""

    def __post_init__(self) -> None:
        _check_plan(self)

    @property
    def name(self) -> str:
        """The experiment's name as the observer RPCs use it (the federation UUID unless configured)."""
        return self.experiment_name or self.federation_uuid


def default_tasks() -> dict[str, TaskSpec]:
    """OpenFL's default three tasks (``workspace/plan/defaults/tasks_*.yaml``)."""
    return {
        "aggregated_model_validation": TaskSpec(
            "aggregated_model_validation", "validate_task", {"apply": "global", "metrics": ["acc"]}
        ),
        "train": TaskSpec("train", "train_task", {"metrics": ["loss"], "epochs": 1}),
        "locally_tuned_model_validation": TaskSpec(
            "locally_tuned_model_validation", "validate_task", {"apply": "local", "metrics": ["acc"]}
        ),
    }


def single_group_assigner(tasks: Mapping[str, TaskSpec], seed: int = 0) -> AssignerSpec:
    """OpenFL's default assigner: one random group "learning" of every collaborator running every task."""
    return AssignerSpec(
        AssignerKind.RANDOM_GROUPED, (TaskGroup("learning", tuple(tasks), percentage=1.0),), seed=seed
    )


EVALUATION_GROUP = "evaluation"


def select_task_group(spec: AssignerSpec, name: str, collaborators: tuple[str, ...]) -> AssignerSpec:
    """The assigner of OpenFL 1.9's ``selected_task_group``: only group ``name``, given to every collaborator."""
    chosen = [group for group in spec.groups if group.name == name]
    if len(chosen) != 1:
        raise PlanError("task_group", name, f"the name of one task group {[g.name for g in spec.groups]}")
    group = chosen[0]
    return AssignerSpec(
        spec.kind, (TaskGroup(group.name, group.tasks, collaborators, percentage=1.0),), spec.seed
    )


def _check_plan(plan: FederationPlan) -> None:
    for key in ("federation_uuid", "aggregator_uuid"):
        if problem := name_problem(getattr(plan, key)):
            raise PlanError(key, getattr(plan, key), problem)
    if not plan.collaborators:
        raise PlanError("collaborators", list(plan.collaborators), "at least one collaborator name")
    if len(set(plan.collaborators)) != len(plan.collaborators):
        raise PlanError("collaborators", list(plan.collaborators), "unique names")
    for index, name in enumerate(plan.collaborators):
        if problem := collaborator_name_problem(name, plan.aggregator_uuid):
            raise PlanError(f"collaborators[{index}]", name, problem)
    _check_ranges(
        plan,
        "",
        {"rounds_to_train": ROUNDS_TO_TRAIN, "sleep_seconds": SLEEP_SECONDS, "rounds_kept": ROUNDS_KEPT},
    )
    for key, task in plan.tasks.items():
        if key != task.name or not task.function:
            raise PlanError(f"tasks.{key}", task.function, "a task with a function name")
    _check_trained_tensor_owners(plan.tasks)
    _check_privacy_signal(plan)
    _check_assigner(plan)
    _check_stragglers(plan.stragglers, len(plan.collaborators))
    for key in ("upload_bytes", "extra_tensor_bytes"):
        value = getattr(plan.limits, key)
        if value is not None and value < 0:
            raise PlanError(f"limits.{key}", value, "a number of bytes (0 or more), or null for the default")
    for key in ("metrics_per_upload", "metric_names_per_task"):
        if getattr(plan.limits, key) < 1:
            raise PlanError(f"limits.{key}", getattr(plan.limits, key), "a count of 1 or more")


def _check_trained_tensor_owners(tasks: Mapping[str, TaskSpec]) -> None:
    """Two training tasks both upload the model's tensors as ``trained`` results, under the same names: a tensor
    belongs to the first task that carries it, so the second task's aggregate would be discarded. Refused."""
    training = [name for name, task in tasks.items() if task.task_type == "train"]
    if len(training) > 1:
        first, second = training[:2]
        raise PlanError(
            f"tasks.{second}",
            tasks[second].function,
            f"one training task: tasks {first!r} and {second!r} both upload trained tensors of the model's "
            f"names, and only {first!r}'s would be aggregated (the first task in plan order owns a tensor name)",
        )


def _check_privacy_signal(plan: FederationPlan) -> None:
    """Differential privacy whose noise swamps what the collaborators can contribute is refused (and a weak
    signal-to-noise ratio is warned about): :func:`~fedagg.federation.aggregators.privacy.signal_to_noise`."""
    for name, task in plan.tasks.items():
        privacy = task.aggregation.privacy
        if privacy is None:
            continue
        try:
            signal_to_noise(privacy, len(plan.collaborators))
        except ValueError as error:
            raise PlanError(
                f"tasks.{name}.privacy", dict(privacy), f"settings under which it trains: {error}"
            ) from None


def _check_assigner(plan: FederationPlan) -> None:
    spec = plan.assigner
    if not spec.groups:
        raise PlanError("assigner.task_groups", [], "at least one task group")
    for index, group in enumerate(spec.groups):
        key = f"assigner.task_groups[{index}]"
        if not group.tasks:
            raise PlanError(f"{key}.tasks", [], "at least one task")
        for task in group.tasks:
            if task not in plan.tasks:
                raise PlanError(f"{key}.tasks", task, f"one of the plan's tasks {sorted(plan.tasks)}")
    if spec.kind == AssignerKind.STATIC_GROUPED:
        members = [name for group in spec.groups for name in group.collaborators]
        if sorted(members) != sorted(plan.collaborators):
            raise PlanError(
                "assigner.task_groups[].collaborators",
                members,
                f"each of the collaborators {list(plan.collaborators)} in exactly one group",
            )
    else:
        shares = [group.percentage for group in spec.groups]
        if any(share < 0 for share in shares) or not math.isclose(sum(shares), 1.0):
            raise PlanError(
                "assigner.task_groups[].percentage",
                shares,
                "shares of 0 or more that sum to 1.0 (a 0% group, like OpenFL 1.9's 'evaluation', runs only "
                "when selected)",
            )


def _check_stragglers(spec: StragglerPolicySpec, collaborators: int) -> None:
    if not 1 <= spec.minimum_reporting <= collaborators:
        raise PlanError(
            "stragglers.minimum_reporting",
            spec.minimum_reporting,
            f"between 1 and the number of collaborators ({collaborators})",
        )
    _check_ranges(spec, "stragglers.", {"cutoff_seconds": CUTOFF_SECONDS, "percent_needed": PERCENT_NEEDED})


def _check_ranges(spec: object, prefix: str, ranges: Mapping[str, Range]) -> None:
    for key, bounds in ranges.items():
        value = getattr(spec, key)
        if expected := bounds(value):
            raise PlanError(f"{prefix}{key}", value, expected)
