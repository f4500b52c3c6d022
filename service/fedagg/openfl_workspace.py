"""Reading an OpenFL workspace: ``plan/plan.yaml`` and ``plan/cols.yaml``, as ``fx aggregator start`` does.

The result is a configuration overlay (plain data, the shape of fedagg's YAML configuration) with the
federation (collaborators, rounds, tasks, assigner, straggler policy, initial/best/last model paths), the
federation port and TLS mode, and the certificate files of OpenFL's ``cert/`` layout. The federation and
aggregator UUIDs are computed exactly as OpenFL 1.7.1's ``Plan.parse`` computes them (spec §3.1), so the
workspace's collaborators connect to fedagg unchanged.

The plan is read by :mod:`fedagg.openfl_plan`.

Plans of OpenFL 1.7.1 to 1.9 are read: 1.9's straggler policy classes and settings next to 1.7.1's, its 0%
``evaluation`` task group and ``selected_task_group``. Keys that have no meaning for an aggregator that keeps
its own durable state (1.9's persistent tensor database, native model saving, delta rebuilding, atomic
connections) are accepted and reported as ignored; features fedagg does not implement (secure aggregation, the
REST transport, Flower interop) are refused with a configuration error naming the plan key. Unless the
configuration says otherwise, the state lives in the workspace (``local_state/fedagg``, where OpenFL 1.9 keeps
its own state), so each workspace has its own.
"""

from __future__ import annotations

import copy
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedagg.bounded_yaml import read_yaml
from fedagg.federation.aggregators.registry import openfl_aggregation
from fedagg.openfl_plan import DEFAULTS, SETTINGS, parse_plan, plan_digest, workspace_root
from fedagg.settings import ConfigError

TEMPLATE, AUTO = "template", "auto"
ASSIGNERS = {
    "openfl.component.RandomGroupedAssigner": "random_grouped",
    "openfl.component.assigner.RandomGroupedAssigner": "random_grouped",
    "openfl.component.StaticGroupedAssigner": "static_grouped",
    "openfl.component.assigner.StaticGroupedAssigner": "static_grouped",
}
STRAGGLER_POLICIES = {
    "openfl.component.straggler_handling_functions.CutoffTimeBasedStragglerHandling": "cutoff_time",
    "openfl.component.straggler_handling_functions.PercentageBasedStragglerHandling": "percentage",
    **{
        f"{module}.{name}": kind
        for module in (
            "openfl.component",
            "openfl.component.aggregator",
            "openfl.component.aggregator.straggler_handling",
        )
        for name, kind in (
            ("WaitForAllPolicy", "cutoff_time"),
            ("CutoffTimePolicy", "cutoff_time"),
            ("PercentagePolicy", "percentage"),
        )
    },
}
NO_COMPRESSION = "openfl.pipelines.NoCompressionPipeline"
IGNORED_SETTINGS = (
    ("aggregator", "persist_checkpoint"),
    ("aggregator", "persistent_db_path"),
    ("aggregator", "save_native_model"),
    ("aggregator", "use_delta_updates"),
    ("network", "enable_atomic_connections"),
)
"""Plan settings (OpenFL 1.9) with no meaning for fedagg, which keeps its own durable state."""
WORKSPACE_STATE = "local_state/fedagg"


@dataclass(frozen=True)
class OpenflWorkspace:
    """What an OpenFL workspace says: a configuration overlay, and the plan keys fedagg ignores."""

    overlay: dict[str, Any]
    ignored: tuple[str, ...]


