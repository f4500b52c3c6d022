"""Shutdown hooks: every hook the app can build passes the conformance suite (hook_conformance.py; a real
subprocess for the command hook, kmock's API emulator for the Kubernetes hook), then each hook's own contract.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client as k8s

from fedagg.assembly import _hooks
from fedagg.config.loading import parse_config
from fedagg.ops.hooks import CommandHook, Completion, ShutdownHook
from fedagg.ops.kube import KubernetesHook
from tests.integration.hook_conformance import (
    COMPLETIONS,
    PATIENT_TIMEOUT,
    Behaviour,
    HookConformance,
    HookTarget,
    failure_reasons,
    run_all,
)
from tests.support.conformance import subclasses
from tests.support.kube import NAMESPACE, POD, POD_UID, KubernetesApi, kubernetes_api, silent_server

# The command hook ---------------------------------------------------------------------------------------------

RECORD_ENVIRONMENT = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
SCRIPTS = {
    Behaviour.WORKS: RECORD_ENVIRONMENT,
    Behaviour.FAILS: "raise SystemExit(3)",
    Behaviour.HANGS: "import signal; signal.pause()",
}
ENVIRONMENT = {
    "state": "FEDAGG_STATE",
    "final_round": "FEDAGG_FINAL_ROUND",
    "best_metric": "FEDAGG_BEST_METRIC",
    "best_model": "FEDAGG_BEST_MODEL",
    "last_model": "FEDAGG_LAST_MODEL",
}


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line has ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in argv and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def recorded_environment(path: Path) -> dict[str, str] | None:
    return json.loads(path.read_text()) if path.is_file() else None


class TestCommandHook(HookConformance):
    hook_class = CommandHook

    @contextmanager
    def target(self, behaviour: Behaviour, timeout: float) -> Iterator[HookTarget]:
        marker = f"fedagg-hook-conformance-{uuid.uuid4()}"  # finds the command's process, and only it
        with tempfile.TemporaryDirectory() as directory:
            record = Path(directory) / "environment.json"
            hook = CommandHook([sys.executable, "-c", SCRIPTS[behaviour], str(record), marker], timeout)

            def received() -> dict[str, str] | None:
                environment = recorded_environment(record)
                if environment is None:
                    return None
                return {key: environment[name] for key, name in ENVIRONMENT.items() if name in environment}

            try:
                yield HookTarget(hook, received, lambda: bool(processes_with(marker)))
            finally:
                for pid in processes_with(marker):  # only a command this test started, left running
                    os.kill(pid, signal.SIGKILL)

    def test_the_command_inherits_the_aggregators_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HOOK_CONFORMANCE_PROBE", "inherited")
        record = tmp_path / "environment.json"

        outcome = run_all(
            [CommandHook([sys.executable, "-c", RECORD_ENVIRONMENT, str(record)], PATIENT_TIMEOUT)]
        )

        assert outcome.failed == []
        assert (recorded_environment(record) or {}).get("HOOK_CONFORMANCE_PROBE") == "inherited"

    def test_the_failure_names_the_exit_status(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="fedagg.ops.hooks")

        run_all([CommandHook([sys.executable, "-c", SCRIPTS[Behaviour.FAILS]], PATIENT_TIMEOUT)])

        assert "exited with status 3" in failure_reasons(caplog)["command"]


# The Kubernetes hook ------------------------------------------------------------------------------------------

ANNOTATIONS = {
    "state": "fedagg.io/state",
    "final_round": "fedagg.io/final-round",
    "best_metric": "fedagg.io/best-metric",
    "best_model": "fedagg.io/best-model",
    "last_model": "fedagg.io/last-model",
}


def hook_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("fedagg-kube-hook")}


def pod_annotations(api: KubernetesApi) -> dict[str, str]:
    with k8s.ApiClient(api.configuration()()) as client:
        pod = k8s.CoreV1Api(client).read_namespaced_pod(POD, NAMESPACE)
    return dict((pod.metadata.annotations if pod.metadata else None) or {})


class TestKubernetesHook(HookConformance):
    hook_class = KubernetesHook
    hang_timeout = 3.0  # each of its three API calls gets a third of it

    @contextmanager
    def target(self, behaviour: Behaviour, timeout: float) -> Iterator[HookTarget]:
        earlier = hook_threads()  # another test's hook may still be finishing

        def still_running() -> bool:
            return any(thread.is_alive() for thread in hook_threads() - earlier)

        if behaviour == Behaviour.HANGS:
            with silent_server() as url:
                client = lambda: k8s.Configuration(host=url)  # noqa: E731
                yield HookTarget(KubernetesHook(POD, NAMESPACE, timeout, client), lambda: None, still_running)
            return
        with kubernetes_api() as api:
            if behaviour == Behaviour.FAILS:
                api.refuse("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}", 500)

            def received() -> dict[str, str] | None:
                annotations = pod_annotations(api)
                fields = {key: annotations[name] for key, name in ANNOTATIONS.items() if name in annotations}
                return fields or None

            yield HookTarget(
                KubernetesHook(POD, NAMESPACE, timeout, api.configuration()), received, still_running
            )

    @pytest.mark.parametrize(("completion", "fields"), COMPLETIONS)
    def test_one_event_on_the_pod_tells_how_the_experiment_ended(
        self, completion: Completion, fields: dict[str, str]
    ) -> None:
        with kubernetes_api() as api:
            outcome = run_all(
                [KubernetesHook(POD, NAMESPACE, PATIENT_TIMEOUT, api.configuration())], completion
            )
            events = [request.data for request in api.requests("POST", f"/namespaces/{NAMESPACE}/events")]

        assert outcome.failed == []
        assert len(events) == 1
        assert events[0]["involvedObject"]["uid"] == POD_UID
        message = events[0]["message"]
        assert f"after round {completion.final_round}" in message
        assert f"last model {fields['last_model']}" in message
        assert ("best validate_agg metric 0.666667" in message) == (completion.best_metric is not None)


# Coverage of the conformance suite ----------------------------------------------------------------------------


def test_every_hook_the_app_can_build_has_a_conformance_class() -> None:
    config = parse_config(
        {
            "federation": {"federation_uuid": "fed_1", "collaborators": ["one"], "rounds_to_train": 1},
            "hooks": {
                "kubernetes": {"enabled": "true", "pod_name": POD, "namespace": NAMESPACE},
                "command": ["true"],
            },
        },
        Path("/etc/fedagg"),
        {},
    )
    built = {type(hook) for hook in _hooks(config, lambda: pytest.fail("no API call while building hooks"))}
    defined = {
        cls
        for cls in subclasses(ShutdownHook)
        if cls.__module__.startswith("fedagg.") and not inspect.isabstract(cls)
    }
    tested = {cls.hook_class for cls in subclasses(HookConformance)}

    assert len(built) >= 2, "every hook enabled"
    assert built | defined <= tested
    assert len({cls.name for cls in tested}) == len(tested), "hook names label metrics: one per kind"
