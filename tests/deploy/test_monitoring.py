"""The Prometheus rules (deploy/prometheus): promtool checks and unit-tests them; each alert is in the runbook."""

from __future__ import annotations

import re

import yaml

from tests.deploy import promql
from tests.deploy.chart import ROOT
from tests.deploy.tools import run_promtool

RULES_DIR = ROOT / "deploy" / "prometheus"


# --- rules --------------------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES_DIR / "fedagg-rules.yaml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 18 rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", "fedagg-rules.test.yaml", cwd=RULES_DIR)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_and_documented() -> None:
    alerts = {rule["alert"]: rule for rule in promql.rules() if "alert" in rule}
    tests = yaml.safe_load((RULES_DIR / "fedagg-rules.test.yaml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }

    assert set(alerts) == tested
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_the_alerts_cover_what_operators_need() -> None:
    alerts = {rule["alert"] for rule in promql.rules() if "alert" in rule}

    assert {
        "FedaggAggregatorDown",
        "FedaggRoundStalled",
        "FedaggAuthenticationFailures",
        "FedaggCertificateExpiringSoon",
        "FedaggCheckpointFailing",
        "FedaggStateFileQuarantined",
        "FedaggStorageFailing",
        "FedaggRoundEndFailing",
        "FedaggContributionsRejected",
        "FedaggBackgroundTaskErrors",
        "FedaggCollaboratorSilent",
        "FedaggStateVolumeLow",
        "FedaggStateVolumeFillingUp",
        "FedaggNoLeader",
        "FedaggLeaderFlapping",
    } <= alerts


# --- what issue 10 asks of the alerts and the dashboard ----------------------------------------------------------


def test_every_alert_points_at_its_runbook_section() -> None:
    runbook = (ROOT / "deploy" / "RUNBOOK.md").read_text()
    headings = re.findall(r"^## (\w+)$", runbook, re.MULTILINE)
    alerts = [rule["alert"] for rule in promql.rules() if "alert" in rule]

    assert headings == alerts, "one RUNBOOK.md section per alert, in the rules' order"
    for rule in promql.rules():
        if "alert" in rule:
            # GitHub's anchor of a heading `## FedaggX` is #fedaggx.
            assert rule["annotations"]["runbook"] == f"deploy/RUNBOOK.md#{rule['alert'].lower()}"


def test_the_round_stall_alert_measures_the_current_round() -> None:
    """Not increase() of a counter over a window (a fresh counter after any start or restart looked stalled)."""
    (rule,) = [rule for rule in promql.rules() if rule.get("alert") == "FedaggRoundStalled"]

    assert "time() - fedagg_round_started_timestamp_seconds >" in rule["expr"]
    assert "fedagg_round_started_timestamp_seconds > 0" in rule["expr"]
    assert 'fedagg_experiment_state{state="in_progress"} == 1' in rule["expr"]
    assert "increase(" not in rule["expr"]


# --- high availability (issue 21) ---------------------------------------------------------------------------------


def test_the_leadership_alerts_judge_a_federation_not_a_replica() -> None:
    """One replica at 0 is a standby, not a problem: the no-leader alert looks at every replica of the scrape job
    (and namespace), including the ones that are down, and so does the flapping alert."""
    rules = {rule["alert"]: rule for rule in promql.rules() if "alert" in rule}
    no_leader = " ".join(rules["FedaggNoLeader"]["expr"].split())
    flapping = " ".join(rules["FedaggLeaderFlapping"]["expr"].split())

    assert no_leader.startswith("max by (namespace, job) (fedagg_leader) == 0 or ")
    assert "max by (namespace, job) (up) == 0" in no_leader
    assert flapping.startswith("sum by (namespace, job) (increase(fedagg_leader_transitions_total[1h]))")
    assert "instance" not in no_leader + flapping
    assert rules["FedaggNoLeader"]["labels"]["severity"] == "critical"
