"""The root's claims: which ingest replica holds each contribution of a round, durably, exactly once.

An ingest replica spools an upload (fsynced), then claims (collaborator, round, task) at the root, then
acknowledges it. The first replica to claim holds the contribution; the same replica claiming again (its reply was
lost, or it restarted and re-claims its spool) is granted again; any other replica is told the contribution is
taken, and answers its copy OK and drops it, as a single pod drops a duplicate. So an acknowledged contribution is
always in the spool of the replica that holds its claim, and in no other partial.

Claims are appended to a journal (one sealed JSON line each, fsynced before the answer), so a restarted root
knows them. A torn last line (a crash while writing it) is dropped: its claim was never answered. Deliveries of
partials are known in memory only (:mod:`fedagg.tier.collection`): a restarted root collects them again.

A replica the root has not heard from for ``lost_replica_seconds`` is lost: :meth:`ClaimBook.lost` lists its
claimed contributions of the round that no partial delivered, which the round then treats as stragglers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedagg.federation.files import atomic_write_bytes, durable_directory

log = logging.getLogger(__name__)

Contribution = tuple[str, str]
"""(collaborator, task) of a round."""


class ClaimOutcome(StrEnum):
    """The root's answer to a claim."""

    GRANTED = "granted"
    TAKEN = "taken"
    PENDING = "pending"
    """Another claim of it is being made durable right now: ask again."""


@dataclass(frozen=True)
class ClaimDecision:
    """The outcome and the replica that holds the contribution."""

    outcome: ClaimOutcome
    holder: str


