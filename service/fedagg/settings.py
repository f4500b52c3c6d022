"""Typed settings from plain data: dataclasses in, precise errors out.

:func:`build` turns a YAML mapping into a frozen dataclass tree, checking every key against the field's type
annotation. Errors name the key path, the value and what was expected, e.g.
``server.port: got 'abc', expected an integer from 0 to 65535``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Written:
    """A YAML scalar as written: its ``value`` as YAML reads it, its ``text`` and where it came from.

    A setting typed ``str`` takes the text (``federation_uuid: 0123`` stays ``'0123'``, not octal 83; ``enabled:
    false`` stays ``'false'``); every other type takes the value. ``origin`` names the environment variable the
    scalar came from, for errors.
    """

    value: object
    text: str
    origin: str = ""

    def __repr__(self) -> str:
        return repr(self.value) if isinstance(self.value, str) else self.text

    def __str__(self) -> str:
        return self.text


class ConfigError(ValueError):
    """A setting that cannot be used: its key, its value and what was expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        origin = f" (from {value.origin})" if isinstance(value, Written) and value.origin else ""
        super().__init__(f"{key}: got {value!r}, expected {expected}{origin}")
        self.key = key
        self.value = value
        self.expected = expected

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        """Every error this one stands for (itself alone, unless it gathers several)."""
        return (self,)

    def located(self, source: str) -> ConfigError:
        """The same error with its key prefixed by the file ``source``."""
        return ConfigError(f"{source}: {self.key}", self.value, self.expected)


class ConfigErrors(ConfigError):
    """Several settings that cannot be used, reported together."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(problem for error in errors for problem in error.problems)
        first = self.errors[0]
        super().__init__(first.key, first.value, first.expected)
        self.args = ("; ".join(str(error) for error in self.errors),)

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        """Every error gathered."""
        return self.errors

    def located(self, source: str) -> ConfigError:
        """Every error, each prefixed by the file ``source``."""
        return ConfigErrors([error.located(source) for error in self.errors])


def gathered(errors: Sequence[ConfigError]) -> None:
    """Raise the errors in ``errors`` together (nothing when it is empty)."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    help: str = "",
    check: Any = None,
) -> Any:
    """A dataclass field with a help text and an optional ``check(value) -> str | None`` (the expectation).

    The check judges values only: null, for a setting that may be null, is its default and never checked.
    """
    return dataclasses.field(
        default=default, default_factory=factory, metadata={"help": help, "check": check}
    )


