"""What a configuration needs: the state volume and the memory, from the model's size and the collaborators.

The disk rule follows what the state directory holds at its fullest (:mod:`fedagg.federation.store`), which is
during a round end, after the new model is written and before the previous round's files are pruned:

- ``models/``: the ``rounds_kept`` kept global models plus the new one (``rounds_kept + 1``);
- ``best.pbuf`` and ``last.pbuf``: hard links to kept models (:mod:`fedagg.federation.published`), but a model
  that is no longer kept lives on as the published best; and where links cannot be made they are copies, one being
  written in their place (3 at most; delta downloads are computed from the kept models when they are served, no
  delta file is kept);
- ``spool/``: the uploads of the closing round and of the round before it, kept for the fall-back to the previous
  checkpoint (``2 x N`` uploads; an upload of a train task is about one model); the files of a dropped round
  waiting to be written over by the next uploads (:mod:`fedagg.federation.file_pool`) stand in for uploads of the
  open round, so they stay within it;
- the fold's running float64 sums (:mod:`fedagg.federation.fold`): an unlinked scratch file beside the spool of
  8 bytes per value, so two model-sized files for every train task aggregated by the weighted average (``2 x F``);
- ``aggregators/``: an adaptive aggregation's moments (model-sized ``slots``: 1 for adagrad, 2 for adam and
  yogi), for every kept round plus the new one (``(rounds_kept + 1) x slots``);
- small files: the checkpoints, the close decisions and rejection records, and the metrics of every round.

So the peak is ``(rounds_kept + 4 + 2 x N + 2 x F + (rounds_kept + 1) x slots) x M`` plus the small files, with ``M``
the model's size (its .pbuf). The memory rule is the chart's (helm/fedagg/README.md, Sizing), measured by
tests/integration/test_memory_rss.py and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedagg.federation.aggregators.elementwise import sums_by_weight
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.plan import FederationPlan
from fedagg.protocol.model_file import read_model

MIB = 1 << 20
SMALL_FILES_BYTES = 1 * MIB
"""The checkpoints, close decisions and rejection records, and a round's metrics: well under this."""
METRICS_BYTES_PER_UPLOAD = 4096
"""One round's metric records of one collaborator, kept for every round (a few records of a few hundred bytes)."""
BASE_MEMORY_BYTES = 224 * MIB
"""The process with its libraries, the round end's block budget and the tensor replies in flight."""
MEMORY_PER_UPLOAD_BYTES = 8 * MIB
"""One upload in flight: its 2 MiB message and up to 4 MiB of gRPC's stream window, with margin."""
LARGE_TENSOR_BYTES = 32 * MIB
"""A tensor larger than the reply budget goes alone; with gRPC's copy it costs twice its size."""


@dataclass(frozen=True)
class Sizing:
    """What a configuration needs for a model of ``model_bytes``, with ``collaborators`` uploading."""

    model_bytes: int
    largest_tensor_bytes: int
    collaborators: int
    rounds_kept: int
    rounds: int
    slots: int
    """Model-sized aggregator state files per round, over every task (an adaptive optimizer's moments)."""
    folded_tasks: int
    """Train tasks whose weighted sums are folded as uploads arrive (each keeps float64 sums: two models' size)."""

    @property
    def models_on_disk(self) -> int:
        """How many model-sized files the state directory holds at its fullest."""
        return (
            self.rounds_kept
            + 4
            + 2 * self.collaborators
            + 2 * self.folded_tasks
            + (self.rounds_kept + 1) * self.slots
        )

    @property
    def disk_bytes(self) -> int:
        """The state directory's peak size (see the module's docstring)."""
        metrics = METRICS_BYTES_PER_UPLOAD * self.collaborators * self.rounds
        return self.models_on_disk * self.model_bytes + SMALL_FILES_BYTES + metrics

    @property
    def memory_request_bytes(self) -> int:
        """The memory request: a base, per collaborator uploading at once, and twice a tensor above 32 MiB."""
        large = 2 * self.largest_tensor_bytes if self.largest_tensor_bytes > LARGE_TENSOR_BYTES else 0
        return BASE_MEMORY_BYTES + MEMORY_PER_UPLOAD_BYTES * self.collaborators + large

    @property
    def memory_limit_bytes(self) -> int:
        """The memory limit: twice the request plus the model (mapped model pages, reclaimable)."""
        return 2 * self.memory_request_bytes + self.model_bytes

    def describe(self) -> str:
        """One paragraph for ``fedagg config check``."""
        return (
            f"needs: state volume >= {_mib(self.disk_bytes)} (about {_mib(int(self.disk_bytes * 1.2))} with 20 % "
            f"headroom) = ({self.models_on_disk} model-sized files: {self.rounds_kept} rounds kept + 4 + "
            f"2 x {self.collaborators} collaborators' uploads + 2 x {self.folded_tasks} folded sums + "
            f"{self.rounds_kept + 1} x {self.slots} optimizer slots) x {_mib(self.model_bytes)} + small files; memory request {_mib(self.memory_request_bytes)}, "
            f"limit {_mib(self.memory_limit_bytes)} (all {self.collaborators} collaborators uploading at once)"
        )

    def to_json(self) -> dict[str, int | str]:
        """The ``sizing`` object of ``fedagg config check -o json`` (``summary``: the text output's line)."""
        return {
            "summary": self.describe(),
            "model_bytes": self.model_bytes,
            "model_sized_files": self.models_on_disk,
            "disk_bytes": self.disk_bytes,
            "memory_request_bytes": self.memory_request_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


def plan_sizing(plan: FederationPlan, model: Path) -> Sizing:
    """What ``plan`` needs with the model file ``model`` (its tensors, float32)."""
    loaded = read_model(model)
    try:
        tensor_bytes = [int(values.nbytes) for values in loaded.tensors.values()]
        loaded_names = tuple(loaded.tensors)
    finally:
        loaded.release()
    aggregators = TaskAggregators(plan)
    return Sizing(
        model_bytes=model.stat().st_size,
        largest_tensor_bytes=max(tensor_bytes),
        collaborators=len(plan.collaborators),
        rounds_kept=plan.rounds_kept,
        rounds=plan.rounds_to_train,
        slots=sum(len(aggregators[task].slots) for task in plan.tasks),
        folded_tasks=sum(
            1
            for name, task in plan.tasks.items()
            if task.task_type == "train"
            and any(sums_by_weight(aggregators[name], tensor) for tensor in loaded_names)
        ),
    )


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"
