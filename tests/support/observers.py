"""Server observers that record what the server reports, for tests to assert on."""

from __future__ import annotations

from fedagg.server.observer import Limit, ServerObserver


class Breaches(ServerObserver):
    """Every limit breach the server counted, in order."""

    def __init__(self) -> None:
        self.breaches: list[Limit] = []

    def limit_breached(self, limit: Limit) -> None:
        self.breaches.append(limit)
