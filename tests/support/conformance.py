"""Conformance suites: one base class holds the behaviour every implementation shares, each implementation's
test class subclasses it, and a test checks that no implementation the service can build is left out."""

from __future__ import annotations

from typing import Any


def subclasses(base: type[Any]) -> list[type[Any]]:
    """Every subclass of ``base``, direct or not (a conformance base's test classes, or an interface's
    implementations)."""
    found: list[type[Any]] = []
    for subclass in base.__subclasses__():
        found += [subclass, *subclasses(subclass)]
    return found
