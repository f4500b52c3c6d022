"""``Collaborator``: OpenFL's collaborator loop (spec §4) around a :class:`TaskRunner`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedagg.collaborator.client import AggregatorClient
from fedagg.collaborator.runner import TaskOutput, TaskRunner, Weights
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import Float32Array, encode_tensor

log = logging.getLogger(__name__)

MODEL_TAGS = ("model",)
DELTA_TAGS = ("aggregated", "delta", "compressed")


@dataclass(frozen=True)
class TaskEvent:
    """Progress reported to an optional observer (the demo's live display)."""

    collaborator: str
    round_number: int
    task: str
    metrics: dict[str, float]


class Collaborator:
    """Runs tasks from the aggregator until told to quit.

    ``delta_updates`` sends trained weights as differences from the round's global model (OpenFL's
    ``delta_updates``) and fetches later models as deltas when the previous one is cached.
    """

    def __init__(
        self,
        client: AggregatorClient,
        runner: TaskRunner,
        *,
        delta_updates: bool = False,
        max_sleep_seconds: float | None = None,
        on_task_done: Callable[[TaskEvent], None] | None = None,
    ) -> None:
        self.client = client
        self.runner = runner
        self.delta_updates = delta_updates
        self._max_sleep = max_sleep_seconds
        self._on_task_done = on_task_done or (lambda _event: None)
        self._global: dict[int, dict[str, Float32Array]] = {}
        self._local: Weights = {}
        self.rounds_completed = 0

    def run(self) -> None:
        """Loop on GetTasks until the quit job."""
        while True:
            reply = self.client.get_tasks()
            if reply.quit:
                log.info("%s: quit received at round %d", self.client.collaborator, reply.round_number)
                return
            if not reply.tasks:
                time.sleep(min(reply.sleep_seconds, self._max_sleep or reply.sleep_seconds))
                continue
            for task in reply.tasks:
                self._run_task(task, reply.round_number)
            self.rounds_completed += 1
            self._forget_rounds_before(reply.round_number)

    def _run_task(self, task: aggregator_pb2.Task, round_number: int) -> None:
        kind = task.task_type or ("train" if "train" in task.name else "validate")
        local = task.apply_local or (not task.task_type and "local" in task.name)
        if kind == "train":
            model = self.global_model(round_number)
            output = self.runner.train(model, round_number)
            self._local = output.weights
            tensors = self._trained_tensors(output, model, round_number)
            metric_tags: tuple[str, ...] = ("metric",)
        else:
            weights = self._local if local else self.global_model(round_number)
            output = self.runner.validate(weights, round_number)
            tensors = []
            metric_tags = ("metric", "validate_local" if local else "validate_agg")
        tensors += [
            encode_tensor(name, np.float32(value), round_number=round_number, tags=metric_tags, report=True)
            for name, value in output.metrics.items()
        ]
        self.client.send_task_results(round_number, task.name, output.data_size, tensors)
        self._on_task_done(TaskEvent(self.client.collaborator, round_number, task.name, dict(output.metrics)))

    def _trained_tensors(
        self, output: TaskOutput, model: Weights, round_number: int
    ) -> list[base_pb2.NamedTensor]:
        tensors = []
        for name, values in output.weights.items():
            if self.delta_updates and name in model:
                delta = np.subtract(values, model[name], dtype=np.float32)
                tensors.append(
                    encode_tensor(
                        name, delta, round_number=round_number, tags=("trained", "delta"), lossless=False
                    )
                )
            else:
                tensors.append(encode_tensor(name, values, round_number=round_number, tags=("trained",)))
        return tensors

    def global_model(self, round_number: int) -> dict[str, Float32Array]:
        """The round's global model, fetched once per round (as deltas when the last round's is cached)."""
        cached = self._global.get(round_number)
        if cached is not None:
            return cached
        previous = self._global.get(round_number - 1)
        model = {}
        for name in self.runner.weight_names():
            if self.delta_updates and previous is not None and name in previous:
                delta = self.client.get_aggregated_tensor(
                    name, round_number, DELTA_TAGS, require_lossless=False
                )
                model[name] = np.add(previous[name], delta, dtype=np.float32)
            else:
                model[name] = self.client.get_aggregated_tensor(name, round_number, MODEL_TAGS)
        self._global[round_number] = model
        return model

    def _forget_rounds_before(self, round_number: int) -> None:
        for old in [number for number in self._global if number < round_number]:
            del self._global[old]