def build(cls: type[T], data: object, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`.

    Every error in the mapping is reported at once (a :class:`ConfigErrors` when there are several).
    """
    if data is None or (isinstance(data, Written) and data.value is None):
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or "(top level)", data, "a mapping of settings")
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    errors: list[ConfigError] = []
    for key in data:
        if str(key) not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(
                ConfigError(_join(path, str(key)), data[key], f"one of the known keys {sorted(fields)}{hint}")
            )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = _join(path, name)
        if name in data:
            try:
                values[name] = _checked(field, convert(hints[name], data[name], key), data[name], key)
            except ConfigError as error:
                errors.append(error)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(ConfigError(key, None, "a value (this setting is required)"))
    gathered(errors)
    return cls(**values)


def _checked(field: dataclasses.Field[Any], value: Any, written: object, key: str) -> Any:
    check = field.metadata.get("check")
    if check is not None and value is not None and (expected := check(value)):
        raise ConfigError(key, written, expected)
    return value


def convert(kind: Any, value: object, key: str) -> Any:
    """Convert one value to the annotated type; a :class:`Written` scalar gives a string type its text."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if (value.value if isinstance(value, Written) else value) is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        return convert(options[0], value, key)
    if isinstance(value, Written):
        return _convert_written(kind, value, key)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key)  # type: ignore[arg-type]
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ConfigError(key, value, "a list")
        item = args[0] if args else Any
        return tuple(convert(item, element, f"{key}[{index}]") for index, element in enumerate(value))
    if origin in (dict, Mapping) or kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping")
        item = args[1] if len(args) == 2 else Any
        return {str(name): convert(item, element, _join(key, str(name))) for name, element in value.items()}
    return _convert_scalar(kind, value, key)


def _convert_written(kind: Any, value: Written, key: str) -> Any:
    textual = kind is Path or (isinstance(kind, type) and issubclass(kind, str))
    if (
        textual and value.value is not None
    ):  # a string, a string enum, a path: the text (a directory named 2024)
        return _convert_scalar(kind, value.text, key)
    try:
        return convert(kind, value.value, key)
    except ConfigError as error:
        raise ConfigError(error.key, value, error.expected) from None


def plain(value: object) -> Any:
    """``value`` with every :class:`Written` scalar in it replaced by its value."""
    if isinstance(value, Written):
        return plain(value.value)
    if isinstance(value, list):
        return [plain(element) for element in value]
    if isinstance(value, Mapping):
        return {plain(name): plain(element) for name, element in value.items()}
    return value


def _convert_scalar(kind: Any, value: object, key: str) -> Any:
    if kind is Any:
        return plain(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, value, "a file or directory path")
        return Path(value)
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(key, value, f"one of {[member.value for member in kind]}") from None
    raise TypeError(f"unsupported setting type {kind!r} for {key}")  # pragma: no cover - a programming error


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


INT32_MAX = 2**31 - 1
"""The largest protobuf int32, and the largest integer gRPC takes as a channel argument."""
INT32_MAX_MILLISECONDS = INT32_MAX / 1000
"""The most seconds a gRPC channel argument in milliseconds can hold (about 24.8 days)."""
ONE_DAY = 86400
"""The longest sane duration for a timeout, a delay or a hold."""
ONE_TIB = 1 << 40
"""The largest sane amount of memory or disk for one bound."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Check: a number from ``minimum`` to ``maximum`` (above ``minimum`` if ``exclusive_minimum``), never NaN.

    Infinity passes only when ``maximum`` is infinite and ``infinite`` says what it means; ``zero``, when set,
    admits 0 besides the range and says what it means. ``what`` names the kind of number in the expectation.
    The bounds are data: the Helm chart's values schema mirrors them (a test holds the two together).
    """

    minimum: float
    maximum: float = math.inf
    what: str = "a number"
    exclusive_minimum: bool = False
    infinite: str = ""
    zero: str = ""

    def __call__(self, value: float) -> str | None:
        """None when ``value`` is in range, else the expectation."""
        if value == 0 and self.zero:
            return None
        if math.isinf(value) and not self.infinite:
            return self.expected
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        return None if above and value <= self.maximum else self.expected

    @property
    def expected(self) -> str:
        """The range in words, e.g. ``an integer from 0 to 65535``."""
        lower = (
            f"above {_number(self.minimum)}" if self.exclusive_minimum else f"from {_number(self.minimum)}"
        )
        if math.isinf(self.maximum):
            upper = f" (or .inf: {self.infinite})" if self.infinite else " (finite)"
        else:
            upper = (
                f" and at most {_number(self.maximum)}"
                if self.exclusive_minimum
                else f" to {_number(self.maximum)}"
            )
        zero = f"0 ({self.zero}) or " if self.zero else ""
        return f"{zero}{self.what} {lower}{upper}"


SECONDS = "a number of seconds"
BYTES = "a number of bytes"
DURATION = Range(0, ONE_DAY, SECONDS)
"""A delay, hold or budget that may be 0 (off or at once)."""
TIMEOUT = Range(0, ONE_DAY, SECONDS, exclusive_minimum=True)
"""A timeout: 0 would give nothing any time."""
MESSAGE_BYTES = Range(1, INT32_MAX, BYTES)
"""Bytes within one gRPC message (gRPC takes its sizes as int32)."""
STORED_BYTES = Range(1, ONE_TIB, BYTES)
"""Bytes of memory or disk: at least 1, at most 1 TiB."""
SHARE = Range(0, 1, "a share")
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, exclusive_minimum=True)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


port_number = Range(0, 65535, "an integer")
"""Check: a TCP port (0 = pick a free one)."""


def non_empty(value: str) -> str | None:
    """Check: a non-empty string."""
    return None if value.strip() else "a non-empty string"


def _show(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return str(list(value))
    return "null" if value is None else str(value)


def describe(cls: type[Any], path: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every setting, depth first: the configuration reference."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = _join(path, field.name)
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            rows.extend(describe(kind, key))  # type: ignore[arg-type]
            continue
        if field.default is not dataclasses.MISSING:
            default = _show(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = _show(field.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, field.metadata.get("help", "")))
    return rows