def _sealed(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def _unsealed(line: bytes) -> dict[str, Any] | None:
    try:
        checksum, body = line.decode().rstrip("\n").split(" ", 1)
        if int(checksum, 16) != zlib.crc32(body.encode()):
            return None
        record: dict[str, Any] = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return record


class ClaimBook:
    """The claims of every round (module docstring). Constructing it reads the journal: off the event loop.

    ``_lock`` guards the maps (holders, rejections, claims being written, last contacts, open watches); it is held
    briefly, never across I/O, so the event loop may take it. ``_journal_lock`` serialises the journal's appends and is held across
    their write and fsync: only on executor threads, and never while ``_lock`` is held (lock order: the journal
    lock, then ``_lock``). A claim is answered only once durable; while it is being written, any other claim of
    the same contribution is answered :attr:`ClaimOutcome.PENDING` (retry), never TAKEN on a claim that may fail.
    """

    def __init__(self, directory: Path, clock: Callable[[], float]) -> None:
        self._path = durable_directory(directory) / "claims.journal"
        self._clock = clock
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._holders: dict[tuple[int, str, str], str] = {}
        self._rejected: dict[tuple[int, str, str], str] = {}
        self._writing: dict[tuple[int, str, str], str] = {}
        self._last_contact: dict[str, float] = {}
        self._watches: dict[str, int] = {}
        self._replay()
        self._journal = open(self._path, "ab")  # noqa: SIM115 (closed by close())

    def _replay(self) -> None:
        if not self._path.exists():
            return
        lines = self._path.read_bytes().splitlines(keepends=True)
        for number, line in enumerate(lines, 1):
            record = _unsealed(line)
            if record is None:
                log.warning(
                    "%s: line %d is torn or corrupt; dropped (it was never answered)", self._path, number
                )
                continue
            key = (record["round"], record["collaborator"], record["task"])
            self._holders[key] = record["replica"]
            if record.get("rejected"):
                self._rejected[key] = record["rejected"]

    def close(self) -> None:
        """Close the journal."""
        with self._journal_lock:
            self._journal.close()

    def _append(self, record: dict[str, Any]) -> None:
        self._journal.write(_sealed(record))
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def contact(self, replica: str) -> None:
        """``replica`` called the root (any call): it is not lost."""
        with self._lock:
            self._last_contact[replica] = self._clock()

    def claim(
        self, round_number: int, collaborator: str, task: str, replica: str, rejected: str = ""
    ) -> ClaimDecision:
        """Let ``replica`` hold (collaborator, round, task) unless another does; ``rejected`` ("<reason>: <why>")
        records an upload the replica rejected: held, counted, never in a partial. Blocks on the disk."""
        key = (round_number, collaborator, task)
        with self._lock:
            self._last_contact[replica] = self._clock()
            holder = self._holders.get(key)
            if holder is not None:
                return ClaimDecision(
                    ClaimOutcome.GRANTED if holder == replica else ClaimOutcome.TAKEN, holder
                )
            writer = self._writing.get(key)
            if writer is not None:
                return ClaimDecision(ClaimOutcome.PENDING, writer)
            self._writing[key] = replica
        try:
            with self._journal_lock:
                record = {
                    "round": round_number,
                    "collaborator": collaborator,
                    "task": task,
                    "replica": replica,
                }
                self._append({**record, "rejected": rejected} if rejected else record)
        except BaseException:
            with self._lock:
                del self._writing[key]
            raise
        with self._lock:
            del self._writing[key]
            self._holders[key] = replica
            if rejected:
                self._rejected[key] = rejected
        return ClaimDecision(ClaimOutcome.GRANTED, replica)

    def prune_before(self, round_number: int) -> int:
        """Forget the claims of rounds before ``round_number`` (committed long ago) and rewrite the journal without
        them, atomically (a crash leaves the old journal, a superset). Returns how many were dropped. Blocks on
        the disk."""
        with self._journal_lock:
            with self._lock:
                old = [key for key in self._holders if key[0] < round_number]
                for key in old:
                    del self._holders[key]
                    self._rejected.pop(key, None)
                records = [self._record(key, holder) for key, holder in self._holders.items()]
            if not old:
                return 0
            self._journal.close()
            atomic_write_bytes(self._path, b"".join(_sealed(record) for record in records))
            self._journal = open(self._path, "ab")  # noqa: SIM115 (closed by close())
        return len(old)

    def _record(self, key: tuple[int, str, str], holder: str) -> dict[str, Any]:
        """The journal record of a claim (``_lock`` held)."""
        number, collaborator, task = key
        record: dict[str, Any] = {
            "round": number,
            "collaborator": collaborator,
            "task": task,
            "replica": holder,
        }
        if key in self._rejected:
            record["rejected"] = self._rejected[key]
        return record

    def holder(self, round_number: int, collaborator: str, task: str) -> str | None:
        """The replica holding (collaborator, round, task), if it is claimed."""
        with self._lock:
            return self._holders.get((round_number, collaborator, task))

    def claimed(self, round_number: int, replica: str) -> frozenset[Contribution]:
        """The contributions of the round that ``replica`` holds and folds (not the rejected ones)."""
        with self._lock:
            return frozenset(
                (collaborator, task)
                for (number, collaborator, task), holder in self._holders.items()
                if number == round_number
                and holder == replica
                and (number, collaborator, task) not in self._rejected
            )

    def rejected(self, round_number: int) -> dict[Contribution, str]:
        """The round's uploads the replicas rejected, with why."""
        with self._lock:
            return {(c, t): why for (number, c, t), why in self._rejected.items() if number == round_number}

    def holders(self, round_number: int) -> dict[str, frozenset[Contribution]]:
        """Every replica holding contributions of the round to fold (not the rejected ones), with them."""
        held: dict[str, set[Contribution]] = {}
        with self._lock:
            for key, holder in self._holders.items():
                number, collaborator, task = key
                if number == round_number and key not in self._rejected:
                    held.setdefault(holder, set()).add((collaborator, task))
        return {replica: frozenset(held[replica]) for replica in sorted(held)}

    def last_contact(self, replica: str) -> float | None:
        """When ``replica`` last called (root clock), if it has since the root started."""
        with self._lock:
            return self._last_contact.get(replica)

    def watching(self, replica: str, open_: bool) -> None:
        """``replica`` opened (``open_``) or closed its round-notice stream: while one is open it is heard from."""
        with self._lock:
            self._watches[replica] = self._watches.get(replica, 0) + (1 if open_ else -1)
            self._last_contact[replica] = self._clock()

    def lost(self, replicas: Iterable[str], lost_seconds: float, started: float) -> frozenset[str]:
        """Those of ``replicas`` not heard from for ``lost_seconds`` (since their last call, or since
        ``started``, the root's start, if they have not called since), and with no round-notice stream open."""
        now = self._clock()
        with self._lock:
            return frozenset(
                replica
                for replica in replicas
                if not self._watches.get(replica)
                and now - self._last_contact.get(replica, started) >= lost_seconds
            )
