"""A benchmark client process: K collaborators on threads, fedagg's client library (``fedagg.collaborator``).

``python -m bench.fedagg_worker SPEC.json`` where the JSON object holds:

* ``address``, ``names`` (the collaborators this process runs), ``pki`` (the directory of
  ``write_federation_pki``, or null for plaintext), ``shapes`` (``{name: [dims]}``), ``out`` (a JSON file);
* ``mode``: ``train`` runs :class:`fedagg.collaborator.Collaborator` until the quit job, recording when each
  call started and ended (wall clock); ``poll`` connects every collaborator, then calls GetTasks in a loop for
  ``seconds`` and records how many calls each thread made.
* ``ready_fd``, ``go_fd``: the barrier (bench/clients.py): once its collaborators are ready the process writes a
  byte to ``ready_fd``, then starts when ``go_fd`` reaches its end, so that every process starts together.
* ``spread`` (optional, ``train``): above 0, each collaborator's update is ``1 + spread * N(0, 1)`` per value,
  seeded by its name and the round, so that every collaborator uploads a distinct model (default: exactly 1).

The output JSON is ``{"calls": {name: [[call, round, started, ended], ...]}, "peak_rss_mib": VmHWM,
"cpu_seconds": user + system, "page_faults": minor page faults}`` (``train``; ``call`` one of
``get_tasks``, ``get_tensor``, ``send_results``; ``round`` -1 for a GetTasks reply without tasks; a
``send_results`` entry has a fifth time, when its last chunk went to gRPC: the rest is the server's work) or
``{"polls": {name: count}, "errors": [...]}`` (``poll``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.procfs import status
from bench.servers import AGGREGATOR_UUID, FEDERATION_UUID
from fedagg.collaborator import AggregatorClient, ClientTls, Collaborator, OutgoingTensor, TaskOutput
from fedagg.collaborator.client import TasksReply
from fedagg.collaborator.runner import Weights
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import Float32Array


class TimedClient(AggregatorClient):
    """fedagg's client; every call's start and end go to :attr:`calls`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[Any]] = []
        self._sent = 0.0

    def get_tasks(self) -> TasksReply:
        started = time.time()
        reply = super().get_tasks()
        self.calls.append(["get_tasks", reply.round_number if reply.tasks else -1, started, time.time()])
        return reply

    def get_aggregated_tensor(
        self, name: str, round_number: int, tags: Sequence[str], require_lossless: bool = True
    ) -> Float32Array:
        started = time.time()
        values = super().get_aggregated_tensor(name, round_number, tags, require_lossless)
        self.calls.append(["get_tensor", round_number, started, time.time()])
        return values

    def send_task_results(
        self,
        round_number: int,
        task_name: str,
        data_size: int,
        tensors: Sequence[OutgoingTensor | base_pb2.NamedTensor],
    ) -> None:
        started = time.time()
        super().send_task_results(round_number, task_name, data_size, tensors)
        self.calls.append(["send_results", round_number, started, time.time(), self._sent])

    def _upload_messages(
        self, results: aggregator_pb2.TaskResults, tensors: Sequence[OutgoingTensor | base_pb2.NamedTensor]
    ) -> Iterator[bytes]:
        yield from super()._upload_messages(results, tensors)
        self._sent = time.time()  # gRPC asks for the next message once the last one is written


class AddOne:
    """A task runner with no data: training adds 1 to every weight (plus Gaussian noise of ``spread``, seeded by
    ``seed`` and the round) in the collaborator's own buffers, validation reports the first value."""

    def __init__(self, names: tuple[str, ...], spread: float = 0.0, seed: int = 0) -> None:
        self.names = names
        self.spread = spread
        self.seed = seed

    def weight_names(self) -> tuple[str, ...]:
        return self.names

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        rng = np.random.default_rng([self.seed, round_number])
        trained = {}
        for name, values in weights.items():
            trained[name] = values if values.flags.writeable else values.copy()  # in place: one model held
            trained[name] += np.float32(1)
            if self.spread:
                trained[name] += np.float32(self.spread) * rng.standard_normal(values.shape, np.float32)
        return TaskOutput({"loss": 1.0 / (round_number + 1)}, 10, trained)

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        first = next(iter(weights.values()), np.zeros(1, np.float32))
        return TaskOutput({"acc": float(first.reshape(-1)[0])}, 5)


def client(spec: dict[str, Any], name: str) -> TimedClient:
    tls = None
    if spec["pki"]:
        directory = Path(spec["pki"]) / "collaborators" / name
        tls = ClientTls(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    return TimedClient(spec["address"], name, AGGREGATOR_UUID, FEDERATION_UUID, tls=tls)


def barrier(spec: dict[str, Any]) -> None:
    """Tell the benchmark this process is ready, and return once every worker is (bench/clients.py)."""
    os.write(spec["ready_fd"], b"r")
    os.close(spec["ready_fd"])
    while os.read(spec["go_fd"], 1):
        pass
    os.close(spec["go_fd"])


def train(spec: dict[str, Any]) -> dict[str, Any]:
    names = tuple(spec["shapes"])
    calls: dict[str, list[list[Any]]] = {}
    errors: list[str] = []

    def run(name: str) -> None:
        with client(spec, name) as connection:
            try:
                Collaborator(
                    connection, AddOne(names, spec.get("spread", 0.0), zlib.crc32(name.encode()))
                ).run()
            except Exception as error:
                errors.append(f"{name}: {error!r}")
            calls[name] = connection.calls

    barrier(spec)
    threads = [threading.Thread(target=run, args=(name,)) for name in spec["names"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "calls": calls,
        "errors": errors,
        "peak_rss_mib": status(os.getpid())["VmHWM"],
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "page_faults": usage.ru_minflt,
    }


def poll(spec: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    errors: list[str] = []
    connections = {name: client(spec, name) for name in spec["names"]}
    for connection in connections.values():
        connection.get_tasks()  # connected, TLS handshake done
    go = threading.Event()

    def run(name: str) -> None:
        connection = connections[name]
        go.wait()
        deadline = time.monotonic() + spec["seconds"]
        count = 0
        try:
            while time.monotonic() < deadline:
                connection.get_tasks()
                count += 1
        except Exception as error:
            errors.append(f"{name}: {error!r}")
        counts[name] = count

    threads = [threading.Thread(target=run, args=(name,)) for name in spec["names"]]
    for thread in threads:
        thread.start()
    barrier(spec)
    go.set()
    for thread in threads:
        thread.join()
    for connection in connections.values():
        connection.close()
    return {"polls": counts, "errors": errors}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = train(spec) if spec["mode"] == "train" else poll(spec)
    Path(spec["out"]).write_text(json.dumps(result) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
