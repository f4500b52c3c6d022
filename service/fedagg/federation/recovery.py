"""Start-up: find the newest state that verifies, repairing or quarantining what does not.

A restart looks at the current checkpoint, then at the previous round boundary's one. A checkpoint is usable when
its seal verifies and its round's model verifies against the digest it records; a kept model that is missing or
corrupt is restored from a published file with the same digest (``last.pbuf``, ``best.pbuf``) when one exists
(those are hard links to the kept models, so this repairs a deleted kept model, not a corrupt one).
Falling back to the previous checkpoint is safe because the spool of the round before the current one is kept:
the federation then redoes that round from its spool (:mod:`fedagg.federation.startup` replays it), with the
same close decision, the same aggregators' state and, under differential privacy, the same noise (drawn from the
experiment seed kept in the state directory, the task and the round: :mod:`fedagg.federation.aggregators.noise`),
which gives the same model bit for bit. The best and last models the checkpoint names are published again when
the published files are not those models (a crash between a round's commit and its publication). What cannot be used is moved to ``quarantine/`` and reported; when nothing
verifies, the start fails with one message that says what was found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedagg.federation.checkpoint import Checkpoint, ModelShape
from fedagg.federation.errors import FailedPrecondition
from fedagg.federation.integrity import CorruptFile, FileDigest
from fedagg.federation.metric_log import MetricRecord
from fedagg.federation.plan import FederationPlan
from fedagg.federation.published import ModelOutputs, PublishedModels
from fedagg.federation.store import ModelWriter, StateStore
from fedagg.protocol.model_file import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveredState:
    """A verified checkpoint with its kept models and the metric history of the rounds before it."""

    checkpoint: Checkpoint
    models: dict[int, LoadedModel]
    history: list[MetricRecord]


class StateRecovery:
    """Finds the state to resume from (module docstring)."""

    def __init__(
        self,
        plan: FederationPlan,
        store: StateStore,
        outputs: ModelOutputs,
        initial_model: LoadedModel | None,
        initial_model_digest: FileDigest | None = None,
    ) -> None:
        self._plan = plan
        self._store = store
        self._outputs = outputs
        self._initial_model = initial_model
        self._initial_model_digest = initial_model_digest

    def recover(self) -> RecoveredState:
        """The newest usable state, or a fresh one from the initial model; raise when there is none."""
        problems: list[str] = []
        found_any = False
        for candidate in self._store.checkpoints():
            found_any = True
            checkpoint = candidate.checkpoint
            if checkpoint is None:
                problems.append(candidate.problem)
                self._store.quarantine(candidate.path, candidate.problem, "checkpoint")
                continue
            if checkpoint.federation_uuid != self._plan.federation_uuid:
                raise FailedPrecondition(
                    f"the state directory {self._store.root} belongs to federation "
                    f"{checkpoint.federation_uuid!r}, not {self._plan.federation_uuid!r}"
                )
            models = self._load_models(checkpoint, problems)
            if models is None:
                self._store.quarantine(
                    candidate.path, f"its round {checkpoint.round_number} model is unusable", "checkpoint"
                )
                continue
            history = [
                MetricRecord.from_json(item) for item in self._store.load_metrics(checkpoint.round_number)
            ]
            log.info("restored checkpoint %s: round %d", candidate.path.name, checkpoint.round_number)
            self._compare_initial_model(checkpoint)
            PublishedModels(self._store, self._outputs).restore(checkpoint)
            return RecoveredState(checkpoint, models, history)
        if found_any:
            raise FailedPrecondition(
                f"no usable checkpoint in {self._store.root}: {'; '.join(problems)}. Restore the state "
                "directory from a backup, or start over with an empty one"
            )
        return self._start_fresh()

    def _compare_initial_model(self, checkpoint: Checkpoint) -> None:
        configured, started_from = self._initial_model_digest, checkpoint.initial_model
        if configured is not None and started_from is not None and configured != started_from:
            log.warning(
                "federation.initial_model is not the model this state directory started from: the state directory "
                "wins and the federation resumes at round %d. To start over from the new model, stop fedagg and "
                "empty storage.state_dir (%s)",
                checkpoint.round_number,
                self._store.root,
            )

    def _start_fresh(self) -> RecoveredState:
        model = self._initial_model
        if model is None:
            raise FailedPrecondition("no checkpoint in the state directory and no initial model configured")
        if model.round_number < 0:
            raise FailedPrecondition(
                f"the initial model's round_number is {model.round_number}, expected >= 0"
            )
        first = 0 if self._plan.evaluation else model.round_number
        if first:
            log.info("initial model is from round %d: resuming there", first)

        def write(writer: ModelWriter) -> None:
            for name, values in model.tensors.items():
                writer.add(name, values)

        digest = self._store.write_model(first, write)
        checkpoint = Checkpoint(
            self._plan.federation_uuid,
            first,
            first,
            models=((first, digest),),
            initial_model=self._initial_model_digest,
            initial_shape=ModelShape.of(model.tensors),
        )
        self._store.save_checkpoint(checkpoint, new_round=True)
        return RecoveredState(checkpoint, {first: self._store.load_model(first, digest)}, [])

    def _load_models(self, checkpoint: Checkpoint, problems: list[str]) -> dict[int, LoadedModel] | None:
        models: dict[int, LoadedModel] = {}
        for number, digest in checkpoint.models:
            model = self._load_model(checkpoint, number, digest)
            if model is not None:
                models[number] = model
            elif number == checkpoint.round_number:
                problems.append(f"round {number}'s model does not match checkpoint {checkpoint.round_number}")
                return None
        for slot in checkpoint.slots:
            try:
                self._store.load_slot(slot.task, slot.slot, checkpoint.round_number, slot.digest).release()
            except (CorruptFile, OSError) as error:
                problems.append(f"task {slot.task!r}'s aggregator state {slot.slot!r} is unusable ({error})")
                path = self._store.slot_path(slot.task, slot.slot, checkpoint.round_number)
                if path.exists():
                    self._store.quarantine(path, str(error), "model")
                return None
        return models

    def _load_model(self, checkpoint: Checkpoint, number: int, digest: FileDigest) -> LoadedModel | None:
        try:
            return self._store.load_model(number, digest)
        except (CorruptFile, OSError) as error:
            problem = str(error)
        path = self._store.model_path(number)
        if path.exists():
            self._store.quarantine(path, problem, "model")
        copies = [
            published
            for published, published_round in (
                (self._outputs.last, checkpoint.last_round),
                (self._outputs.best, checkpoint.best_round),
            )
            if published_round == number
        ]
        restored = self._store.restore_model(number, digest, copies)
        if restored is not None:
            log.warning("round %d's model restored from %s", number, restored.name)
            return self._store.load_model(number, digest)
        log.error("round %d's model is lost (%s)", number, problem)
        return None
