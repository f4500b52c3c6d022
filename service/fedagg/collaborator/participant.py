"""``Collaborator``: OpenFL's collaborator loop (spec §4) around a :class:`TaskRunner`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from fedagg.collaborator.client import AggregatorClient
from fedagg.collaborator.memory import release_freed_memory
from fedagg.collaborator.runner import TaskOutput, TaskRunner, Weights
from fedagg.collaborator.transfer import OutgoingTensor
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.codec import Float32Array

log = logging.getLogger(__name__)

MODEL_TAGS = ("model",)
DELTA_TAGS = ("aggregated", "delta", "compressed")
SPARE_BYTES = 64 * 2**20
"""Default of ``Collaborator(spare_bytes=...)``: a tensor up to this size is received beside its array and copied
into it (memory pages reused: faster); a larger one's array is released first (one tensor less at the peak)."""


@dataclass(frozen=True)
class TaskEvent:
    """Progress reported to an optional observer (the demo's live display)."""

    collaborator: str
    round_number: int
    task: str
    metrics: dict[str, float]


class Collaborator:
    """Runs tasks from the aggregator until told to quit.

    The global model is held once, in the collaborator's own arrays (the buffers), which the runner is given. It
    is downloaded tensor by tensor, each reply copied once (from the bytes gRPC hands over) and dropped, and the
    allocator's free pages go back to the system. A tensor of at most ``spare_bytes`` is copied into the array it
    already has: the same arrays and memory pages round after round, no page touched fresh (arrays the runner kept
    see the new values). A larger tensor's old array is released before its reply arrives, and the reply copied
    into a new one. While a reply arrives gRPC holds it three times over (its slices, their copies, the joined
    bytes): a runner that trains in the buffers and returns them makes a round cost the model plus two tensors,
    plus one more for a tensor received beside its array. Uploads stream from the returned arrays, one 2 MiB
    message at a time.

    ``delta_updates`` sends trained weights as differences from the round's global model (OpenFL's
    ``delta_updates``) and fetches the next model as a delta added into the buffers. The buffers must then
    keep the global model while the runner trains, so the runner gets read-only views of them and returns new
    arrays (two models of memory, as in OpenFL).
    """

    def __init__(
        self,
        client: AggregatorClient,
        runner: TaskRunner,
        *,
        delta_updates: bool = False,
        max_sleep_seconds: float | None = None,
        on_task_done: Callable[[TaskEvent], None] | None = None,
        spare_bytes: int = SPARE_BYTES,
    ) -> None:
        self.client = client
        self.runner = runner
        self.delta_updates = delta_updates
        self.spare_bytes = spare_bytes
        self._max_sleep = max_sleep_seconds
        self._on_task_done = on_task_done or (lambda _event: None)
        self._buffers: dict[str, Float32Array] = {}
        self._buffers_round: int | None = None
        """The round whose global model the buffers hold; None when they hold none (not fetched yet, a fetch
        failed half-way, or the runner trained in them)."""
        self._local: Weights = {}
        self._local_round: int | None = None
        """The round :attr:`_local` (the runner's trained weights) was trained in."""
        self._scratch = np.empty(0, np.float32)
        """One tensor's delta while it uploads (reused, grown to the largest tensor)."""
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

    def _run_task(self, task: aggregator_pb2.Task, round_number: int) -> None:
        kind = task.task_type or ("train" if "train" in task.name else "validate")
        local = task.apply_local or (not task.task_type and "local" in task.name)
        if kind == "train":
            model = self.global_model(round_number)
            output = self.runner.train(model, round_number)
            self._local, self._local_round = output.weights, round_number
            if not self.delta_updates and any(
                name in self._buffers and np.may_share_memory(values, self._buffers[name])
                for name, values in output.weights.items()
            ):
                self._buffers_round = None  # trained in place: the buffers no longer hold the global model
            tensors = self._trained_tensors(output, round_number)
            metric_tags: tuple[str, ...] = ("metric",)
        else:
            weights = self._local if local else self.global_model(round_number)
            output = self.runner.validate(weights, round_number)
            tensors = []
            metric_tags = ("metric", "validate_local" if local else "validate_agg")
        tensors += [
            OutgoingTensor.of(
                name, np.float32(value), round_number=round_number, tags=metric_tags, report=True
            )
            for name, value in output.metrics.items()
        ]
        self.client.send_task_results(round_number, task.name, output.data_size, tensors)
        self._on_task_done(TaskEvent(self.client.collaborator, round_number, task.name, dict(output.metrics)))

    def _trained_tensors(self, output: TaskOutput, round_number: int) -> list[OutgoingTensor]:
        tensors = []
        for name, values in output.weights.items():
            if self.delta_updates and name in self._buffers:
                tensors.append(
                    OutgoingTensor.of(
                        name,
                        partial(self._delta, values, self._buffers[name]),
                        round_number=round_number,
                        tags=("trained", "delta"),
                        lossless=False,
                    )
                )
            else:
                tensors.append(OutgoingTensor.of(name, values, round_number=round_number, tags=("trained",)))
        return tensors

    def _delta(self, trained: Float32Array, base: Float32Array) -> Float32Array:
        """``trained - base`` in the scratch array (valid until the next delta)."""
        if self._scratch.size < base.size:
            self._scratch = np.empty(base.size, np.float32)
        delta = self._scratch[: base.size].reshape(base.shape)
        np.subtract(trained, base, out=delta, dtype=np.float32)
        return delta

    def global_model(self, round_number: int) -> Weights:
        """The round's global model, fetched once per round (as deltas when the buffers hold the last round's).

        The buffers themselves, or read-only views of them with ``delta_updates``."""
        if self._buffers_round != round_number:
            previous, self._buffers_round = self._buffers_round, None
            if self._local_round != round_number:
                self._local = {}  # an earlier round's: may hold the buffers, which must be freed while fetching
            for name in self.runner.weight_names():
                if self.delta_updates and previous == round_number - 1 and name in self._buffers:
                    delta = self.client.get_aggregated_tensor(
                        name, round_number, DELTA_TAGS, require_lossless=False
                    )
                    np.add(self._buffers[name], delta, out=self._buffers[name])
                    del delta
                    release_freed_memory(self._buffers[name].nbytes)
                else:
                    self._fetch(name, round_number)
            self._buffers_round = round_number
        if not self.delta_updates:
            return self._buffers
        return {name: _read_only(values) for name, values in self._buffers.items()}

    def _fetch(self, name: str, round_number: int) -> None:
        # While a reply arrives gRPC holds it about three times over (its slices, their copies, the joined bytes).
        # A large tensor's old values go first, so that the model is held once beside that; a small one's stay,
        # to be overwritten.
        held = self._buffers.get(name)
        if held is not None and held.nbytes > self.spare_bytes:
            del self._buffers[name]
            held = None
        reply = self.client.get_aggregated_tensor(name, round_number, MODEL_TAGS)
        if held is not None and held.shape == reply.shape and held.flags.writeable:
            np.copyto(held, reply)
        else:
            self._buffers[name] = reply.copy()
        del reply
        release_freed_memory(self._buffers[name].nbytes)


def _read_only(values: Float32Array) -> Float32Array:
    view = values.view()
    view.flags.writeable = False
    return view
