"""Every PromQL expression of the rules and the dashboard: valid, naming only exported metrics and labels, and
filled by a short run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.tools import run_promtool

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


def family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


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

    result = run_promtool("check", "rules", str(path))

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
