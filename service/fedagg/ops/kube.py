"""The built-in Kubernetes shutdown hook: an Event on the aggregator's pod and completion annotations.

It needs only a namespaced Role: ``pods`` get and patch, ``events`` create. The pod name and namespace come
from the downward API (``POD_NAME``, ``POD_NAMESPACE``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from fedagg.ops.hooks import Completion, ShutdownHook

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "fedagg.io/"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def in_cluster_configuration() -> k8s.Configuration:
    """An API client configuration from the pod's service account."""
    configuration = k8s.Configuration()
    k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def pod_identity(pod_name: str, namespace: str) -> tuple[str, str]:
    """The pod and namespace from settings, else the downward API environment, else the service account."""
    pod = pod_name or os.environ.get("POD_NAME", "")
    space = namespace or os.environ.get("POD_NAMESPACE", "")
    if not space and NAMESPACE_FILE.is_file():
        space = NAMESPACE_FILE.read_text().strip()
    return pod, space


def running_in_cluster() -> bool:
    """Whether the process runs in a Kubernetes pod."""
    return "KUBERNETES_SERVICE_HOST" in os.environ


def completion_annotations(completion: Completion) -> dict[str, str]:
    """The annotations set on the pod."""
    values = {
        "state": completion.state,
        "final-round": str(completion.final_round),
        "best-metric": "" if completion.best_metric is None else repr(completion.best_metric),
        "best-model": str(completion.best_model or ""),
        "last-model": str(completion.last_model or ""),
    }
    return {ANNOTATION_PREFIX + key: value for key, value in values.items()}


class KubernetesHook(ShutdownHook):
    """Annotates the aggregator's pod and records an Event on it."""

    name = "kubernetes"

    def __init__(
        self,
        pod: str,
        namespace: str,
        timeout: float,
        configuration: Callable[[], k8s.Configuration] = in_cluster_configuration,
    ) -> None:
        self.pod = pod
        self.namespace = namespace
        self.timeout = timeout
        self._configuration = configuration

    async def run(self, completion: Completion) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedagg-kube-hook")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._report, completion)
        finally:
            executor.shutdown(wait=False)

    def _report(self, completion: Completion) -> None:
        # Each call gets a share of the budget, so a hung API server cannot keep the thread alive after the hook.
        timeout = (self.timeout / 3, self.timeout / 3)
        configuration = self._configuration()
        configuration.retries = False  # urllib3's default retries would run a hung call past its share
        with k8s.ApiClient(configuration) as api_client:
            api = k8s.CoreV1Api(api_client)
            pod = api.read_namespaced_pod(self.pod, self.namespace, _request_timeout=timeout)
            body = {"metadata": {"annotations": completion_annotations(completion)}}
            api.patch_namespaced_pod(self.pod, self.namespace, body, _request_timeout=timeout)
            api.create_namespaced_event(
                self.namespace, self._event(pod, completion), _request_timeout=timeout
            )
        log.info("annotated pod %s/%s and recorded an Event", self.namespace, self.pod)

    def _event(self, pod: k8s.V1Pod, completion: Completion) -> k8s.CoreV1Event:
        best = (
            ""
            if completion.best_metric is None
            else f", best validate_agg metric {completion.best_metric:.6g}"
        )
        return pod_event(
            pod,
            "ExperimentFinished",
            f"federated training finished after round {completion.final_round}{best}; "
            f"last model {completion.last_model}",
        )


def pod_event(pod: k8s.V1Pod, reason: str, message: str) -> k8s.CoreV1Event:
    """A Normal Event about ``pod`` reported by fedagg."""
    now = datetime.datetime.now(datetime.UTC)
    metadata = pod.metadata or k8s.V1ObjectMeta()
    name, namespace = metadata.name, metadata.namespace
    return k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
        involved_object=k8s.V1ObjectReference(
            api_version="v1", kind="Pod", name=name, namespace=namespace, uid=metadata.uid
        ),
        reason=reason,
        message=message,
        type="Normal",
        source=k8s.V1EventSource(component="fedagg"),
        reporting_component="fedagg",
        reporting_instance=name,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )


def record_pod_event(
    configuration: Callable[[], k8s.Configuration],
    pod: str,
    namespace: str,
    reason: str,
    message: str,
    timeout: float,
) -> None:
    """Post :func:`pod_event` on the pod ``namespace/pod`` (blocking: call off the event loop)."""
    limit = (timeout / 2, timeout / 2)
    settings = configuration()
    settings.retries = False
    with k8s.ApiClient(settings) as api_client:
        api = k8s.CoreV1Api(api_client)
        found = api.read_namespaced_pod(pod, namespace, _request_timeout=limit)
        api.create_namespaced_event(namespace, pod_event(found, reason, message), _request_timeout=limit)
