"""Prometheus rules (promtool check + unit tests) and the Grafana dashboard (well-formed, valid PromQL)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.chart import ROOT
from tests.support.prometheus import promtool

RULES_DIR = ROOT / "deploy" / "prometheus"

#: The metric families fedagg exports (the product contract); any other name in a query is a typo.
FEDAGG_METRICS = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "grpc_server_handling_seconds",
    "fedagg_round",
    "fedagg_rounds_to_train",
    "fedagg_rounds_completed_total",
    "fedagg_round_duration_seconds",
    "fedagg_collaborators",
    "fedagg_collaborators_authorized",
    "fedagg_task_results_total",
    "fedagg_contributions_rejected_total",
    "fedagg_contributions_ignored_total",
    "fedagg_state_files_quarantined_total",
    "fedagg_round_end_failures_total",
    "fedagg_storage_errors_total",
    "fedagg_background_errors_total",
    "fedagg_storage_failing",
    "fedagg_round_end_failing",
    "fedagg_received_bytes_total",
    "fedagg_sent_bytes_total",
    "fedagg_aggregation_duration_seconds",
    "fedagg_aggregated_metric",
    "fedagg_auth_failures_total",
    "fedagg_checkpoint_last_success_timestamp_seconds",
    "fedagg_checkpoint_duration_seconds",
    "fedagg_checkpoint_failures_total",
    "fedagg_tls_certificate_expiry_timestamp_seconds",
    "fedagg_certificate_reloads_total",
    "fedagg_experiment_state",
    "fedagg_hook_failures_total",
    "fedagg_build_info",
    "fedagg_round_started_timestamp_seconds",
    "fedagg_collaborator_state",
    "fedagg_collaborator_last_contact_timestamp_seconds",
    "fedagg_state_volume_size_bytes",
    "fedagg_state_volume_available_bytes",
    "fedagg_get_tasks_held",
    "fedagg_get_tasks_hold_seconds",
    "fedagg_reply_bytes_in_flight",
    "fedagg_downloads_waiting",
    "fedagg_leader",
    "fedagg_leader_transitions_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
    "up",
}
HISTOGRAMS = {
    "grpc_server_handling_seconds",
    "fedagg_round_duration_seconds",
    "fedagg_aggregation_duration_seconds",
    "fedagg_checkpoint_duration_seconds",
    "fedagg_get_tasks_hold_seconds",
}
LABELS = {
    "fedagg_collaborators": {
        "state": {"waiting", "training", "held", "done", "rejected", "straggler", "silent", "quit"}
    },
    "fedagg_experiment_state": {"state": {"restoring", "pending", "in_progress", "finished", "draining"}},
    "fedagg_collaborator_state": {
        "state": {"waiting", "training", "held", "done", "rejected", "straggler", "silent", "quit"}
    },
    "fedagg_certificate_reloads_total": {"outcome": {"loaded", "rejected"}},
    "fedagg_task_results_total": {"outcome": {"accepted", "ignored", "rejected"}},
    "fedagg_contributions_rejected_total": {
        "reason": {
            "data_size",
            "codec",
            "byte_length",
            "metric_shape",
            "role",
            "duplicate_tensor",
            "shape",
            "delta_base",
            "extra_tensor_budget",
            "upload_size",
            "non_finite",
            "metric_count",
        }
    },
    "fedagg_contributions_ignored_total": {
        "reason": {"finished", "wrong_round", "round_closed", "duplicate", "not_assigned", "unknown_task"}
    },
    "fedagg_state_files_quarantined_total": {
        "kind": {"upload", "rejection", "close_decision", "checkpoint", "model", "metrics"}
    },
    "fedagg_storage_errors_total": {"operation": {"spool", "rejection", "round_end", "quit"}},
    "fedagg_background_errors_total": {"task": {"round_clock"}},
}
DASHBOARD_TOPICS = [
    "Round progress",
    "Collaborators",
    "Throughput",
    "Latency by method (p50)",
    "Latency by method (p99)",
    "Authentication failures",
    "Model metrics by round",
    "Certificate expiry",
    "Contributions",
    "Rejected contributions by reason",
    "State health",
    "Quarantined state files",
    "Storage errors by operation",
    "Whom are we waiting for",
    "Health",
    "Time since last contact",
    "Current round running for",
    "State volume usage",
    "State volume",
    "GetTasks long poll",
    "Leadership",
]


def family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# --- rules --------------------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = run(promtool(), "check", "rules", str(RULES_DIR / "fedagg-rules.yaml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 18 rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run(promtool(), "test", "rules", "fedagg-rules.test.yaml", cwd=RULES_DIR)

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


# --- dashboard ----------------------------------------------------------------------------------------------------


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(promql.DASHBOARD.read_text())
    panels = dashboard["panels"]

    assert dashboard["uid"] == "fedagg-overview"
    assert dashboard["title"] == "fedagg"
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"], panel["id"]
        assert panel["description"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["allValue"] == ".+"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = {title for title, _ in promql.dashboard_targets()}

    assert set(DASHBOARD_TOPICS) <= titles


def test_the_top_row_says_whom_the_round_waits_for_and_whether_it_is_healthy() -> None:
    dashboard = json.loads(promql.DASHBOARD.read_text())
    first_row = dashboard["panels"][1:]
    first_row = first_row[: next(i for i, panel in enumerate(first_row) if panel["type"] == "row")]
    titles = [panel["title"] for panel in first_row]
    health = next(panel for panel in first_row if panel["title"] == "Health")

    assert titles[0] == "Health"
    assert "Whom are we waiting for" in titles
    assert [target["legendFormat"] for target in health["targets"]] == ["alerts firing", "failing", "down"]
    assert all(target["expr"].endswith(" or vector(0)") for target in health["targets"])
    assert promql.DASHBOARD.read_text() == (ROOT / "helm/fedagg/files/fedagg-dashboard.json").read_text()


def test_every_expression_selects_by_job_namespace_and_instance() -> None:
    dashboard = json.loads(promql.DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    selection = 'job=~"$job", namespace=~"$namespace", instance=~"$instance"'

    assert list(variables) == ["datasource", "job", "namespace", "instance"]
    assert variables["namespace"]["allValue"] == ".*", "a static scrape config has no namespace label"
    assert variables["instance"]["allValue"] == ".+"
    for title, expression in promql.dashboard_targets():
        if not title.startswith("variable "):
            assert expression.count("{") == expression.count(selection), title


def test_every_panel_expression_is_extracted() -> None:
    dashboard = json.loads(promql.DASHBOARD.read_text())
    raw = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]

    extracted = [
        expression for title, expression in promql.dashboard_targets() if not title.startswith("variable ")
    ]
    assert extracted == raw
    assert len(raw) >= 25


# --- the expressions ----------------------------------------------------------------------------------------------


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (dashboard ones with their variables substituted) as a recording rule."""
    expressions = promql.expressions()
    rules = {
        "groups": [
            {
                "name": "every-expression",
                "rules": [
                    {"record": f"check:expression_{index}", "expr": e.query}
                    for index, e in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump(rules))

    result = run(promtool(), "check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_expressions_name_only_exported_metrics_and_labels() -> None:
    for expression in promql.expressions():
        for selector in promql.selectors(expression.query):
            name = selector.split("{")[0]
            assert family(name) in FEDAGG_METRICS, f"{expression.name}: unknown metric {name}"
            for label, operator, value in re.findall(r'(\w+)(=~?)"([^"]*)"', selector):
                allowed = LABELS.get(family(name), {}).get(label)
                if allowed is not None:
                    values = value.split("|") if operator == "=~" else [value]
                    assert set(values) <= allowed, f"{expression.name}: {label}{operator}{value!r}"


def test_short_runs_fill_the_dashboard() -> None:
    """Rates look back at most 1m once substituted (a 2-round test run is short); rules look back at most 1h, but
    for the state volume's trend (6h; predict_linear needs only two samples to return data)."""
    for expression in promql.expressions():
        for window in re.findall(r"\[(\w+)\]", expression.query):
            if expression.source == "dashboard":
                assert window == "1m", f"{expression.name}: [{window}]"
            else:
                assert window in ("5m", "10m", "15m", "30m", "1h", "6h"), f"{expression.name}: [{window}]"


def test_the_helper_returns_signals_and_selectors_for_alerts() -> None:
    expressions = {(e.source, e.name): e for e in promql.expressions()}

    down = expressions[("rules", "FedaggAggregatorDown signal")]
    assert down.query == "up and on (job, instance) max_over_time(fedagg_build_info[1h])"
    assert down.must_return_data()
    assert not expressions[("rules", "FedaggAggregatorDown")].must_return_data()
    auth = expressions[("rules", "FedaggAuthenticationFailures signal")]
    assert auth.events == ("auth_failure",)
    assert auth.must_return_data({"auth_failure"})
    assert expressions[("rules", "FedaggCertificateExpiringSoon signal")].query == (
        "fedagg_tls_certificate_expiry_timestamp_seconds - time()"
    )
    queries = {e.query for e in promql.expressions()}
    assert 'fedagg_experiment_state{state="in_progress"}' in queries
    assert "fedagg_hook_failures_total" in queries
    assert not any("$" in query for query in queries)


@pytest.mark.parametrize(
    "alert",
    [
        "FedaggStateFileQuarantined",
        "FedaggStorageFailing",
        "FedaggRoundEndFailing",
        "FedaggContributionsRejected",
        "FedaggBackgroundTaskErrors",
    ],
)
def test_state_health_alerts_have_data_from_the_first_scrape(alert: str) -> None:
    """Their counters are created at 0 and their gauges always exported: no run has to provoke an event."""
    expressions = {(e.source, e.name): e for e in promql.expressions()}

    assert expressions[("rules", f"{alert} signal")].events == ()
    assert expressions[("rules", f"{alert} signal")].must_return_data()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            'sum(rate(fedagg_sent_bytes_total{job=~"$job"}[$__rate_interval]))',
            ['fedagg_sent_bytes_total{job=~".+"}'],
        ),
        ("up == 0 and on (job) max_over_time(fedagg_build_info[1h])", ["up", "fedagg_build_info"]),
        (
            "histogram_quantile(0.9, sum by (le) (rate(grpc_server_handling_seconds_bucket[1m])))",
            ["grpc_server_handling_seconds_bucket"],
        ),
    ],
)
def test_selectors_are_the_bare_metric_selectors(expression: str, expected: list[str]) -> None:
    assert promql.selectors(expression) == expected


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


def test_latency_panels_leave_out_streaming_and_held_calls() -> None:
    latency = [
        (title, expression)
        for title, expression in promql.dashboard_targets()
        if "grpc_server_handling_seconds" in expression
    ]

    assert {title for title, _ in latency} == {"Latency by method (p50)", "Latency by method (p99)"}
    for title, expression in latency:
        # SendLocalTaskResults is client streaming, GetMetricStream server streaming: grpc_type keeps them out.
        assert 'grpc_type="unary"' in expression, title
        assert 'grpc_method!="GetTasks"' in expression, title


def test_the_dashboard_shows_collaborators_and_the_state_volume() -> None:
    targets: dict[str, list[str]] = {}
    for title, expression in promql.dashboard_targets():
        targets.setdefault(title, []).append(expression)

    table = " ".join(targets["Whom are we waiting for"])
    assert "fedagg_collaborator_state" in table
    assert "time() - max by (collaborator) (fedagg_collaborator_last_contact_timestamp_seconds" in table
    usage = " ".join(targets["State volume usage"])
    assert "fedagg_state_volume_available_bytes" in usage
    assert "fedagg_state_volume_size_bytes" in usage


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


def test_leadership_expressions_need_a_run_with_the_election() -> None:
    """fedagg exports fedagg_leader only where replicas elect a leader; a run without it (the live test's) cannot
    fill these expressions, one with it must."""
    leadership = [e for e in promql.expressions() if "fedagg_leader" in e.query]

    assert {e.name for e in leadership} >= {
        "FedaggNoLeader signal",
        "FedaggLeaderFlapping signal",
        "Leadership",
    }
    for expression in leadership:
        assert "leader_election" in expression.events, expression.name
        assert expression.must_return_data({"leader_election"}) == (
            "alert_condition" not in expression.events
        )
