"""Reading a configuration: the YAML file, an overlay, the environment, relative paths; then validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from fedagg.bounded_yaml import parse_yaml, read_yaml
from fedagg.config.checks import cross_setting_errors
from fedagg.config.schema import Config
from fedagg.settings import ConfigError, Written, build, gathered, plain

ENV_PREFIX = "FEDAGG__"
SECTIONS = ", ".join(field.name for field in fields(Config))


def parse_config(data: object, base_dir: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from parsed YAML plus environment overrides; resolve relative paths."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError("(top level)", data, f"a mapping of sections ({SECTIONS})")
    merged = _with_environment(data or {}, environ or {})
    config: Config = _resolve_paths(build(Config, merged), base_dir)
    gathered(cross_setting_errors(config))
    return config


def load_config(
    path: Path | None, environ: Mapping[str, str] | None = None, overlay: Mapping[str, Any] | None = None
) -> Config:
    """Read, override and validate a configuration file.

    ``overlay`` (an imported OpenFL workspace) supplies defaults that the file's own settings override.
    """
    data = {} if path is None else read_yaml(path, "the configuration", keep_text=True)
    if overlay:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError("(top level)", data, "a mapping of sections")
        data = _deep_merge(overlay, data or {})
    base_dir = path.parent if path is not None else Path.cwd()
    try:
        return parse_config(data, base_dir, os.environ if environ is None else environ)
    except ConfigError as error:
        raise (error if path is None else error.located(str(path))) from None


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_environment(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = _deep_copy(data)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not keys:
            continue
        target = merged
        for key in keys[:-1]:
            node = target.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(keys), raw, f"{key} to be a section (from environment {name})")
            target = node
        target[keys[-1]] = _from_environment(name, raw)
    return merged


def _from_environment(name: str, raw: str) -> object:
    """The YAML value of environment variable ``name``; a scalar remembers its text and the variable."""
    value = parse_yaml(raw, f"environment {name}", "a YAML value", keep_text=True) if raw else raw
    if isinstance(value, list | Mapping):
        return value
    return Written(plain(value), value.text if isinstance(value, Written) else str(value), name)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in data.items()}


def _resolve_paths(node: Any, base_dir: Path) -> Any:
    if not is_dataclass(node) or isinstance(node, type):
        return node
    changes: dict[str, Any] = {}
    for field in fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[field.name] = base_dir / value
        elif is_dataclass(value):
            changes[field.name] = _resolve_paths(value, base_dir)
    return replace(node, **changes)
