"""``fedagg serve`` as a tier: a root and two ingest replicas behind HAProxy train unchanged collaborators (fedagg's
own, OpenFL 1.7.1 and 1.9) to the model a single pod trains (the closed form of tests/support/runners.py, which the
standalone and OpenFL-oracle tests check too), every contribution counted once, and both replicas used."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.harness import (
    Collaborators,
    FedaggCollaborators,
    OpenflCollaborators,
    finish,
    stop,
)
from tests.support.models import write_zero_model
from tests.support.pki import Pki, make_pki
from tests.tier.serving import Tier, running_tier

pytestmark = pytest.mark.slow

ROUNDS = 2
REPLICAS = ("ingest-0", "ingest-1")


@pytest.fixture
def tier_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", ("one", "two", *REPLICAS))


def claims_by_replica(tier: Tier) -> Counter[str]:
    """How many contributions each replica holds, from the root's claim journal."""
    journal = tier.setup.state / "tier" / "claims.journal"
    return Counter(json.loads(line.split(" ", 1)[1])["replica"] for line in journal.read_text().splitlines())


def train_through_the_tier(
    tmp_path: Path, pki: Pki, collaborators_of: type[Collaborators] | None, python: Path | None = None
) -> Tier:
    with running_tier(tmp_path, pki, ROUNDS, write_zero_model(tmp_path), REPLICAS) as tier:
        collaborators: Collaborators = (
            FedaggCollaborators(tier.setup, pki)
            if python is None
            else OpenflCollaborators(tier.setup, pki, python)
        )
        try:
            finish(tier.setup, tier.root, collaborators)
            for replica in tier.replicas.values():
                replica.wait_finished(30)
        except AssertionError as error:
            logs = "\n".join(f"{name} log:\n{replica.log()}" for name, replica in tier.replicas.items())
            raise AssertionError(f"{error}\n{logs}") from None
        finally:
            stop(tier.root, *tier.replicas.values(), collaborators)
    return tier


def test_fedagg_collaborators_train_through_a_root_and_two_ingest_replicas(
    tmp_path: Path, tier_pki: Pki
) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki, FedaggCollaborators)

    held = claims_by_replica(tier)
    assert sum(held.values()) == ROUNDS * 2 * 3, held  # every contribution claimed once
    assert set(held) == set(REPLICAS), f"the balancer spread the collaborators over both replicas: {held}"


def test_openfl_171_collaborators_train_through_the_tier(tmp_path: Path, tier_pki: Pki, openfl: Path) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki, OpenflCollaborators, openfl)

    assert sum(claims_by_replica(tier).values()) == ROUNDS * 2 * 3


def test_openfl_19_collaborators_train_through_the_tier(
    tmp_path: Path, tier_pki: Pki, openfl_19: Path
) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki, OpenflCollaborators, openfl_19)

    assert sum(claims_by_replica(tier).values()) == ROUNDS * 2 * 3
