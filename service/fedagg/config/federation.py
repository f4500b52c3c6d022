"""The ``federation`` section: the experiment, its tasks, task groups and straggler policy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedagg.federation.plan import (
    CUTOFF_SECONDS,
    PERCENT_NEEDED,
    ROUNDS_KEPT,
    ROUNDS_TO_TRAIN,
    SLEEP_SECONDS,
    AssignerKind,
    StragglerPolicyKind,
)
from fedagg.settings import INT32_MAX, NON_NEGATIVE, POSITIVE, SHARE, Range, non_empty, setting


@dataclass(frozen=True)
class PrivacySettings:
    """Server-side differential privacy of a task's aggregate (as Flower's DifferentialPrivacyServerSide*)."""

    noise_multiplier: float = setting(
        help="z: the noise's standard deviation is z x the method's sensitivity share x clipping norm (README, "
        "Differential privacy)",
        check=NON_NEGATIVE,
    )
    clipping_norm: float = setting(
        help="C: each update's norm is clipped to it (the initial C when adaptive)", check=POSITIVE
    )
    adaptive: bool = setting(False, help="adapt C to a quantile of the update norms (Andrew et al.)")
    target_clipped_quantile: float = setting(
        0.5, help="adaptive: the share of updates that should be clipped", check=SHARE
    )
    clip_norm_lr: float = setting(0.2, help="adaptive: how fast C moves", check=NON_NEGATIVE)
    clipped_count_stddev: float | None = setting(
        None, help="adaptive: noise of the clipped count (null: contributors / 20)", check=NON_NEGATIVE
    )
    delta: float = setting(
        1e-5, help="the delta of the reported epsilon", check=Range(0, 1, exclusive_minimum=True)
    )
    flower_compatible: bool = setting(
        False, help="reproduce Flower's adaptive clipping exactly (its update direction; see the README)"
    )


@dataclass(frozen=True)
class TaskSettings:
    """One plan task."""

    function: str = setting(help="collaborator-side function (OpenFL task runner method)", check=non_empty)
    kwargs: dict[str, Any] = setting(
        factory=dict, help="arguments passed to the function (e.g. apply: local)"
    )
    aggregation: str = setting(
        "weighted_average",
        help="how model updates combine: weighted_average, median, trimmed_mean, krum, multi_krum, bulyan, "
        "geometric_median, fedcurv_weighted_average, adagrad, adam, yogi, or a plug-in's class path",
        check=non_empty,
    )
    aggregation_settings: dict[str, Any] = setting(
        factory=dict, help="the method's settings (e.g. malicious: 1 for krum; learning_rate for adam)"
    )
    clipping_norm: float | None = setting(
        None,
        help="clip each collaborator's update (relative to the global model) to this norm first",
        check=POSITIVE,
    )
    privacy: PrivacySettings | None = setting(None, help="server-side differential privacy (null: none)")


@dataclass(frozen=True)
class TaskGroupSettings:
    """A group of collaborators running the same tasks."""

    name: str = setting(help="group name", check=non_empty)
    tasks: tuple[str, ...] = setting(help="tasks the group runs, in execution order")
    collaborators: tuple[str, ...] = setting((), help="members (static_grouped assigner)")
    percentage: float = setting(0.0, help="share of collaborators (random_grouped assigner)", check=SHARE)


@dataclass(frozen=True)
class AssignerSettings:
    """Task assignment."""

    kind: AssignerKind = setting(AssignerKind.RANDOM_GROUPED, help="static_grouped or random_grouped")
    seed: int = setting(
        0,
        help="seed of random grouping (the same round always gets the same groups)",
        check=Range(0, 2**64 - 1, "an integer"),
    )
    task_groups: tuple[TaskGroupSettings, ...] = setting(
        (), help="groups; default: one group 'learning' (100%) running every task"
    )


@dataclass(frozen=True)
class StragglerSettings:
    """When a round may close before every collaborator is done."""

    policy: StragglerPolicyKind = setting(StragglerPolicyKind.CUTOFF_TIME, help="cutoff_time or percentage")
    cutoff_seconds: float = setting(
        math.inf, help="cutoff_time: seconds after a round starts", check=CUTOFF_SECONDS
    )
    minimum_reporting: int = setting(
        1, help="never close a round with fewer collaborators done", check=Range(1, INT32_MAX, "an integer")
    )
    percent_needed: float = setting(
        1.0, help="percentage: share of collaborators that must be done", check=PERCENT_NEEDED
    )


@dataclass(frozen=True)
class FederationSettings:
    """The experiment."""

    federation_uuid: str = setting(help="federation identity every request header carries", check=non_empty)
    collaborators: tuple[str, ...] = setting(help="authorized collaborator names (their certificate CNs)")
    rounds_to_train: int = setting(help="number of rounds", check=ROUNDS_TO_TRAIN)
    aggregator_uuid: str = setting("", help="aggregator identity; default 'aggregator_' + federation_uuid")
    experiment_name: str = setting("", help="name observers use; default the federation_uuid")
    initial_model: Path | None = setting(None, help="OpenFL .pbuf model to start from (not needed to resume)")
    single_col_cert_common_name: str = setting("", help="CN of a certificate shared by all collaborators")
    sleep_seconds: int = setting(
        10, help="how long GetTasks tells idle collaborators to sleep", check=SLEEP_SECONDS
    )
    rounds_kept: int = setting(
        2, help="global models kept for serving (>= 2 for delta requests)", check=ROUNDS_KEPT
    )
    tasks: dict[str, TaskSettings] = setting(factory=dict, help="plan tasks; default OpenFL's three")
    task_group: str = setting(
        "",
        help="run only this task group, for every collaborator (OpenFL 1.9's selected_task_group); "
        "'evaluation' validates the initial model in one round and publishes no model",
    )
    assigner: AssignerSettings = setting(factory=AssignerSettings, help="")
    stragglers: StragglerSettings = setting(factory=StragglerSettings, help="")
