"""kmock's Kubernetes API emulator on loopback, in a background event loop (no real API server can run here)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kmock
from kubernetes import client as k8s

NAMESPACE = "federation"
POD = "fedagg-0"
POD_UID = "6a1c5c8e-0000-4000-8000-000000000001"


class KubernetesApi:
    """A running emulator with one aggregator pod."""

    def __init__(self, emulator: kmock.KubernetesEmulator, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.emulator = emulator
        self.url = url.rstrip("/")
        self.loop = loop

    def configuration(self) -> Callable[[], k8s.Configuration]:
        return lambda: k8s.Configuration(host=self.url)

    def requests(self, method: str, path_suffix: str) -> list[Any]:
        """Requests the emulator received with ``method`` on a path ending in ``path_suffix``."""
        return [
            r for r in list(self.emulator) if r.method.value == method and str(r.url).endswith(path_suffix)
        ]

    def refuse(self, method: str, path: str, status: int) -> None:
        """Answer ``method path`` with ``status`` from now on (e.g. 403 as RBAC would)."""

        async def install() -> None:
            self.emulator[f"{method.lower()} {path}"] << status

        asyncio.run_coroutine_threadsafe(install(), self.loop).result(10)


@contextmanager
def kubernetes_api() -> Iterator[KubernetesApi]:
    """Start the emulator and create the aggregator's pod in it."""
    started = threading.Event()
    stop: dict[str, Any] = {}

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            stop["event"] = asyncio.Event()
            stop["api"] = KubernetesApi(emulator, str(server.url), asyncio.get_running_loop())
            started.set()
            await stop["event"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert started.wait(30)
    api: KubernetesApi = stop["api"]
    with k8s.ApiClient(api.configuration()()) as client:
        k8s.CoreV1Api(client).create_namespaced_pod(
            NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": POD, "namespace": NAMESPACE, "uid": POD_UID},
                "spec": {"containers": [{"name": "fedagg", "image": "fedagg"}]},
            },
        )
    try:
        yield api
    finally:
        api.loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers (an API server that hangs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
