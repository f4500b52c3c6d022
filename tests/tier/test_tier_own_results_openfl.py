"""A real OpenFL 1.9 collaborator killed mid-round and restarted on another ingest replica resumes by itself: it
fetches its own trained tensors of the round (``GetAggregatedTensor`` tags ``[one, trained]``), which the replica
it now dials does not hold, through the root from the replica that does, and the federation ends with the model of
an undisturbed run. ``fedagg serve`` as a root and two ingest replicas (:mod:`tests.tier.serving`); each
collaborator dials a replica directly, so which replica holds what is known."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest

from tests.faults.harness import BACKUP_POLL, OPENFL_SPECS, OpenflCollaborators, finish, poll, stop
from tests.interop.openfl import CollaboratorSpec, start_collaborator
from tests.support.models import write_zero_model
from tests.support.pki import Pki, make_pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.tier.serving import running_tier

pytestmark = pytest.mark.slow

REPLICAS = ("ingest-0", "ingest-1")
LAST_TASK = "locally_tuned_model_validation"
OWN_RESULTS_FETCH = re.compile(
    r"Fetching latest layer from aggregator \('(\w+)', 'one', 0, False, \('one', 'trained'\)\)"
)
RELAYED = re.compile(r"round 0: one's own results '(\w+)' relayed from ingest-0 to ingest-1")


class DialledCollaborators(OpenflCollaborators):
    """OpenFL collaborators each dialling the port it is given (not the balancer)."""

    def __init__(self, directory: Path, pki: Pki, python: Path) -> None:
        self.directory, self.pki, self.python = directory, pki, python
        self.specs = OPENFL_SPECS
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.results: list[Path] = []

    def start(self, spec: CollaboratorSpec, port: int, label: str) -> subprocess.Popen[bytes]:
        log, result = self.directory / f"openfl-{label}.log", self.directory / f"openfl-{label}.json"
        with mock.patch.dict(os.environ, {BACKUP_POLL: "100"}):
            process = start_collaborator(
                self.python,
                spec,
                port,
                FEDERATION_UUID,
                AGGREGATOR_UUID,
                self.pki,
                True,
                result,
                log,
                reconnect_seconds=1,
            )
        self.processes.append(process)
        self.logs.append(log)
        self.results.append(result)
        return process


def test_an_openfl_19_collaborator_restarted_on_another_replica_fetches_its_own_results_through_the_root(
    tmp_path: Path, openfl_19: Path
) -> None:
    pki = make_pki(tmp_path / "pki", ("one", "two", *REPLICAS))
    one, two = OPENFL_SPECS
    with running_tier(tmp_path, pki, 2, write_zero_model(tmp_path), REPLICAS) as tier:
        ports = {name: process.federation_port for name, process in tier.replicas.items()}
        collaborators = DialledCollaborators(tier.setup.directory, pki, openfl_19)
        try:
            collaborators.start(two, ports["ingest-0"], "two")
            stalling = replace(one, stall_before_task=LAST_TASK, stall_seconds=600, stall_round=0)
            killed = collaborators.start(stalling, ports["ingest-0"], "one-killed")
            killed_log = collaborators.logs[-1]
            poll(
                lambda: "round 0: stalling" in killed_log.read_text(errors="replace"),
                120,
                "one uploading round 0's train to ingest-0, then stalling before its last task",
                interval=0.2,
            )
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(timeout=10) == -signal.SIGKILL
            collaborators.processes.remove(killed)
            collaborators.logs.remove(killed_log)
            collaborators.results.pop(-1)
            collaborators.start(one, ports["ingest-1"], "one-restarted")
            finish(
                tier.setup, tier.root, collaborators
            )  # the undisturbed run's model, each contribution once
            for replica in tier.replicas.values():
                replica.wait_finished(30)
        finally:
            stop(tier.root, *tier.replicas.values(), collaborators)
    restarted = collaborators.logs[-1].read_text(errors="replace")
    assert set(OWN_RESULTS_FETCH.findall(restarted)) == {"b", "w"}, restarted[-3000:]
    assert set(RELAYED.findall(tier.root.log())) == {"b", "w"}, tier.root.log()[-3000:]
