"""The workload both aggregators serve: K collaborators download a model, poll GetTasks, and upload results."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.servers import AGGREGATOR_UUID, FEDERATION_UUID
from fedagg.collaborator.client import CHUNK_BYTES
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, base_pb2
from fedagg.protocol.codec import encode_tensor

TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")
TENSORS = 4


def model_tensors(megabytes: int) -> dict[str, np.ndarray]:
    """A model of ``megabytes`` MiB of float32 in four tensors."""
    elements = megabytes * 2**20 // 4 // TENSORS
    return {f"layer{index}": np.zeros(elements, np.float32) for index in range(TENSORS)}


@dataclass
class Timings:
    """Wall-clock seconds of each phase, and GetTasks calls per second."""

    download: float = 0.0
    get_tasks_per_second: float = 0.0
    upload: float = 0.0


class BenchCollaborator:
    """One collaborator with pre-built uploads, so only the aggregator's work is timed."""

    def __init__(self, name: str, address: str, pki: Path, model: dict[str, np.ndarray]) -> None:
        self.name = name
        directory = pki / "collaborators" / name
        credentials = grpc.ssl_channel_credentials(
            (directory / "ca.crt").read_bytes(),
            (directory / "tls.key").read_bytes(),
            (directory / "tls.crt").read_bytes(),
        )
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.secure_channel(address, credentials, options)
        self.stub = aggregator_pb2_grpc.AggregatorStub(self.channel)
        self.header = aggregator_pb2.MessageHeader(
            sender=name, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
        )
        self.names = list(model)
        self.uploads = [self._chunks(task, model) for task in TASKS]

    def _chunks(self, task: str, model: dict[str, np.ndarray]) -> list[base_pb2.DataStream]:
        metric = encode_tensor(
            "acc" if "valid" in task else "loss",
            np.float32(0.5),
            round_number=0,
            tags=["metric", "validate_agg" if task == TASKS[0] else "validate_local"]
            if "valid" in task
            else ["metric"],
            report=True,
        )
        tensors = [metric]
        if task == "train":
            tensors += [
                encode_tensor(name, values + 1, round_number=0, tags=["trained"])
                for name, values in model.items()
            ]
        payload = aggregator_pb2.TaskResults(
            header=self.header, round_number=0, task_name=task, data_size=10, tensors=tensors
        ).SerializeToString()
        return [
            base_pb2.DataStream(npbytes=payload[start : start + CHUNK_BYTES], size=CHUNK_BYTES)
            for start in range(0, len(payload), CHUNK_BYTES)
        ]

    def get_tasks(self) -> aggregator_pb2.GetTasksResponse:
        return self.stub.GetTasks(aggregator_pb2.GetTasksRequest(header=self.header))

    def download(self) -> None:
        for name in self.names:
            self.stub.GetAggregatedTensor(
                aggregator_pb2.GetAggregatedTensorRequest(
                    header=self.header,
                    tensor_name=name,
                    round_number=0,
                    tags=["model"],
                    require_lossless=True,
                )
            )

    def upload(self) -> None:
        for chunks in self.uploads:
            self.stub.SendLocalTaskResults(iter(chunks))

    def poll(self, calls: int) -> None:
        for _ in range(calls):
            self.get_tasks()

    def quit(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.get_tasks().quit:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} got no quit job")
            time.sleep(0.2)
        self.channel.close()


def _together(collaborators: list[BenchCollaborator], work: Callable[[BenchCollaborator], object]) -> float:
    barrier = threading.Barrier(len(collaborators) + 1)

    def run(collaborator: BenchCollaborator) -> None:
        barrier.wait()
        work(collaborator)

    with ThreadPoolExecutor(len(collaborators)) as pool:
        futures = [pool.submit(run, collaborator) for collaborator in collaborators]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - started


def run_workload(collaborators: list[BenchCollaborator], polls: int) -> Timings:
    """Download, poll, upload (the last upload closes the round), then collect quit jobs."""
    timings = Timings()
    for collaborator in collaborators:
        collaborator.get_tasks()
    timings.download = _together(collaborators, BenchCollaborator.download)
    seconds = _together(collaborators, lambda c: c.poll(polls))
    timings.get_tasks_per_second = polls * len(collaborators) / seconds
    timings.upload = _together(collaborators, BenchCollaborator.upload)
    return timings
