"""The whole configuration: its sections, and the federation plan they describe.

A new section is a dataclass of its keys in a module of this package (its own, or its group's) and one field
of :class:`Config`; the configuration reference and the top-level error list it from there, and rules it
shares with other sections go to :mod:`fedagg.config.checks`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fedagg.config.federation import FederationSettings, TaskSettings
from fedagg.config.ha import HaSettings
from fedagg.config.limits import LimitsSettings
from fedagg.config.operations import HooksSettings, LoggingSettings, OpsSettings, StorageSettings
from fedagg.config.server import ServerSettings
from fedagg.config.topology import TopologySettings
from fedagg.federation.errors import PlanError
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.plan import (
    EVALUATION_GROUP,
    AggregationSpec,
    AssignerSpec,
    FederationPlan,
    StragglerPolicySpec,
    TaskGroup,
    TaskSpec,
    UploadLimits,
    default_tasks,
    select_task_group,
)
from fedagg.settings import ConfigError, setting


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    federation: FederationSettings = setting(help="")
    server: ServerSettings = setting(factory=ServerSettings, help="")
    limits: LimitsSettings = setting(factory=LimitsSettings, help="")
    ops: OpsSettings = setting(factory=OpsSettings, help="")
    hooks: HooksSettings = setting(factory=HooksSettings, help="")
    storage: StorageSettings = setting(factory=StorageSettings, help="")
    logging: LoggingSettings = setting(factory=LoggingSettings, help="")
    ha: HaSettings = setting(factory=HaSettings, help="")
    topology: TopologySettings = setting(factory=TopologySettings, help="")

    @property
    def best_model_path(self) -> Path:
        """Where the best model is published."""
        return self.storage.best_model or self.storage.state_dir / "best.pbuf"

    @property
    def last_model_path(self) -> Path:
        """Where the last model is published."""
        return self.storage.last_model or self.storage.state_dir / "last.pbuf"

    def plan(self) -> FederationPlan:
        """The federation plan; plan errors are reported with their configuration keys."""
        settings = self.federation
        tasks = {
            name: TaskSpec(name, task.function, task.kwargs, _aggregation(task))
            for name, task in settings.tasks.items()
        } or default_tasks()
        groups = tuple(
            TaskGroup(group.name, group.tasks, group.collaborators, group.percentage)
            for group in settings.assigner.task_groups
        ) or (TaskGroup("learning", tuple(tasks), settings.collaborators, 1.0),)
        stragglers = settings.stragglers
        try:
            assigner = AssignerSpec(settings.assigner.kind, groups, settings.assigner.seed)
            evaluation = settings.task_group == EVALUATION_GROUP
            if settings.task_group:
                assigner = select_task_group(assigner, settings.task_group, settings.collaborators)
            plan = FederationPlan(
                federation_uuid=settings.federation_uuid,
                aggregator_uuid=settings.aggregator_uuid or f"aggregator_{settings.federation_uuid}",
                collaborators=settings.collaborators,
                rounds_to_train=1 if evaluation else settings.rounds_to_train,
                tasks=tasks,
                assigner=assigner,
                stragglers=StragglerPolicySpec(
                    stragglers.policy,
                    stragglers.cutoff_seconds,
                    stragglers.minimum_reporting,
                    stragglers.percent_needed,
                ),
                experiment_name=settings.experiment_name,
                single_col_cert_common_name=settings.single_col_cert_common_name,
                sleep_seconds=settings.sleep_seconds,
                rounds_kept=settings.rounds_kept,
                limits=UploadLimits(
                    self.limits.upload_bytes,
                    self.limits.extra_tensor_bytes,
                    self.limits.metrics_per_upload,
                    self.limits.metric_names_per_task,
                ),
                aggregation_bytes=self.limits.aggregation_bytes,
                evaluation=evaluation,
            )
            TaskAggregators(plan)  # every task's aggregation method and settings are usable
        except PlanError as error:
            raise ConfigError(f"federation.{error.key}", error.value, error.expected) from None
        return plan


def _aggregation(task: TaskSettings) -> AggregationSpec:
    privacy = None if task.privacy is None else asdict(task.privacy)
    return AggregationSpec(task.aggregation, task.aggregation_settings, task.clipping_norm, privacy)
