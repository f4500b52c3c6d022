"""Errors the federation core raises; the server maps each class to one gRPC status."""

from __future__ import annotations


class FederationError(Exception):
    """Base class: a request the federation refuses, with a message a person can act on."""


class InvalidRequest(FederationError):
    """The request itself is malformed or names something that cannot exist (INVALID_ARGUMENT)."""


class NotFound(FederationError):
    """The request names something the federation does not hold (NOT_FOUND)."""


class FailedPrecondition(FederationError):
    """The request is well-formed but does not fit the federation's current state (FAILED_PRECONDITION)."""


class PermissionDenied(FederationError):
    """The caller may not have what it asks for, e.g. another collaborator's results (PERMISSION_DENIED)."""


class StorageUnavailable(FederationError):
    """The state directory refused a write or a read (disk full, I/O error): retry later (UNAVAILABLE)."""


class PlanError(ValueError):
    """A federation plan that cannot run: names the setting, the value and what was expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"{key}: got {value!r}, expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected
