"""Walking fedagg's settings dataclasses: every setting with its dotted key, as the configuration names it."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any


def leaf_settings(cls: type[Any], path: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted key, field, type without null) of every setting below ``cls``, depth first.

    Sections nest (``server.tls.mode``), lists of sections are ``key[]`` (``federation.assigner.task_groups[]``)
    and named sections ``key.<name>`` (``federation.tasks.<name>.privacy``).
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{path}{field.name}"
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(option for option in typing.get_args(kind) if option is not type(None))
        inner, suffix = kind, ""
        if typing.get_origin(kind) is tuple:
            inner, suffix = typing.get_args(kind)[0], "[]"
        elif typing.get_origin(kind) is dict:
            inner, suffix = typing.get_args(kind)[1], ".<name>"
        if dataclasses.is_dataclass(inner):
            yield from leaf_settings(inner, f"{key}{suffix}.")  # type: ignore[arg-type]
        else:
            yield key, field, kind


def numeric_settings(cls: type[Any]) -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """(dotted key, field) of every int or float setting below ``cls``."""
    for key, field, kind in leaf_settings(cls):
        if kind in (int, float):
            yield key, field
