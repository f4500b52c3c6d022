"""At the root: the partials the replicas delivered for each round, checked against their claims.

A replica's partial is taken only if it holds exactly the contributions that replica claimed for the round (none
claimed elsewhere, none missing): so every acknowledged contribution is counted once, by the replica whose spool
holds it. The same partial delivered again (same round, replica, generation and contributions) changes nothing; a
partial of a newer generation (the replica restarted and folded its spool again), or one without the collaborators
the round closes without (:meth:`PartialCollection.exclude`: stragglers, as a single pod leaves out their partial
work), replaces the older.

Partials are kept in memory only: a restarted root has the replicas deliver them again (they keep a round's
partial until the root has moved past the round). A round can be divided once every replica holding claims has
delivered, or is lost (:meth:`~fedagg.tier.claims.ClaimBook.lost`): a lost replica's contributions are then
stragglers of the round.

Thread-safe: partials are taken on the root's event loop while the round end (an executor thread) excludes
stragglers and collects. ``_lock`` guards ``_partials`` and ``_excluded``; it is held for dictionary work only, never
across the claim book's calls (which take its own lock) or the merge of model-sized sums.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fedagg.tier.claims import ClaimBook, Contribution
from fedagg.tier.events import TierListener
from fedagg.tier.partials import RoundPartial, merge
from fedagg.tier.wire import PartialRefused

log = logging.getLogger(__name__)


class ClaimMismatch(PartialRefused):
    """A partial that does not hold exactly its replica's claims of the round."""


@dataclass(frozen=True)
class RoundCollection:
    """What the round can be divided from: the merged partial, and the contributions of lost replicas."""

    merged: RoundPartial
    stragglers: frozenset[Contribution]


@dataclass(frozen=True)
class ReplicaView:
    """One replica as ``fedagg status`` shows it."""

    replica: str
    claimed: int
    generation: int | None
    seconds_since_contact: float | None
    lost: bool


class PartialCollection:
    """The partials delivered for each round (module docstring)."""

    def __init__(
        self,
        book: ClaimBook,
        replicas: tuple[str, ...],
        lost_seconds: float,
        clock: Callable[[], float],
        listener: TierListener | None = None,
    ) -> None:
        self._book = book
        self._listener = listener or TierListener()
        self._reported_lost: set[tuple[int, str]] = set()
        self._replicas = replicas
        self._lost_seconds = lost_seconds
        self._clock = clock
        self._started = clock()
        self._partials: dict[int, dict[str, RoundPartial]] = {}
        self._excluded: dict[int, frozenset[str]] = {}
        self._lock = threading.Lock()

    def exclude(self, round_number: int, collaborators: frozenset[str]) -> None:
        """Leave ``collaborators``' contributions out of the round (it closes without them): a partial must not
        hold them, and a kept one that does is dropped (its replica delivers one without them)."""
        with self._lock:
            self._excluded[round_number] = collaborators
            kept = self._partials.get(round_number, {})
            for replica, partial in list(kept.items()):
                if any(collaborator in collaborators for collaborator, _ in partial.contributions):
                    del kept[replica]

    def _held(self, round_number: int, contributions: frozenset[Contribution]) -> frozenset[Contribution]:
        """Those of ``contributions`` the round counts (not the excluded collaborators')."""
        with self._lock:
            excluded = self._excluded.get(round_number, frozenset())
        return frozenset(c for c in contributions if c[0] not in excluded)

    def take(self, partial: RoundPartial) -> bool:
        """Keep ``partial``; False when this very partial was kept already. Raises :class:`ClaimMismatch`."""
        claimed = self._held(partial.round_number, self._book.claimed(partial.round_number, partial.replica))
        folded = partial.contributions
        unclaimed, missing = folded - claimed, claimed - folded
        if unclaimed:
            raise ClaimMismatch(
                f"round {partial.round_number}: {partial.replica} does not hold the claims of "
                f"{sorted(unclaimed)[:8]} (or the round closes without them); drop them from the partial"
            )
        if missing:
            raise ClaimMismatch(
                f"round {partial.round_number}: the partial lacks contributions {partial.replica} claimed: "
                f"{sorted(missing)[:8]}; deliver it again once they are folded"
            )
        with self._lock:
            excluded = self._excluded.get(partial.round_number, frozenset())
            if any(collaborator in excluded for collaborator, _ in folded):
                raise ClaimMismatch(
                    f"round {partial.round_number}: the round closes without {sorted(excluded)[:8]}; drop their "
                    "contributions from the partial"
                )
            kept = self._partials.setdefault(partial.round_number, {})
            earlier = kept.get(partial.replica)
            if (
                earlier is not None
                and earlier.generation == partial.generation
                and earlier.contributions == partial.contributions
            ):
                return False
            kept[partial.replica] = partial
        self._book.contact(partial.replica)
        return True

    def collected(self, round_number: int) -> RoundCollection | None:
        """The round's merged partial once every replica holding claims delivered or is lost; None before."""
        with self._lock:
            kept = dict(self._partials.get(round_number, {}))
        holders = {
            replica: held
            for replica, claimed in self._book.holders(round_number).items()
            if (held := self._held(round_number, claimed))
        }
        waiting = {replica for replica in holders if replica not in kept}
        lost = self._book.lost(holders, self._lost_seconds, self._started)
        if waiting - lost:
            return None
        for replica in sorted(
            waiting - {replica for number, replica in self._reported_lost if number == round_number}
        ):
            log.warning(
                "round %d: ingest replica %s is lost (silent for %gs); its %d claimed contributions are stragglers",
                round_number,
                replica,
                self._lost_seconds,
                len(holders[replica]),
            )
            self._listener.contributions_lost(replica, len(holders[replica]))
            self._reported_lost.add((round_number, replica))
        stragglers = frozenset(c for replica in waiting for c in holders[replica])
        return RoundCollection(merge(round_number, kept.values()), stragglers)

    def forget_before(self, round_number: int) -> None:
        """Drop the partials of rounds before ``round_number`` (committed)."""
        with self._lock:
            for number in [number for number in self._partials if number < round_number]:
                del self._partials[number]
            for number in [number for number in self._excluded if number < round_number]:
                del self._excluded[number]

    def replicas(self, round_number: int) -> list[ReplicaView]:
        """Every configured replica (and any other holding claims) with its state in the round."""
        holders = self._book.holders(round_number)
        lost = self._book.lost(holders, self._lost_seconds, self._started)
        with self._lock:
            kept = dict(self._partials.get(round_number, {}))
        views = []
        for replica in sorted({*self._replicas, *holders}):
            partial = kept.get(replica)
            contact = self._book.last_contact(replica)
            views.append(
                ReplicaView(
                    replica,
                    len(holders.get(replica, ())),
                    None if partial is None else partial.generation,
                    None if contact is None else self._clock() - contact,
                    replica in lost,
                )
            )
        return views
