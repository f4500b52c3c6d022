"""Contact tracking: when each collaborator last called and how many of its calls are in progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fedagg.federation.status import Contact, Contacts


class ContactBook:
    """Every collaborator's :class:`Contact`, for ``fedagg status`` and the stalled-collaborator rule. Thread-safe.

    ``_lock`` guards ``_contacts`` only; it is a leaf lock (nothing is called while it is held), so request handlers
    on the event loop take it at the start and end of each authenticated call.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._contacts: dict[str, Contact] = {}

    def started(self, collaborator: str) -> None:
        """An authenticated call of ``collaborator`` began."""
        with self._lock:
            contact = self._contacts.setdefault(collaborator, Contact())
            contact.last, contact.calls = self._clock(), contact.calls + 1

    def ended(self, collaborator: str) -> None:
        """That call ended."""
        with self._lock:
            contact = self._contacts.setdefault(collaborator, Contact())
            contact.last, contact.calls = self._clock(), max(0, contact.calls - 1)

    def snapshot(self) -> Contacts:
        """A copy of every contact, with the monotonic and wall clocks read now."""
        with self._lock:
            by_collaborator = {name: Contact(c.last, c.calls) for name, c in self._contacts.items()}
        return Contacts(by_collaborator, self._clock(), time.time())
