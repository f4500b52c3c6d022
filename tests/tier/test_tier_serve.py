"""``fedagg serve`` as a tier: a root and two ingest replicas behind HAProxy train unchanged collaborators (fedagg's
own, OpenFL 1.7.1 and 1.9) to the model a single pod trains (the closed form of tests/support/runners.py, which the
standalone and OpenFL-oracle tests check too), every contribution counted once, and both replicas used."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedagg.protocol.model_file import read_model
from tests.faults.harness import (
    SERVING,
    Aggregator,
    Collaborators,
    FedaggCollaborators,
    OpenflCollaborators,
    finish,
    make_setup,
    poll,
    stop,
)
from tests.integration.cli import fedagg
from tests.support.models import write_zero_model
from tests.support.pki import Pki, make_pki
from tests.support.runners import expected_models
from tests.tier.serving import Tier, running_tier

pytestmark = pytest.mark.slow

ROUNDS = 2
REPLICAS = ("ingest-0", "ingest-1")


@pytest.fixture
def tier_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", ("one", "two", *REPLICAS))


COLLECTED = re.compile(r"round (\d+): partial of (\S+) \(generation \d+\) collected: (\d+) contribution")


def contributions_by_replica(root_log: str) -> Counter[str]:
    """How many contributions each replica delivered to the root over the run (the last partial of each round)."""
    last: dict[tuple[int, str], int] = {}
    for match in COLLECTED.finditer(root_log):
        last[(int(match[1]), match[2])] = int(match[3])
    held: Counter[str] = Counter()
    for (_, replica), count in last.items():
        held[replica] += count
    return held


def finish_tier(tier: Tier, root: Aggregator, collaborators: Collaborators) -> None:
    """The federation ends as one pod's does (:func:`~tests.faults.harness.finish`) and every replica exits 0 once
    the root has gone; a failure shows every process's log."""
    try:
        finish(tier.setup, root, collaborators)
        finish_tier_processes(tier, root)
    except AssertionError as error:
        logs = "\n".join(f"{name} log:\n{process.log()}" for name, process in tier.replicas.items())
        raise AssertionError(f"{error}\nfirst root log:\n{tier.root.log()}\n{logs}") from None


def finish_tier_processes(tier: Tier, root: Aggregator | None = None) -> None:
    """The root (``tier.root`` unless said) exits 0 after the last quit job, then every replica."""
    (root or tier.root).wait_finished(30)
    for replica in tier.replicas.values():
        replica.wait_finished(30)


def train_through_the_tier(tmp_path: Path, pki: Pki, python: Path | None = None) -> Tier:
    """Train fedagg's collaborators (or OpenFL's of ``python``'s venv) through a root and two replicas."""
    with running_tier(tmp_path, pki, ROUNDS, write_zero_model(tmp_path), REPLICAS) as tier:
        collaborators: Collaborators = (
            FedaggCollaborators(tier.setup, pki)
            if python is None
            else OpenflCollaborators(tier.setup, pki, python)
        )
        try:
            finish_tier(tier, tier.root, collaborators)
        finally:
            stop(tier.root, *tier.replicas.values(), collaborators)
    return tier


def test_fedagg_collaborators_train_through_a_root_and_two_ingest_replicas(
    tmp_path: Path, tier_pki: Pki
) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki)

    held = contributions_by_replica(tier.root.log())
    assert sum(held.values()) == ROUNDS * 2 * 3, held  # every contribution delivered once
    assert all(held[replica] > 0 for replica in REPLICAS), f"the balancer used both replicas: {held}"


def test_openfl_171_collaborators_train_through_the_tier(tmp_path: Path, tier_pki: Pki, openfl: Path) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki, openfl)

    assert sum(contributions_by_replica(tier.root.log()).values()) == ROUNDS * 2 * 3


def test_openfl_19_collaborators_train_through_the_tier(
    tmp_path: Path, tier_pki: Pki, openfl_19: Path
) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki, openfl_19)

    assert sum(contributions_by_replica(tier.root.log()).values()) == ROUNDS * 2 * 3


