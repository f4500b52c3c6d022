"""checkov's Kubernetes policies over every rendered scenario; each accepted finding is justified below."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.chart import FULLNAME, SCENARIOS, scenario_objects

NAMESPACE = r"(federation|fl-aggregators)"  # the release's, or ci/conventions' namespaceOverride
AGGREGATOR = rf"(Job|Deployment)\.{NAMESPACE}\.{FULLNAME}(-[0-9a-f]{{10}})?"  # a Job may carry its hash
TEST_POD = rf"Pod\.{NAMESPACE}\.{FULLNAME}-test-health"

#: (check, resource pattern) -> why the finding is accepted. Anything else fails the test.
JUSTIFIED = {
    ("CKV_K8S_43", rf"{AGGREGATOR}|{TEST_POD}"): (
        "Image should use digest: the chart supports image.digest (repository@sha256:...), but its default is the "
        "tag of the chart's appVersion, because the image is built by the user (scripts/build-image) and has no "
        "digest the chart could know."
    ),
    ("CKV_K8S_15", rf"{AGGREGATOR}|{TEST_POD}"): (
        "Image Pull Policy should be Always: IfNotPresent is the chart's default (image.pullPolicy) because the "
        "image may be loaded into the nodes without a registry; with a digest, Always would add nothing."
    ),
    ("CKV_K8S_8", TEST_POD): (
        "Liveness probe: the `helm test` pod runs one `fedagg health` call and exits; there is nothing to probe."
    ),
    ("CKV_K8S_9", TEST_POD): (
        "Readiness probe: the `helm test` pod receives no traffic; it runs one `fedagg health` call and exits."
    ),
    ("CKV2_K8S_6", rf"{AGGREGATOR}|{TEST_POD}"): (
        "Pods without a NetworkPolicy: the policy is opt-in (networkPolicy.enabled, as in the prometheus-community "
        "charts) because collaborators may connect from anywhere and the right peers depend on the cluster's CNI; "
        "the network-policy scenario covers the aggregator. The test pod only dials out."
    ),
    ("CKV_K8S_38", AGGREGATOR): (
        "Service account token mounted: the Kubernetes shutdown hook calls the API (pods get/patch, events "
        "create, nothing else: see test_rbac_grants_exactly_the_hook_verbs), and so does the leader election "
        "with ha.enabled (its one Lease: test_chart_ha.py). With config.hooks.kubernetes.enabled=false and no "
        "HA the token is not mounted (persistence-off scenario)."
    ),
}


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    """scenario -> [(check id, resource)] of every failed check."""
    binary = tools.checkov()
    root = tmp_path_factory.mktemp("rendered")
    for scenario in SCENARIOS:
        directory = root / scenario
        directory.mkdir()
        for index, document in enumerate(scenario_objects(scenario)):
            name = f"{index:02d}-{document['kind'].lower()}.yaml"
            (directory / name).write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [
            binary,
            "--directory",
            str(root),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["kubernetes"]
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 8 * len(SCENARIOS)
    found: dict[str, list[tuple[str, str]]] = {scenario: [] for scenario in SCENARIOS}
    for check in reports[0]["results"].get("failed_checks", []):
        scenario = Path(check["file_path"]).parts[1]
        found[scenario].append((check["check_id"], check["resource"]))
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov_passes_or_the_finding_is_justified(
    scenario: str, findings: dict[str, list[tuple[str, str]]]
) -> None:
    unjustified = [
        (check, resource)
        for check, resource in findings[scenario]
        if not any(check == allowed and re.fullmatch(pattern, resource) for allowed, pattern in JUSTIFIED)
    ]

    assert unjustified == []


def test_the_network_policy_scenario_covers_the_aggregator(
    findings: dict[str, list[tuple[str, str]]],
) -> None:
    assert not any(
        check == "CKV2_K8S_6" and re.fullmatch(AGGREGATOR, resource)
        for check, resource in findings["network-policy"]
    )


def test_without_the_kubernetes_hook_no_token_is_mounted(findings: dict[str, list[tuple[str, str]]]) -> None:
    assert "CKV_K8S_38" not in {check for check, _ in findings["persistence-off"]}
