"""The chart's workload: a Job or a Deployment, how it rolls, is disrupted and upgraded."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy import chart
from tests.deploy.chart import CHART, FULLNAME, render, rendered, with_federation

pytestmark = pytest.mark.usefixtures("helm_sdk")


# --- workload modes -----------------------------------------------------------------------------------------------


def test_job_mode_completes_with_the_experiment() -> None:
    objects = rendered("default")

    job = objects.one("Job", FULLNAME)
    assert job["spec"]["completions"] == 1
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert objects.config()["ops"]["after_finish"] == "exit"
    assert objects.config()["ops"]["exit_code"] == 0
    assert not objects.has("Deployment")


def test_deployment_mode_is_one_replica_recreated_and_stays_up() -> None:
    objects = rendered("deployment")

    deployment = objects.one("Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert objects.config()["ops"]["after_finish"] == "stay"
    assert objects.one("Service", FULLNAME)["spec"]["type"] == "LoadBalancer"
    assert objects.one("Service", f"{FULLNAME}-ops")["spec"]["type"] == "ClusterIP"
    assert objects.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_config_changes_roll_the_pod() -> None:
    first = render(with_federation()).workload["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]
    second = render(with_federation(config={"logging": {"level": "debug", "format": "json"}})).workload[
        "spec"
    ]["template"]["metadata"]["annotations"]["checksum/config"]

    assert first != second


# --- disruptions and upgrades ----------------------------------------------------------------------------------------


def test_the_disruption_budget_cannot_hold_a_drain_forever() -> None:
    budget = rendered("deployment").one("PodDisruptionBudget", FULLNAME)["spec"]
    readme = (CHART / "README.md").read_text()

    assert budget["minAvailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "### Disruptions" in readme
    assert "cannot hold a drain forever" in readme


def test_the_job_keeps_its_name_by_default() -> None:
    objects = rendered("default")

    assert objects.one("Job")["metadata"]["name"] == FULLNAME
    assert "annotations" not in objects.one("Job")["metadata"]


def job_name(**values: Any) -> str:
    values["job"] = {"nameWithChecksum": True, **values.get("job", {})}
    return str(render(with_federation(**values)).one("Job")["metadata"]["name"])


def test_a_job_named_after_its_pod_template_changes_name_with_it() -> None:
    first = job_name()

    assert first.startswith(f"{FULLNAME}-")
    assert len(first) == len(FULLNAME) + 11
    assert job_name() == first, "the same values give the same Job"
    assert job_name(config={"logging": {"level": "debug"}}) != first, "a config change is a new Job"
    assert job_name(image={"tag": "0.1.1"}) != first, "an image change is a new Job"
    assert job_name(job={"nameWithChecksum": True, "ttlSecondsAfterFinished": 60}) == first, (
        "mutable Job fields keep the name"
    )


def test_a_job_name_with_its_checksum_fits_the_job_name_label() -> None:
    name = job_name(fullnameOverride="f" * 80)

    assert len(name) == 63
    notes = chart.render_manifests(with_federation(job={"nameWithChecksum": True}))["templates/NOTES.txt"]
    assert f"job/{job_name()}" in notes


def test_gitops_replace_annotates_the_job() -> None:
    job = render(with_federation(job={"gitOpsReplace": True, "annotations": {"a": "b"}})).one("Job", FULLNAME)

    assert job["metadata"]["annotations"] == {
        "argocd.argoproj.io/sync-options": "Force=true,Replace=true",
        "kustomize.toolkit.fluxcd.io/force": "enabled",
        "a": "b",
    }


def test_the_upgrade_story_is_documented() -> None:
    readme = (CHART / "README.md").read_text()
    upgrades = readme.split("## Upgrades")[1].split("\n## ")[0]

    for needle in ("job.nameWithChecksum", "job.gitOpsReplace", "ReadWriteOncePod", "kubectl delete job"):
        assert needle in upgrades
