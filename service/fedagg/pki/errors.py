"""What the PKI refuses, and why."""

from __future__ import annotations


class PkiError(ValueError):
    """Something the PKI refuses (a name, a CSR, a CA directory, a file in the way); the message says what."""


class InvalidName(PkiError):
    """A collaborator, observer, host or secret name that is refused: invalid, given twice or already taken."""

    def __init__(self, kind: str, value: str, reason: str, valid: bool = False) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        if valid:  # a well-formed name refused for another reason (a duplicate, a name already issued)
            super().__init__(f"{kind} {value!r}: {reason}")
        else:
            super().__init__(f"{value!r} is not a valid {kind} name: {reason}")


class CaError(PkiError):
    """The CA directory is missing, incomplete or unreadable, or its certificate and key do not fit."""


class OutputExists(PkiError):
    """A file the command would write is already there (a key or certificate is never overwritten)."""
