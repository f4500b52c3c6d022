"""The root's claims and collected partials: first replica holds a contribution, durably; partials must match
their replica's claims; lost replicas' claims become stragglers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fedagg.ops.tier_metrics import TierMetrics
from fedagg.tier.claims import ClaimBook, ClaimOutcome
from fedagg.tier.collection import PartialCollection
from fedagg.tier.partials import RoundPartial
from fedagg.tier.wire import PartialRefused

VALUES = {"w": np.ones(3, np.float32)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def partial(replica: str, generation: int, *sites: str) -> RoundPartial:
    made = RoundPartial(0, replica, generation)
    for site in sites:
        made.fold("train", site, 2.0, VALUES)
    return made


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


def test_claims_survive_a_restart_and_a_torn_last_line(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path, Clock())
    book.claim(0, "site-0", "train", "ingest-0")
    book.claim(0, "site-1", "train", "ingest-1")
    book.close()
    with (tmp_path / "claims.journal").open("ab") as journal:
        journal.write(b'0000abcd {"round":0,"collab')
    restarted = ClaimBook(tmp_path, Clock())
    assert restarted.claim(0, "site-1", "train", "ingest-0").outcome == ClaimOutcome.TAKEN
    assert restarted.holders(0) == {"ingest-0": {("site-0", "train")}, "ingest-1": {("site-1", "train")}}


def test_a_partial_must_hold_exactly_its_replicas_claims(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path, Clock())
    collection = PartialCollection(book, ("ingest-0", "ingest-1"), 300, Clock())
    book.claim(0, "site-0", "train", "ingest-0")
    book.claim(0, "site-1", "train", "ingest-0")
    book.claim(0, "site-2", "train", "ingest-1")
    with pytest.raises(
        PartialRefused, match=r"lacks contributions ingest-0 claimed: \[\('site-1', 'train'\)\]"
    ):
        collection.take(partial("ingest-0", 1, "site-0"))
    with pytest.raises(PartialRefused, match=r"does not hold the claims of \[\('site-2', 'train'\)\]"):
        collection.take(partial("ingest-0", 1, "site-0", "site-1", "site-2"))
    assert collection.take(partial("ingest-0", 1, "site-0", "site-1"))
    assert collection.collected(0) is None
    assert not collection.take(partial("ingest-0", 1, "site-0", "site-1"))
    assert collection.take(partial("ingest-0", 2, "site-1", "site-0"))
    assert collection.take(partial("ingest-1", 1, "site-2"))
    collected = collection.collected(0)
    assert collected is not None
    assert collected.stragglers == frozenset()
    assert [c for c, _ in collected.merged.tasks["train"].contributors] == ["site-1", "site-0", "site-2"]
    np.testing.assert_array_equal(collected.merged.tasks["train"].tensors["w"].values, [6.0, 6.0, 6.0])


def test_a_replica_silent_past_the_timeout_loses_its_claims_to_the_stragglers(tmp_path: Path) -> None:
    clock = Clock()
    book = ClaimBook(tmp_path, clock)
    registry = CollectorRegistry()
    collection = PartialCollection(book, ("ingest-0", "ingest-1"), 300, clock, TierMetrics(registry))
    book.claim(0, "site-0", "train", "ingest-0")
    book.claim(0, "site-1", "train", "ingest-1")
    clock.now += 200
    assert collection.take(partial("ingest-1", 1, "site-1"))
    assert collection.collected(0) is None
    clock.now += 150
    collected = collection.collected(0)
    assert collected is not None
    assert collected.stragglers == {("site-0", "train")}
    again = collection.collected(0)
    assert again is not None
    assert again.stragglers == collected.stragglers
    lost = registry.get_sample_value("fedagg_tier_lost_contributions_total", {"replica": "ingest-0"})
    assert lost == 1
    assert collected.merged.contributions == {("site-1", "train")}
    views = {view.replica: view for view in collection.replicas(0)}
    assert views["ingest-0"].lost
    assert views["ingest-0"].generation is None
    assert not views["ingest-1"].lost
    assert views["ingest-1"].generation == 1


class SlowJournal(ClaimBook):
    """A claim book whose journal write waits until the test lets it go (a slow disk)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, Clock())
        self.writing = threading.Event()
        self.release = threading.Event()

    def _append(self, record: dict[str, Any]) -> None:
        self.writing.set()
        assert self.release.wait(30)
        super()._append(record)


def test_a_claim_being_written_is_pending_for_others_never_taken(tmp_path: Path) -> None:
    book = SlowJournal(tmp_path)
    with ThreadPoolExecutor(1) as executor:
        first = executor.submit(book.claim, 0, "site-0", "train", "ingest-0")
        assert book.writing.wait(30)
        pending = book.claim(0, "site-0", "train", "ingest-1")
        assert pending.outcome == ClaimOutcome.PENDING
        assert pending.holder == "ingest-0"
        assert book.holders(0) == {}
        book.release.set()
        assert first.result(30).outcome == ClaimOutcome.GRANTED
    assert book.claim(0, "site-0", "train", "ingest-1").outcome == ClaimOutcome.TAKEN


def test_claims_of_old_rounds_are_pruned_from_the_journal_and_stay_pruned_after_a_restart(
    tmp_path: Path,
) -> None:
    book = ClaimBook(tmp_path, Clock())
    for round_number in range(3):
        book.claim(round_number, "one", "train", "ingest-0")
        book.claim(round_number, "two", "train", "ingest-1", rejected="non_finite: w holds NaN")
    journal = tmp_path / "claims.journal"
    before = journal.stat().st_size

    assert book.prune_before(2) == 4
    book.claim(2, "three", "train", "ingest-1")

    assert journal.stat().st_size < before
    assert book.prune_before(2) == 0
    book.close()
    restarted = ClaimBook(tmp_path, Clock())
    assert restarted.holder(1, "one", "train") is None
    assert restarted.claimed(2, "ingest-0") == {("one", "train")}
    assert restarted.claimed(2, "ingest-1") == {("three", "train")}
    assert restarted.rejected(2) == {("two", "train"): "non_finite: w holds NaN"}
    restarted.close()
