"""``fedagg serve`` as a tier: a root and two ingest replicas behind HAProxy train unchanged collaborators, every
contribution counted once and both replicas used. Four OpenFL 1.7.1 collaborator processes train every round's
model (weighted average, and Adam) equal within float32 rounding to OpenFL's own aggregator and to a standalone
``fedagg serve``, each trained by its own four collaborators at the same time (tests/tier/oracle_runs.py); OpenFL
1.9 collaborators likewise against OpenFL 1.9's aggregator (weighted average). fedagg's own collaborators train
through the tier, a root killed while it divides restarts, and ``fedagg status`` shows the replicas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedagg.protocol.model_file import read_model
from tests.faults.harness import (
    SERVING,
    Aggregator,
    Collaborators,
    FedaggCollaborators,
    assert_counted_once,
    finish,
    poll,
    stop,
)
from tests.integration.cli import fedagg
from tests.interop.openfl_results import (
    assert_metrics_equal,
    assert_models_closed_form,
    assert_models_equal,
    closed_form,
    fedagg_metrics,
    fedagg_models,
    oracle_metrics,
    oracle_models,
)
from tests.support.models import write_zero_model
from tests.support.pki import Pki, make_pki
from tests.tier.conftest import COLLABORATORS
from tests.tier.oracle_runs import ADAM, SPECS, WEIGHTED_AVERAGE, Method, ThreeWays, train_three_ways
from tests.tier.serving import Tier, contributions_by_replica, finish_tier_processes, running_tier

pytestmark = pytest.mark.slow

ROUNDS = 2
REPLICAS = ("ingest-0", "ingest-1")


@pytest.fixture
def tier_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", ("one", "two", *REPLICAS))


def finish_tier(tier: Tier, root: Aggregator, collaborators: Collaborators) -> None:
    """The federation ends as one pod's does (:func:`~tests.faults.harness.finish`) and every replica exits 0 once
    the root has gone; a failure shows every process's log."""
    try:
        finish(tier.setup, root, collaborators)
        finish_tier_processes(tier, root)
    except AssertionError as error:
        logs = "\n".join(f"{name} log:\n{process.log()}" for name, process in tier.replicas.items())
        raise AssertionError(f"{error}\nfirst root log:\n{tier.root.log()}\n{logs}") from None


def train_through_the_tier(tmp_path: Path, pki: Pki) -> Tier:
    """Train fedagg's collaborators through a root and two replicas."""
    with running_tier(tmp_path, pki, ROUNDS, write_zero_model(tmp_path), REPLICAS) as tier:
        collaborators = FedaggCollaborators(tier.setup, pki)
        try:
            finish_tier(tier, tier.root, collaborators)
        finally:
            stop(tier.root, *tier.replicas.values(), collaborators)
    return tier


def assert_delivered_once_by_both(root_log: str, collaborators: int) -> None:
    """Every contribution (three tasks per collaborator and round) reached the root once; both replicas took some."""
    held = contributions_by_replica(root_log)
    assert sum(held.values()) == ROUNDS * collaborators * 3, held
    assert all(held[replica] > 0 for replica in REPLICAS), f"the balancer used both replicas: {held}"


def test_fedagg_collaborators_train_through_a_root_and_two_ingest_replicas(
    tmp_path: Path, tier_pki: Pki
) -> None:
    tier = train_through_the_tier(tmp_path, tier_pki)

    assert_delivered_once_by_both(tier.root.log(), 2)


def assert_three_ways_agree(ways: ThreeWays, method: Method) -> None:
    """Every round's model of the tier is OpenFL's and the standalone pod's (float32 rounding), its aggregated
    metrics are OpenFL's, its last.pbuf holds the final model; each contribution counted once, both replicas used."""
    openfl = oracle_models(ways.oracle_output, ROUNDS)
    tier = fedagg_models(ways.tier.setup.state, ROUNDS)
    assert_models_equal(tier, openfl, "the tier vs OpenFL's aggregator")
    assert_models_equal(tier, fedagg_models(ways.standalone.state, ROUNDS), "the tier vs a standalone fedagg")
    assert_metrics_equal(
        fedagg_metrics(ways.tier.setup.state, ROUNDS),
        oracle_metrics(ways.oracle_output),
        "the tier vs OpenFL",
    )
    averages, _ = closed_form(SPECS, ROUNDS)
    if method == WEIGHTED_AVERAGE:
        assert_models_closed_form(tier, averages, "the tier vs the closed form")
    else:
        assert not np.allclose(tier[-1]["w"], averages[-1]), (
            "the optimizer's model is not the weighted average's"
        )
    last = read_model(ways.tier.setup.state / "last.pbuf")
    assert last.round_number == ROUNDS
    assert_models_equal([dict(last.tensors)], openfl[-1:], "the tier's last.pbuf vs OpenFL's final model")
    for setup in (ways.tier.setup, ways.standalone):
        assert_counted_once(setup, COLLABORATORS)
    assert_delivered_once_by_both(ways.tier.root.log(), len(COLLABORATORS))


@pytest.mark.parametrize("method", [WEIGHTED_AVERAGE, ADAM], ids=["weighted_average", "adam"])
def test_openfl_171_collaborators_through_the_tier_train_openfls_and_a_single_pods_models(
    tmp_path: Path, pki: Pki, openfl: Path, method: Method
) -> None:
    ways = train_three_ways(tmp_path, pki, openfl, method, ROUNDS)

    assert_three_ways_agree(ways, method)


def test_openfl_19_collaborators_through_the_tier_train_openfl_19s_and_a_single_pods_models(
    tmp_path: Path, pki: Pki, openfl_19: Path
) -> None:
    ways = train_three_ways(tmp_path, pki, openfl_19, WEIGHTED_AVERAGE, ROUNDS)

    assert_three_ways_agree(ways, WEIGHTED_AVERAGE)


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
