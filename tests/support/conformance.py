"""Conformance suites: one base class holds the behaviour every implementation shares, each implementation's
test class subclasses it, and a test checks that no implementation the service can build is left out."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def subclasses(base: type[Any]) -> list[type[Any]]:
    """Every subclass of ``base``, direct or not (a conformance base's test classes, or an interface's
    implementations)."""
    found: list[type[Any]] = []
    for subclass in base.__subclasses__():
        found += [subclass, *subclasses(subclass)]
    return found


def must_sentences(interface: type[Any]) -> list[str]:
    """Every sentence stating a MUST in the docstrings of ``interface``'s own methods, each prefixed with
    ``Interface.method:`` (how a conformance test names the contract it checks)."""
    found = []
    for name, member in vars(interface).items():
        function = member.fget if isinstance(member, property) else member
        if not callable(function) or not function.__doc__:
            continue
        for sentence in re.split(r"(?<=\.)\s+(?=[A-Z`(])", " ".join(function.__doc__.split())):
            if "MUST" in sentence:
                found.append(f"{interface.__name__}.{name}: {sentence}")
    return found


def untested_musts(interfaces: Iterable[type[Any]], suites: Iterable[object]) -> list[str]:
    """The MUST sentences of ``interfaces`` that no test of ``suites`` (classes or modules) quotes in its
    docstring (whitespace aside) together with the ``Interface.method`` it belongs to."""
    quoted = [
        " ".join(test.__doc__.split())
        for suite in suites
        for name, test in vars(suite).items()
        if name.startswith("test_") and callable(test) and test.__doc__
    ]
    return [
        must
        for interface in interfaces
        for must in must_sentences(interface)
        if not any(all(part in doc for part in must.split(": ", 1)) for doc in quoted)
    ]