def load_openfl_workspace(
    plan_path: Path, cols_path: Path, defaults_root: Path | None = None
) -> OpenflWorkspace:
    """The configuration the workspace describes (see the module docstring)."""
    plan = parse_plan(plan_path, defaults_root)
    digest = plan_digest(copy.deepcopy(plan))
    identity = f"{plan_path.name}_{digest[:8]}"
    cols = read_yaml(cols_path, "the OpenFL collaborator list") or {}
    collaborators = cols.get("collaborators") if isinstance(cols, dict) else None
    if (
        not isinstance(collaborators, list)
        or not collaborators
        or not all(isinstance(name, str) for name in collaborators)
    ):
        raise ConfigError(
            f"{cols_path}: collaborators", collaborators, "a non-empty list of collaborator names (strings)"
        )
    root = workspace_root(plan_path)
    aggregator = _settings(plan, "aggregator", plan_path)
    network = _settings(plan, "network", plan_path)
    _require_no_compression(plan, plan_path)
    _refuse_unsupported(plan, plan_path)
    federation: dict[str, Any] = {
        "federation_uuid": identity,
        "aggregator_uuid": f"aggregator_{identity}",
        "collaborators": collaborators,
        "rounds_to_train": _required(aggregator, "rounds_to_train", f"{plan_path}: aggregator.settings"),
        "rounds_kept": max(2, _rounds_kept(aggregator, plan_path)),
        "tasks": _tasks(plan, plan_path),
        "assigner": _assigner(plan, plan_path),
        "stragglers": _stragglers(plan, plan_path),
    }
    paths = _model_paths(aggregator, plan_path)
    if "init_state_path" in paths:
        federation["initial_model"] = str(root / paths["init_state_path"])
    if aggregator.get("single_col_cert_common_name"):
        federation["single_col_cert_common_name"] = str(aggregator["single_col_cert_common_name"])
    selected = plan.get("assigner", {}).get(SETTINGS, {}).get("selected_task_group")
    if selected:
        federation["task_group"] = str(selected)
    storage = {
        key: str(root / paths[source])
        for key, source in (("best_model", "best_state_path"), ("last_model", "last_state_path"))
        if source in paths
    }
    storage["state_dir"] = str(root / WORKSPACE_STATE)
    overlay = {
        "federation": federation,
        "server": _server(network, digest, root, plan_path),
        "storage": storage,
    }
    ignored = tuple(
        f"{section}.settings.{key}"
        for section, key in IGNORED_SETTINGS
        if key in plan.get(section, {}).get(SETTINGS, {})
    )
    return OpenflWorkspace(overlay, ignored)


def _rounds_kept(aggregator: dict[str, Any], plan_path: Path) -> int:
    rounds = aggregator.get("db_store_rounds", 2)
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise ConfigError(f"{plan_path}: aggregator.settings.db_store_rounds", rounds, "an integer")
    return rounds


def _model_paths(aggregator: dict[str, Any], plan_path: Path) -> dict[str, str]:
    """The model files the plan names (``init_state_path``, ``best_state_path``, ``last_state_path``)."""
    paths = {}
    for key in ("init_state_path", "best_state_path", "last_state_path"):
        value = aggregator.get(key)
        if value and not isinstance(value, str):
            raise ConfigError(f"{plan_path}: aggregator.settings.{key}", value, "a file path")
        if value:
            paths[key] = value
    return paths


def _refuse_unsupported(plan: dict[str, Any], plan_path: Path) -> None:
    """Features of OpenFL 1.9 fedagg does not implement: refused, never silently ignored."""
    refusals = (
        (
            "aggregator.settings.secure_aggregation",
            plan.get("aggregator", {}).get(SETTINGS, {}).get("secure_aggregation", False) is not False,
            "false: fedagg does not implement OpenFL's secure aggregation",
        ),
        (
            "network.settings.transport_protocol",
            plan.get("network", {}).get(SETTINGS, {}).get("transport_protocol", "grpc") != "grpc",
            "grpc: fedagg serves OpenFL's gRPC transport, not the REST one",
        ),
        (
            "connector",
            "connector" in plan,
            "no connector section: fedagg does not support Flower interop",
        ),
        (
            "collaborator.settings.interop_mode",
            plan.get("collaborator", {}).get(SETTINGS, {}).get("interop_mode", False) is not False,
            "false: fedagg does not support Flower interop",
        ),
    )
    for key, refused, expected in refusals:
        if refused:
            value = plan.get(key) if key == "connector" else _lookup(plan, key)
            raise ConfigError(f"{plan_path}: {key}", value, expected)