def test_a_root_killed_while_it_divides_the_partials_restarts_and_collects_them_again(
    tmp_path: Path, tier_pki: Pki
) -> None:
    model = write_zero_model(tmp_path)
    with running_tier(
        tmp_path, tier_pki, ROUNDS, model, REPLICAS, root_failpoints="round_end.model_written=kill"
    ) as tier:
        collaborators = FedaggCollaborators(tier.setup, tier_pki)
        restarted = None
        try:
            tier.root.wait_killed()
            restarted = Aggregator(tier.setup.config, name="root-restarted")
            finish_tier(tier, restarted, collaborators)
        finally:
            stop(restarted, *tier.replicas.values(), collaborators)

    held = contributions_by_replica(tier.root.log() + restarted.log())
    assert sum(held.values()) == ROUNDS * 2 * 3, held  # the restarted root counted no contribution twice
    for replica in REPLICAS:  # the partials of round 0 died with the first root: delivered again
        assert f"round 0: partial of {replica} (generation 1) collected" in tier.root.log()
        assert f"round 0: partial of {replica} (generation 1) collected" in restarted.log()


def test_status_through_the_tier_shows_the_roots_replicas(tmp_path: Path, tier_pki: Pki) -> None:
    with running_tier(tmp_path, tier_pki, ROUNDS, write_zero_model(tmp_path), REPLICAS) as tier:
        poll(
            lambda: all(replica.readiness() == SERVING for replica in tier.replicas.values()),
            30,
            "the replicas' readiness (following the root, round 0's model in place)",
        )
        client = [
            "--ca",
            str(tier_pki.ca),
            "--cert",
            str(tier_pki.root / "one.crt"),
            "--key",
            str(tier_pki.root / "one.key"),
        ]
        ops = f"localhost:{tier.root.ops_port}"
        result = fedagg(
            "status", "--address", tier.setup.address, "--name", "one", *client, "--ops", ops, "-o", "json"
        )
        text = fedagg("status", "--address", tier.setup.address, "--name", "one", *client, "--ops", ops)
        replica_ops = f"localhost:{tier.replicas[REPLICAS[0]].ops_port}"
        elsewhere = fedagg(
            "status",
            "--address",
            tier.setup.address,
            "--name",
            "one",
            *client,
            "--ops",
            replica_ops,
            "-o",
            "json",
        )
        stop(tier.root, *tier.replicas.values())

    document = json.loads(result.stdout)
    assert document["round"] == 0
    assert [state["replica"] for state in document["tier"]["replicas"]] == list(REPLICAS)
    for state in document["tier"]["replicas"]:
        assert (state["claimed"], state["delivered"], state["lost"]) == (0, False, False)
        assert state["seconds_since_contact"] is not None, "a replica following the root has called it"
    assert "tier: round 0, 2 ingest replica(s)" in text.stdout
    assert "tier" not in json.loads(elsewhere.stdout), "only a root reports replicas"


def test_an_adaptive_optimizer_through_the_tier_gives_the_single_pods_model(
    tmp_path: Path, tier_pki: Pki
) -> None:
    model = write_zero_model(tmp_path)
    validation = {"function": "validate_task", "kwargs": {"metrics": ["acc"]}}
    tasks = {
        "aggregated_model_validation": validation,
        "train": {
            "function": "train_task",
            "kwargs": {"metrics": ["loss"]},
            "aggregation": "adam",
            "aggregation_settings": {"learning_rate": 0.1},
        },
        "locally_tuned_model_validation": validation,
    }
    (tmp_path / "single").mkdir()
    setup = make_setup(tmp_path / "single", tier_pki, ROUNDS, model, federation={"tasks": tasks})
    with Aggregator(setup.config, name="single") as single:
        collaborators = FedaggCollaborators(setup, tier_pki)
        try:
            collaborators.wait()
            single.wait_finished()
        finally:
            stop(single, collaborators)
    (tmp_path / "tier").mkdir()
    with running_tier(tmp_path / "tier", tier_pki, ROUNDS, model, REPLICAS, tasks=tasks) as tier:
        collaborators = FedaggCollaborators(tier.setup, tier_pki)
        try:
            collaborators.wait()
            finish_tier_processes(tier)
        finally:
            stop(tier.root, *tier.replicas.values(), collaborators)

    expected, got = read_model(setup.state / "last.pbuf"), read_model(tier.setup.state / "last.pbuf")
    averaged = expected_models(FedaggCollaborators.expected(), ROUNDS)[-1]
    assert got.round_number == expected.round_number == ROUNDS
    for name, values in expected.tensors.items():
        assert not np.allclose(values, averaged), "Adam's model is not the weighted average's"
        np.testing.assert_allclose(got.tensors[name], values, rtol=1e-6, err_msg=f"tensor {name}")
