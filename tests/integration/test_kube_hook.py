"""The Kubernetes shutdown hook against kmock's API emulator: Event and annotations, and failures survived."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from kubernetes import client as k8s

from fedagg.ops.hooks import CommandHook, Completion, run_hooks
from fedagg.ops.kube import KubernetesHook
from tests.support.kube import NAMESPACE, POD, POD_UID, kubernetes_api, silent_server

COMPLETION = Completion(
    "finished", 5, 0.875, Path("/var/lib/fedagg/best.pbuf"), Path("/var/lib/fedagg/last.pbuf")
)


def run(hooks: list) -> tuple[list[str], list[str], float]:  # type: ignore[type-arg]
    failures: list[str] = []
    started = time.monotonic()
    failed = asyncio.run(run_hooks(hooks, COMPLETION, failures.append))
    return failed, failures, time.monotonic() - started


def test_annotations_and_event_on_the_pod() -> None:
    with kubernetes_api() as api:
        failed, _, _ = run([KubernetesHook(POD, NAMESPACE, 10, api.configuration())])
        with k8s.ApiClient(api.configuration()()) as client:
            pod = k8s.CoreV1Api(client).read_namespaced_pod(POD, NAMESPACE)
        events = api.requests("POST", f"/namespaces/{NAMESPACE}/events")

    assert failed == []
    assert pod.metadata.annotations == {
        "fedagg.io/state": "finished",
        "fedagg.io/final-round": "5",
        "fedagg.io/best-metric": "0.875",
        "fedagg.io/best-model": "/var/lib/fedagg/best.pbuf",
        "fedagg.io/last-model": "/var/lib/fedagg/last.pbuf",
    }
    assert len(events) == 1
    event = events[0].data
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": POD,
        "namespace": NAMESPACE,
        "uid": POD_UID,
    }
    assert (event["reason"], event["type"], event["source"]["component"]) == (
        "ExperimentFinished",
        "Normal",
        "fedagg",
    )
    assert "after round 5" in event["message"]


def test_forbidden_is_reported_and_the_next_hook_still_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = CommandHook([sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ok')"], 10)
    with kubernetes_api() as api:
        api.refuse("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}", 403)
        failed, counted, _ = run([KubernetesHook(POD, NAMESPACE, 10, api.configuration()), command])

    assert failed == counted == ["kubernetes"]
    assert marker.read_text() == "ok"


def test_a_hanging_api_server_is_given_up_within_the_timeout() -> None:
    with silent_server() as url:
        hook = KubernetesHook(POD, NAMESPACE, 2, lambda: k8s.Configuration(host=url))
        failed, counted, elapsed = run([hook])

    assert failed == counted == ["kubernetes"]
    assert elapsed < 2 + 1


def test_an_unreachable_api_server_fails_fast() -> None:
    with silent_server() as url:
        closed = url
    hook = KubernetesHook(POD, NAMESPACE, 5, lambda: k8s.Configuration(host=closed))

    failed, _, elapsed = run([hook])

    assert failed == ["kubernetes"]
    assert elapsed < 5
