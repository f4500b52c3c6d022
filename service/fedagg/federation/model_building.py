"""Building the next round's model from the counted contributions: one aggregator per task, block by block.

Each plan task has an :class:`~fedagg.federation.aggregators.Aggregator` (the plan's method, with optional update
clipping and differential privacy) kept for the whole experiment: its small state (step counts, an adaptive
clipping norm) is committed with every checkpoint, its model-sized state (an optimizer's moments) in slot files
written with the round. A tensor belongs to the first task, in plan order, whose results carry it; the next model
holds every tensor of this round's model (aggregated where contributed, carried over otherwise) plus the tensors
of this round's results that :mod:`fedagg.federation.model_shape` lets join it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fedagg.federation.aggregators import Aggregator, Emit, RoundInputs, TensorInputs
from fedagg.federation.aggregators.base import FoldedPrefix, block_elements_for, blocks
from fedagg.federation.aggregators.registry import make_aggregator
from fedagg.federation.checkpoint import Checkpoint, SlotDigest
from fedagg.federation.collected import CollectedInputs
from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.files import atomic_file
from fedagg.federation.model_shape import model_growth
from fedagg.federation.plan import FederationPlan
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.sources import ModelValues, TensorSource, uploaded_values
from fedagg.federation.store import ModelWriter, StateStore
from fedagg.protocol.codec import Float32Array, Shape
from fedagg.protocol.model_file import LoadedModel

log = logging.getLogger(__name__)

Prefixes = Callable[[str, str, list[tuple[str, float]]], FoldedPrefix | None]
"""(task, tensor, the round end's (collaborator, weight) order) -> the sum folded so far, if it is a prefix."""


class TaskAggregators:
    """The aggregator of every plan task, for the whole experiment (used under the federation's commit lock)."""

    def __init__(self, plan: FederationPlan) -> None:
        self._by_task = {
            name: make_aggregator(task.aggregation, f"tasks.{name}") for name, task in plan.tasks.items()
        }

    def __getitem__(self, task: str) -> Aggregator:
        return self._by_task[task]

    def saved(self) -> str:
        """Every aggregator's small state, as canonical JSON (what a checkpoint records)."""
        return json.dumps({task: dict(a.save()) for task, a in self._by_task.items()}, sort_keys=True)

    def load(self, saved: str) -> None:
        """Take back :meth:`saved` (after a restart, or to undo a round end that did not commit)."""
        state: dict[str, Any] = json.loads(saved) if saved else {}
        for task, aggregator in self._by_task.items():
            aggregator.load(state.get(task, {}))

    def clip_norms(self) -> dict[str, float]:
        """The norm each task's contributions are clipped to in the next round end, for the tasks that clip them."""
        return {task: norm for task, a in self._by_task.items() if (norm := a.clip_norm()) is not None}

    def reports(self) -> dict[str, dict[str, float]]:
        """What each aggregator reports after the last round (epsilon, clipping norm, ...)."""
        return {task: dict(report) for task, a in self._by_task.items() if (report := a.report())}


@dataclass(frozen=True)
class BuiltModel:
    """What building the next model wrote besides the model itself."""

    slots: tuple[SlotDigest, ...]


class _SlotState:
    """An aggregator's model-sized state for one round: the previous round's slot files in, this round's out."""

    def __init__(
        self,
        store: StateStore,
        task: str,
        next_round: int,
        previous: Mapping[str, LoadedModel],
        files: contextlib.ExitStack,
    ) -> None:
        self._store = store
        self._task = task
        self._next_round = next_round
        self._previous = previous
        self._files = files
        self._writers: dict[str, tuple[ModelWriter, Path]] = {}

    def previous(self, slot: str, tensor: str) -> TensorSource | None:
        model = self._previous.get(slot)
        return None if model is None or tensor not in model.tensors else ModelValues(model, tensor)

    def write(self, slot: str, tensor: str, shape: Shape) -> Emit:
        if slot not in self._writers:
            path = self._store.slot_path(self._task, slot, self._next_round)
            file: BinaryIO = self._files.enter_context(atomic_file(path))
            self._writers[slot] = (ModelWriter(file, self._next_round), path)
        writer = self._writers[slot][0]
        writer.begin(tensor, shape)
        return writer.write

    def carry_forward(self) -> None:
        """Copy the previous round's slot values of every tensor this round did not write (a tensor, or the whole
        task, that was not aggregated keeps its optimizer state rather than starting over)."""
        for slot, model in self._previous.items():
            written = self._writers[slot][0].names if slot in self._writers else []
            for tensor in model.tensors:
                if tensor in written:
                    continue
                values = ModelValues(model, tensor)
                emit = self.write(slot, tensor, model.tensors[tensor].shape)
                for start, stop in blocks(values.size):
                    emit(values.block(start, stop))

    def digests(self) -> list[SlotDigest]:
        return [SlotDigest(self._task, slot, writer.finish()) for slot, (writer, _) in self._writers.items()]

    def release(self) -> None:
        for model in self._previous.values():
            model.release()


class ModelBuilder:
    """Writes the next model of a round (module docstring)."""

    def __init__(self, plan: FederationPlan, store: StateStore, aggregators: TaskAggregators) -> None:
        self._plan = plan
        self._store = store
        self._aggregators = aggregators

    def build(
        self,
        round_: Round,
        uploads: list[AcceptedUpload],
        committed: Checkpoint,
        writer: ModelWriter,
        folded: Prefixes | None = None,
        collected: CollectedInputs | None = None,
    ) -> BuiltModel:
        """Stream the next model into ``writer``; slot files are committed with it (same ``with`` block).

        ``folded`` gives the sums folded while the uploads arrived (:mod:`fedagg.federation.fold`), if any;
        ``collected`` replaces ``uploads`` at a tier's root (tensors the round's model does not hold do not join).
        """
        if collected is None:
            inputs = self._task_inputs(round_, uploads, folded)
            joining = model_growth(round_, uploads).joining
            summed: dict[str, Float32Array] = {}
        else:
            inputs, joining, summed = collected.tasks, frozenset(), collected.summed
        owners = {tensor.name: task for task, task_inputs in inputs.items() for tensor in task_inputs.tensors}
        with contextlib.ExitStack() as files:
            stateful = {*inputs, *(slot.task for slot in committed.slots)}
            states = {task: self._state(task, round_.number, committed, files) for task in stateful}
            try:
                prepared = self._prepare(inputs, states)
                for name, values in round_.model.tensors.items():
                    task = owners.pop(name, None)
                    if name in summed:
                        writer.add(name, summed[name])
                    elif (
                        task is None or task not in prepared or not self._combine(inputs[task], name, writer)
                    ):
                        writer.add(name, values)
                for name, task in owners.items():
                    if task in prepared and name in joining:
                        self._combine(inputs[task], name, writer)
                for state in states.values():
                    state.carry_forward()
                slots = tuple(digest for state in states.values() for digest in state.digests())
            finally:
                for state in states.values():
                    state.release()
        return BuiltModel(slots)

    def _prepare(self, inputs: dict[str, RoundInputs], states: dict[str, _SlotState]) -> set[str]:
        prepared = set()
        for task, task_inputs in inputs.items():
            aggregator = self._aggregators[task]
            try:
                aggregator.prepare(task_inputs)
            except (
                ValueError
            ) as error:  # e.g. too few contributions for Bulyan: this task's tensors keep their values
                log.error("round %d: task %r cannot be aggregated: %s", task_inputs.round_number, task, error)
                continue
            if aggregator.slots:
                aggregator.bind_state(states[task])
            prepared.add(task)
        return prepared

    def _combine(self, inputs: RoundInputs, name: str, writer: ModelWriter) -> bool:
        tensor = next(tensor for tensor in inputs.tensors if tensor.name == name)
        began: list[bool] = []

        def emit(block: Float32Array) -> None:
            if not began:
                writer.begin(name, tensor.shape)
                began.append(True)
            writer.write(block)

        combined = self._aggregators[inputs.task].combine(tensor, emit)
        if combined and not began:  # an aggregate of an empty tensor
            writer.begin(name, tensor.shape)
        return combined

    def _state(
        self, task: str, round_number: int, committed: Checkpoint, files: contextlib.ExitStack
    ) -> _SlotState:
        previous = {}
        for slot_digest in committed.slots:
            if slot_digest.task == task:
                previous[slot_digest.slot] = self._store.load_slot(
                    task, slot_digest.slot, round_number, slot_digest.digest
                )
        return _SlotState(self._store, task, round_number + 1, previous, files)

    def _task_inputs(
        self, round_: Round, uploads: list[AcceptedUpload], folded: Prefixes | None
    ) -> dict[str, RoundInputs]:
        """Per task, the counted collaborators (plan order) and every tensor they sent; first task owns a name."""
        by_task: dict[str, list[AcceptedUpload]] = {}
        for upload in uploads:
            by_task.setdefault(upload.contribution.task, []).append(upload)
        owned: set[str] = set()
        inputs = {}
        for task, task_uploads in by_task.items():
            collaborators = tuple(upload.contribution.collaborator for upload in task_uploads)
            tensors: dict[str, list[tuple[int, AcceptedUpload, UploadedTensor]]] = {}
            for index, upload in enumerate(task_uploads):
                for tensor in upload.contribution.weights:
                    if tensor.name not in owned:
                        tensors.setdefault(tensor.name, []).append((index, upload, tensor))
            owned.update(tensors)
            inputs[task] = RoundInputs(
                round_.number,
                task,
                collaborators,
                tuple(
                    self._tensor_inputs(round_, task, name, entries, folded)
                    for name, entries in tensors.items()
                ),
            )
        return inputs

    def _tensor_inputs(
        self,
        round_: Round,
        task: str,
        name: str,
        entries: list[tuple[int, AcceptedUpload, UploadedTensor]],
        folded: Prefixes | None,
    ) -> TensorInputs:
        model = round_.model
        base = model.tensors.get(name)
        shape = base.shape if base is not None else entries[0][2].shape
        kept = []
        for index, upload, tensor in entries:
            if tensor.shape != shape:
                log.warning(
                    "round %d: %s's tensor '%s' has shape %s, the first contribution's is %s; left out of that "
                    "tensor's aggregate",
                    round_.number,
                    upload.contribution.collaborator,
                    name,
                    list(tensor.shape),
                    list(shape),
                )
                continue
            kept.append((index, upload, tensor))
        order = [(upload.contribution.collaborator, upload.contribution.weight) for _, upload, _ in kept]
        return TensorInputs(
            name,
            shape,
            tuple(index for index, _, _ in kept),
            tuple(uploaded_values(upload.entry.path, tensor, model) for _, upload, tensor in kept),
            tuple(upload.contribution.weight for _, upload, _ in kept),
            None if base is None else ModelValues(model, name),
            block_elements_for(self._plan.aggregation_bytes, len(kept)),
            None if folded is None or base is None else folded(task, name, order),
        )
