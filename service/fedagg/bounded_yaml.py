"""YAML that users write (fedagg's configuration, OpenFL plans and collaborator lists), read within bounds.

A few hundred bytes of YAML can describe a document of a billion values (aliases of aliases: "billion
laughs") or nest deeper than Python's recursion limit; everything that walks the result would then run for
minutes or fail with a RecursionError. :func:`read_yaml` and :func:`parse_yaml` refuse, before anything walks
the document:

- files larger than :data:`MAX_FILE_BYTES`;
- collections nested deeper than :data:`MAX_DEPTH`, counted once aliases are expanded;
- more than :data:`MAX_ALIASES` aliases, and documents of more than :data:`MAX_VALUES` values once aliases
  are expanded;
- a key repeated in one mapping (YAML says keys are unique; PyYAML would keep the last one silently).

Each refusal is a :class:`~fedagg.settings.ConfigError` naming the file, what was found (with its line) and
the bound. libyaml's parser is used when PyYAML has it (the bounds are checked on its events).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from fedagg.settings import ConfigError, Written

try:
    from yaml._yaml import CParser as Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as PythonParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class Parser(Reader, Scanner, PythonParser):  # type: ignore[no-redef]
        """The pure-Python reader, scanner and parser as one class, like libyaml's."""

        def __init__(self, stream: str | bytes) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            PythonParser.__init__(self)


MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class Mark(Protocol):
    """Where in the document (PyYAML's and libyaml's marks alike), counted from 0."""

    line: int
    column: int


class YamlBound(yaml.YAMLError):
    """A document beyond a bound: what was found, where, and the bound."""

    def __init__(self, found: str, bound: str, mark: Mark | None) -> None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        super().__init__(f"{found}{where}")
        self.found = f"{found}{where}"
        self.bound = bound


class BoundedLoader(Composer, Parser, SafeConstructor, Resolver):
    """``yaml.SafeLoader`` with bounds (see the module docstring). Not thread-safe: one per document."""

    def __init__(self, stream: str | bytes | BinaryIO, keep_text: bool = False) -> None:
        Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._aliases = 0
        self._keep_text = keep_text

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """The value of ``node``; with ``keep_text``, a scalar that is not a string is :class:`Written`."""
        value = super().construct_object(node, deep)
        if self._keep_text and isinstance(node, ScalarNode) and not isinstance(value, str):
            return Written(value, node.value)
        return value

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """A node of the document, counting aliases and nesting on the way."""
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlBound(
                    f"alias number {self._aliases}", f"at most {MAX_ALIASES} aliases", event.start_mark
                )
        nests = isinstance(event, SequenceStartEvent | MappingStartEvent)
        self._depth += nests
        try:
            if self._depth > MAX_DEPTH and event is not None:
                raise _too_deep(event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests

    def compose_document(self) -> Node | None:
        """The document's node graph, refused if aliases expand it beyond the bounds."""
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, 0, {})
        return node

    def compose_mapping_node(
        self, anchor: Any
    ) -> MappingNode:  # the stubs say dict, PyYAML passes str | None
        """A mapping as written; a key written twice in it is refused (merge keys ``<<`` may repeat keys)."""
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if (first := seen.setdefault(key, key_node)) is not key_node:
                raise YamlBound(
                    f"the key {key_node.value!r} a second time (first on line {first.start_mark.line + 1})",
                    "each key once in a mapping",
                    key_node.start_mark,
                )
        return node


def _too_deep(mark: Mark | None) -> YamlBound:
    return YamlBound(
        f"collections nested deeper than {MAX_DEPTH}", f"at most {MAX_DEPTH} levels of nesting", mark
    )


def _expanded_size(node: Node, depth: int, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, levels of nesting) of ``node`` with aliases expanded; ``sizes`` remembers shared nodes."""
    if isinstance(node, ScalarNode):
        return 1, 0
    if depth > MAX_DEPTH:  # also where a recursive alias ends up
        raise _too_deep(node.start_mark)
    if (known := sizes.get(id(node))) is None:
        children = (
            node.value if isinstance(node, SequenceNode) else [part for pair in node.value for part in pair]
        )
        values, levels = 1, 1
        for child in children:
            child_values, child_levels = _expanded_size(child, depth + 1, sizes)
            values, levels = values + child_values, max(levels, child_levels + 1)
            if values > MAX_VALUES:
                raise YamlBound(
                    f"more than {MAX_VALUES} values once aliases are expanded",
                    f"at most {MAX_VALUES} values",
                    node.start_mark,
                )
        known = sizes[id(node)] = (values, levels)
    if depth + known[1] > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    return known


class _Named(io.BytesIO):
    """Bytes with a name: the parser's errors name ``name`` (not ``<byte string>``)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def parse_yaml(text: str | bytes, source: str, what: str, keep_text: bool = False) -> Any:
    """The document in ``text`` (from ``source``, e.g. a file name), within the bounds.

    With ``keep_text``, scalars that YAML reads as something else than a string (numbers, booleans, null,
    dates) come as :class:`~fedagg.settings.Written`, which keeps their text as written.
    """
    data = text.encode() if isinstance(text, str) else text
    loader = BoundedLoader(_Named(data, source), keep_text)
    try:
        return loader.get_single_data()
    except YamlBound as error:
        raise ConfigError(
            source, error.found, f"{what} in YAML within fedagg's bounds: {error.bound}"
        ) from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer too long, a date out of range
        raise ConfigError(source, None, f"{what} in valid YAML ({' '.join(str(error).split())})") from None
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str, keep_text: bool = False) -> Any:
    """The YAML document in file ``path`` (``what`` it should be, for errors), within the bounds."""
    try:
        with path.open("rb") as file:
            text = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(str(path), None, f"{what} in a readable file ({error.strerror})") from None
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            str(path),
            f"more than {MAX_FILE_BYTES} bytes",
            f"{what} of at most {MAX_FILE_BYTES} bytes (1 MiB)",
        )
    return parse_yaml(text, str(path), what, keep_text)
