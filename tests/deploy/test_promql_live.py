"""Every PromQL expression of the dashboard and the alert rules returns data from a real Prometheus that scraped a
real fedagg run (an expression that can never match is a defect).

fedagg runs as a subprocess with two reference collaborators training 2 rounds over mTLS; a rogue collaborator is
refused (auth_failure) and the hook command fails (hook_failure), so that the series born of those events exist.
Prometheus (Debian package) scrapes /metrics every second with deploy/prometheus/fedagg-rules.yaml loaded. An alert's
own expression is empty while its condition is false; its signal (the expression without the threshold) must
return data instead (see tests/deploy/promql.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from fedagg.collaborator import AggregatorClient, AggregatorError, RetryPolicy
from tests.deploy import promql
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.prometheus import PrometheusServer
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID
from tests.support.training import train

pytestmark = pytest.mark.slow

SPECS = {"one": (1.0, 10), "two": (2.0, 30)}
EVENTS = frozenset({"auth_failure", "hook_failure"})


def test_every_dashboard_and_rule_expression_returns_data(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path,
        pki,
        tuple(SPECS),
        2,
        write_zero_model(tmp_path),
        ops={"after_finish": "stay", "drain_seconds": 0.2, "grace_seconds": 10},
        hooks={"kubernetes": {"enabled": "false"}, "command": ["false"]},
    )
    expected = [e for e in promql.expressions() if e.must_return_data(EVENTS)]

    with FedaggProcess(config) as aggregator:
        aggregator.wait_for_ops()
        aggregator.wait_for_federation()
        with PrometheusServer(
            tmp_path / "prometheus", [f"127.0.0.1:{aggregator.metrics_port}"], [promql.RULES]
        ) as prometheus:
            prometheus.wait_for("fedagg_build_info")
            rogue = AggregatorClient(
                aggregator.address,
                "rogue",
                AGGREGATOR_UUID,
                FEDERATION_UUID,
                tls=pki.client("rogue"),
                retry=RetryPolicy(give_up_after=0.5),
            )
            with rogue, pytest.raises(AggregatorError) as refused:
                rogue.get_tasks()
            train(aggregator.address, pki, SPECS)
            prometheus.wait_for('fedagg_experiment_state{state="finished"} == 1')
            prometheus.wait_for("fedagg_hook_failures_total")

            # Scrapes are asynchronous: poll until every expression has data (or the deadline).
            deadline = time.monotonic() + 30
            empty = expected
            while empty and time.monotonic() < deadline:
                empty = [e for e in empty if not prometheus.query(e.query)]
                if empty:
                    time.sleep(1)
        aggregator.terminate()
        assert aggregator.wait() == 0, aggregator.log()

    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert len(expected) >= 60
    assert [f"{e.source} {e.name}: {e.query}" for e in empty] == []
