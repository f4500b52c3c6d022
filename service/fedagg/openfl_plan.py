"""Reading an OpenFL plan (``plan/plan.yaml``) as OpenFL's ``Plan.parse`` does: sections, settings, defaults.

``defaults:`` references are resolved against the workspace root (``fx workspace create`` copies OpenFL's
``plan/defaults/`` there) or against ``defaults_root``; like OpenFL, a missing defaults file counts as empty.
The plan's digest is OpenFL 1.7.1's (spec §3.1): the federation UUID and the automatic port derive from it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml

from fedagg.bounded_yaml import read_yaml
from fedagg.settings import ConfigError

log = logging.getLogger(__name__)

SETTINGS, DEFAULTS = "settings", "defaults"


def workspace_root(plan_path: Path) -> Path:
    """The directory fx runs from: the parent of ``plan/`` (paths in the plan are relative to it)."""
    return plan_path.parent.parent if plan_path.parent.name == "plan" else plan_path.parent


def parse_plan(plan_path: Path, defaults_root: Path | None = None) -> dict[str, Any]:
    """The plan with ``settings`` in every section and ``defaults`` merged, as OpenFL's ``Plan.parse``."""
    plan = read_yaml(plan_path, "the OpenFL plan")
    if not isinstance(plan, dict):
        raise ConfigError(str(plan_path), plan, "an OpenFL plan: a mapping of sections")
    for section, content in plan.items():
        if not isinstance(section, str):
            raise ConfigError(f"{plan_path}: {section!r}", section, "a section name (a string)")
        _section(content, f"{plan_path}: {section}")
    root = defaults_root or workspace_root(plan_path)
    for section in sorted(plan):
        reference = plan[section].pop(DEFAULTS, None)
        if reference is None:
            continue
        if not isinstance(reference, str):
            raise ConfigError(f"{plan_path}: {section}.{DEFAULTS}", reference, "a file path")
        path = Path(reference) if Path(reference).is_absolute() else root / reference
        if not path.is_file():
            log.warning(
                "OpenFL defaults file %s for section %s is missing: treated as empty, as OpenFL does",
                path,
                section,
            )
        defaults = _section(
            (read_yaml(path, "an OpenFL defaults file") if path.is_file() else None) or {}, str(path)
        )
        defaults[SETTINGS].update(plan[section][SETTINGS])
        plan[section][SETTINGS] = defaults[SETTINGS]
        defaults.update(plan[section])
        plan[section] = defaults
    return plan


def _section(content: Any, where: str) -> dict[str, Any]:
    """A plan section (or a defaults file): a mapping whose ``settings`` (null: none) is a mapping."""
    if not isinstance(content, dict):
        raise ConfigError(where, content, "a mapping")
    if content.get(SETTINGS) is None:
        content[SETTINGS] = {}
    if not isinstance(content[SETTINGS], dict):
        raise ConfigError(f"{where}.{SETTINGS}", content[SETTINGS], "a mapping")
    return content


def plan_digest(plan: dict[str, Any]) -> str:
    """The SHA-384 of the plan as OpenFL dumps it (hex)."""
    return hashlib.sha384(yaml.dump(plan).encode("utf-8")).hexdigest()