def _lookup(plan: dict[str, Any], dotted: str) -> Any:
    node: Any = plan
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _server(network: dict[str, Any], digest: str, root: Path, plan_path: Path) -> dict[str, Any]:
    port = network.get("agg_port", AUTO)
    if port == AUTO:  # OpenFL derives the port from the plan hash
        port = int(digest[:8], 16) % (60999 - 49152) + 49152
    use_tls = network.get("use_tls", network.get("tls", True))
    client_auth = network.get("require_client_auth", not network.get("disable_client_auth", False))
    mode = "insecure" if not use_tls else "mtls" if client_auth else "tls"
    address = network.get("agg_addr", AUTO)
    host = socket.getfqdn() if address == AUTO else str(address)
    tls = {
        "mode": mode,
        "certificate_dir": str(root / network.get("cert_folder", "cert")),
        "certificate": f"server/agg_{host}.crt",
        "private_key": f"server/agg_{host}.key",
        "root_certificate": "cert_chain.crt",
    }
    if not isinstance(port, int):
        raise ConfigError(f"{plan_path}: network.settings.agg_port", port, "a port number or auto")
    return {"port": port, "tls": tls}


def _tasks(plan: dict[str, Any], plan_path: Path) -> dict[str, Any]:
    tasks = {name: spec for name, spec in plan.get("tasks", {}).items() if name not in (SETTINGS, DEFAULTS)}
    converted = {}
    for name, spec in tasks.items():
        key = f"{plan_path}: tasks.{name}"
        if not isinstance(spec, dict) or "function" not in spec:
            raise ConfigError(key, spec, "a task with a function")
        aggregation = spec.get("aggregation_type")
        kind, settings = "weighted_average", dict[str, Any]()
        if aggregation is not None:
            template = aggregation.get(TEMPLATE) if isinstance(aggregation, dict) else aggregation
            options = (aggregation.get(SETTINGS) if isinstance(aggregation, dict) else None) or {}
            try:
                kind, settings = openfl_aggregation(str(template), options)
            except ValueError as error:
                raise ConfigError(f"{key}.aggregation_type", template, str(error)) from None
        converted[name] = {
            "function": spec["function"],
            "kwargs": spec.get("kwargs") or {},
            "aggregation": kind,
            "aggregation_settings": settings,
        }
    return converted


def _assigner(plan: dict[str, Any], plan_path: Path) -> dict[str, Any]:
    section = plan.get("assigner", {})
    template = section.get(TEMPLATE, "openfl.component.RandomGroupedAssigner")
    if not isinstance(template, str) or template not in ASSIGNERS:
        raise ConfigError(f"{plan_path}: assigner.template", template, f"one of {sorted(ASSIGNERS)}")
    groups = section.get(SETTINGS, {}).get("task_groups", [])
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ConfigError(
            f"{plan_path}: assigner.settings.task_groups", groups, "a list of task groups (mappings)"
        )
    groups = [
        {key: group[key] for key in ("name", "tasks", "collaborators", "percentage") if key in group}
        for group in groups
    ]
    return {"kind": ASSIGNERS[template], "task_groups": groups}


def _stragglers(plan: dict[str, Any], plan_path: Path) -> dict[str, Any]:
    section = plan.get("straggler_handling_policy")
    if not section:
        return {}
    template = section.get(TEMPLATE)
    if not isinstance(template, str) or template not in STRAGGLER_POLICIES:
        raise ConfigError(
            f"{plan_path}: straggler_handling_policy.template",
            template,
            f"one of {sorted(STRAGGLER_POLICIES)}",
        )
    settings = section.get(SETTINGS, {})
    result: dict[str, Any] = {"policy": STRAGGLER_POLICIES[template]}
    for source, target in (
        ("straggler_cutoff_time", "cutoff_seconds"),
        ("minimum_reporting", "minimum_reporting"),
        ("percent_collaborators_needed", "percent_needed"),
    ):
        if source in settings:
            result[target] = settings[source]
    return result


def _require_no_compression(plan: dict[str, Any], plan_path: Path) -> None:
    template = plan.get("compression_pipeline", {}).get(TEMPLATE, NO_COMPRESSION)
    if template != NO_COMPRESSION:
        raise ConfigError(f"{plan_path}: compression_pipeline.template", template, NO_COMPRESSION)


def _settings(plan: dict[str, Any], section: str, plan_path: Path) -> dict[str, Any]:
    settings = plan.get(section, {}).get(SETTINGS)
    if not isinstance(settings, dict):
        raise ConfigError(f"{plan_path}: {section}.settings", settings, "a mapping")
    return settings


def _required(settings: dict[str, Any], key: str, where: str) -> Any:
    if key not in settings:
        raise ConfigError(f"{where}.{key}", None, "a value (OpenFL requires it)")
    return settings[key]
