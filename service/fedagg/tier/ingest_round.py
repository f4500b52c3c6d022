"""An ingest replica's round: acknowledged contributions spooled, claimed at the root, folded into the partial.

The order that makes an acknowledgement safe across replicas: **spool, claim, acknowledge, fold**. An upload is
acknowledged only once it is durable in this replica's spool *and* the root granted this replica its claim; a
claim the root gives to another replica means that one holds a durable copy, so this copy is deleted and the
upload answered OK (a duplicate, as a single pod answers it).

After a restart (:meth:`IngestRound.recover`) the replica has a new generation (:func:`next_generation`) and reads
its spool back: each upload is verified against its checksum, checked again, claimed again (the root grants a
claim to its holder again; one the root gave elsewhere because this replica died between spooling and claiming is
dropped) and folded (a second copy of the same contribution, a retry spooled before the first copy was
claimed, is dropped); then the partial it delivers holds every contribution it acknowledged, once.

A task under differential privacy has each contribution's update clipped, to the norm the root published with the
round, before it is folded (:func:`~fedagg.federation.aggregators.clipping.clip_contribution`: the values a single
pod's round end clips it to); the partial counts the clipped ones.

Folding reads an upload's tensors from the spool (memory: the upload in float32, twice under differential privacy,
and its largest tensor in float64). The disk work (:meth:`IngestRound.accept`, :meth:`IngestRound.fold`, :meth:`IngestRound.drop`,
:meth:`IngestRound.read`) blocks: call it on an executor. Single-owner: the replica's round driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path

from fedagg.federation.aggregators.clipping import clip_contribution
from fedagg.federation.contribution import Contribution, ContributionRejected
from fedagg.federation.files import atomic_write_bytes, quarantine
from fedagg.federation.intake import Admission, UploadIntake
from fedagg.federation.integrity import CorruptFile
from fedagg.federation.plan import ResolvedLimits
from fedagg.federation.replay import read_spooled_upload
from fedagg.federation.sources import SpooledValues
from fedagg.federation.spool import EntryKind, Spool, SpoolEntry, SpoolWriter
from fedagg.protocol.codec import Float32Array
from fedagg.protocol.results import ResultsHeader
from fedagg.tier.partials import RoundPartial

Claim = Callable[[str, int, str], Awaitable[bool]]
"""(collaborator, round, task) -> whether the root granted this replica the claim."""
Plain = Callable[[str, str], bool]
"""(task, tensor) -> whether the tensor is summed unweighted (FedCurv's Fisher terms)."""


def next_generation(state_dir: Path) -> int:
    """This start's generation: one more than the last start's (1 at the first), made durable. Blocks on the disk."""
    path = state_dir / "tier-generation"
    previous = int(path.read_text()) if path.exists() else 0
    atomic_write_bytes(path, f"{previous + 1}\n".encode())
    return previous + 1


class IngestRound:
    """One round at an ingest replica (module docstring)."""

    def __init__(
        self,
        spool: Spool,
        partial: RoundPartial,
        model: Mapping[str, Float32Array],
        limits: ResolvedLimits,
        plain: Plain | None = None,
        clipping: Mapping[str, float] | None = None,
    ) -> None:
        self.partial = partial
        self._spool = spool
        self._model = model
        self._limits = limits
        self._plain = plain
        self._clipping = dict(clipping or {})
        """The norm each task's updates are clipped to before they are folded (the root's, with the round)."""
        self._sequence = max((entry.sequence for entry in spool.entries(partial.round_number)), default=0)

    @property
    def round_number(self) -> int:
        return self.partial.round_number

    def accept(self, writer: SpoolWriter) -> SpoolEntry:
        """Move a sealed upload into the round's spool: durable when this returns."""
        self._sequence += 1
        return self._spool.accept(writer, self.round_number, self._sequence)

    def drop(self, entry: SpoolEntry) -> None:
        """Delete a spooled upload another replica holds the claim of."""
        entry.path.unlink(missing_ok=True)

    def read(self, entry: SpoolEntry) -> Contribution | None:
        """A spooled upload's contribution, verified and checked again (None if it does not hold: a corrupt one
        is moved to the spool's ``quarantine/`` and never claimed)."""

        def make_intake(header: ResultsHeader) -> UploadIntake:
            admission = Admission(
                header.header.sender, header.task_name, header.round_number, header.data_size
            )
            return UploadIntake(admission, self._model, self._limits)

        try:
            intake, _ = read_spooled_upload(entry.path, make_intake)
        except (CorruptFile, OSError) as error:
            if entry.path.exists():
                quarantine(
                    entry.path,
                    self._spool.root / "quarantine",
                    f"unusable at recovery ({error}); not claimed",
                )
            return None
        if intake is None:
            return None
        checked = intake.checked()
        return None if isinstance(checked, ContributionRejected) else checked

    def fold(self, entry: SpoolEntry, contribution: Contribution, into: RoundPartial | None = None) -> None:
        """Add an acknowledged contribution to the round's partial (or to ``into``)."""
        tensors = {}
        for tensor in contribution.weights:
            values = SpooledValues(entry.path, tensor.data_offset, tensor.size).block(0, tensor.size)
            if tensor.is_delta:
                values = self._model[tensor.name].reshape(-1) + values
            tensors[tensor.name] = values.reshape(tensor.shape)
        task, plain = contribution.task, self._plain
        norm = self._clipping.get(task)
        clipping = None
        if norm is not None:
            tensors, was_clipped = clip_contribution(tensors, self._model, norm)
            clipping = (norm, was_clipped)
        (into or self.partial).fold(
            task,
            contribution.collaborator,
            contribution.weight,
            tensors,
            [((metric.name, metric.tags), metric.value) for metric in contribution.metrics],
            None if plain is None else lambda name: plain(task, name),
            clipping,
        )

    def without(self, collaborators: frozenset[str]) -> RoundPartial:
        """The round's partial without ``collaborators``' contributions (stragglers: the round closes without
        them): the partial itself when it holds none, else a partial of the same generation folded again from the
        spool, in spool order, from the acknowledged contributions of the others. Blocks on the disk."""
        folded = self.partial.contributions
        if not any(collaborator in collaborators for collaborator, _ in folded):
            return self.partial
        partial = RoundPartial(self.round_number, self.partial.replica, self.partial.generation)
        for entry in self._spool.entries(self.round_number):
            if entry.kind != EntryKind.RESULTS:
                continue
            contribution = self.read(entry)
            if contribution is None or contribution.collaborator in collaborators:
                continue
            key = (contribution.collaborator, contribution.task)
            if key in folded and key not in partial.contributions:
                self.fold(entry, contribution, partial)
        return partial

    async def recover(self, claim: Claim, executor: Executor) -> int:
        """After a restart: claim and fold every upload of the round's spool again; return how many were folded."""
        loop = asyncio.get_running_loop()
        folded = 0
        for entry in await loop.run_in_executor(executor, self._spool.entries, self.round_number):
            if entry.kind != EntryKind.RESULTS:
                continue
            contribution = await loop.run_in_executor(executor, self.read, entry)
            if contribution is None:
                continue
            if (contribution.collaborator, contribution.task) in self.partial.contributions:
                await loop.run_in_executor(executor, self.drop, entry)  # a retry's copy spooled twice
                continue
            if not await claim(contribution.collaborator, self.round_number, contribution.task):
                await loop.run_in_executor(executor, self.drop, entry)
                continue
            await loop.run_in_executor(executor, self.fold, entry, contribution)
            folded += 1
        return folded
