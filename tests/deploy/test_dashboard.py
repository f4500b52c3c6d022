"""The Grafana dashboard: well-formed, selecting by job, namespace and instance, showing what operators need."""

from __future__ import annotations

import json

from tests.deploy import promql
from tests.deploy.chart import ROOT

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
