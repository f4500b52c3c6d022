"""The root's claims: first replica holds a contribution, durably; lost replicas' claims become stragglers."""

from __future__ import annotations

from pathlib import Path

from fedagg.tier.claims import ClaimBook, ClaimOutcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_replica_holds_a_contribution_and_may_claim_it_again(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path, Clock())
    assert book.claim(3, "site-0", "train", "ingest-0").outcome == ClaimOutcome.GRANTED
    again = book.claim(3, "site-0", "train", "ingest-0")
    assert again.outcome == ClaimOutcome.GRANTED
    taken = book.claim(3, "site-0", "train", "ingest-1")
    assert taken.outcome == ClaimOutcome.TAKEN
    assert taken.holder == "ingest-0"
    assert book.claim(4, "site-0", "train", "ingest-1").outcome == ClaimOutcome.GRANTED
    assert book.claimed(3, "ingest-0") == {("site-0", "train")}
    assert book.claimed(3, "ingest-1") == frozenset()


def test_claims_and_deliveries_survive_a_restart_and_a_torn_last_line(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path, Clock())
    book.claim(0, "site-0", "train", "ingest-0")
    book.claim(0, "site-1", "train", "ingest-1")
    assert book.delivered(0, "ingest-0", 2)
    book.close()
    with (tmp_path / "claims.journal").open("ab") as journal:
        journal.write(b'0000abcd {"kind":"claim","round":0,"collab')
    restarted = ClaimBook(tmp_path, Clock())
    assert restarted.claim(0, "site-1", "train", "ingest-0").outcome == ClaimOutcome.TAKEN
    assert restarted.delivery(0, "ingest-0") == 2
    assert not restarted.delivered(0, "ingest-0", 2)
    assert restarted.delivered(0, "ingest-0", 3)
    assert restarted.holders(0) == {"ingest-0": {("site-0", "train")}, "ingest-1": {("site-1", "train")}}


def test_a_replica_silent_past_the_timeout_loses_its_undelivered_claims(tmp_path: Path) -> None:
    clock = Clock()
    book = ClaimBook(tmp_path, clock)
    started = clock.now
    book.claim(0, "site-0", "train", "ingest-0")
    book.claim(0, "site-1", "train", "ingest-1")
    book.claim(0, "site-2", "train", "ingest-2")
    book.delivered(0, "ingest-2", 1)
    clock.now += 200
    book.contact("ingest-1")
    assert book.lost(0, 300, started) == {}
    clock.now += 150
    assert book.lost(0, 300, started) == {"ingest-0": {("site-0", "train")}}
