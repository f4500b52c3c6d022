"""Folding a round's contributions into running weighted sums as they are committed, so the round end only divides.

For a task aggregated by the plain weighted average (OpenFL's; FedCurv's non-Fisher tensors), the round end
computes ``sum(w_i * x_i) / sum(w_i)`` in float64, summing in the plan's collaborator order. That sum is built here
ahead of time, in the same order with the same operations (:func:`~fedagg.federation.aggregators.base.add_weighted`),
so the round end starts from it and gets the same bits as if it had read every contribution from the spool.

Per task, a frontier walks the collaborators in plan order: the uploads next in that order are folded as soon as
they are committed (several at once, in one pass over the sums, when several are ready), an upload that was
rejected is passed over, and one that arrives ahead of the frontier waits in the spool (still in the page cache)
until the gap closes. Folding runs on the federation's fold worker, after the commit and its acknowledgement, off
the event loop and off the commit lock. Folding does not wait for the collaborator to be done: if OpenFL's
straggler rule leaves out a collaborator that was folded, the folded sums are no longer a prefix of what the round
aggregates and the round end sums from the spool instead (slower, same result).

Each upload is verified against its acknowledged checksum just before it is folded (a corrupt one is not folded
and the frontier stays before it: the round end's own check finds it, quarantines it and has the task done again).
The round end stops the fold, does not check again what the fold checked, and sums only the rest from the spool
(checked first when the fold did not): the collaborators past the frontier, those whose turn came while the round
closed, or all of them after a restart or a failure of the scratch file (:mod:`fedagg.federation.fold_sums`),
which only makes the round end slower.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fedagg.federation.aggregators.elementwise import sums_by_weight
from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.events import FederationListener
from fedagg.federation.fold_sums import Contribution, FoldedPrefix, FoldedSum, SumFile
from fedagg.federation.integrity import CorruptFile, verify_footer
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.rounds import AcceptedUpload, CloseDecision, Round

log = logging.getLogger(__name__)


def verify_upload(upload: AcceptedUpload) -> None:
    """Raise :class:`CorruptFile` unless ``upload``'s spool file holds exactly what was acknowledged."""
    if verify_footer(upload.entry.path) != upload.digest:
        raise CorruptFile(f"{upload.entry.path}: differs from the upload that was acknowledged")


class RoundFold:
    """The running sums of one round (module docstring).

    ``_lock`` guards the sums, the frontiers and the checked set. It is held by the fold worker while it folds and
    by the round end while it stops the fold and reads the sums. ``_stopped`` is set under it, or first without it
    by :meth:`stop` (a flag the worker reads between tensors, so a round end waits for one tensor at most). Lock
    order: this lock, then the round lock (taken briefly to read the round's receipts); never the commit lock.
    """

    def __init__(
        self,
        round_: Round,
        aggregators: TaskAggregators,
        round_lock: threading.Lock,
        sum_file: SumFile,
        listener: FederationListener | None = None,
    ) -> None:
        self._round = round_
        self._listener = listener or FederationListener()
        self._round_lock = round_lock
        self._file = sum_file
        self._lock = threading.Lock()
        self._aggregators = {task: aggregators[task] for task in round_.task_order}
        self._orders = {  # the tasks with something to fold (others are checked and read at the round end)
            task: [name for name, tasks in round_.assignment.items() if task in tasks]
            for task in round_.task_order
            if any(sums_by_weight(self._aggregators[task], name) for name in round_.model.tensors)
        }
        self._next = dict.fromkeys(self._orders, 0)
        self._blocked: set[str] = set()
        self._sums: dict[tuple[str, str], FoldedSum] = {}
        self._checked: set[Path] = set()
        self._folded_by_task: dict[str, list[str]] = {}
        self._stopped = False

    def advance(self) -> None:
        """Fold every upload whose turn has come (the fold worker calls this after each commit)."""
        with self._lock:
            while not self._stopped and (turn := self._next_turns()) is not None:
                task, receipts = turn
                uploads = []
                for receipt in receipts:
                    if self._stopped:
                        return
                    if receipt is not None:
                        if not self._check(receipt):
                            self._blocked.add(task)
                            break
                        uploads.append(receipt)
                    self._next[task] += 1
                if uploads:
                    self._fold(task, uploads)

    def stop(self, decision: CloseDecision) -> frozenset[Path]:
        """Fold nothing more: the round closes with ``decision`` (a fold in progress ends after its current tensor).

        Sums that hold a collaborator the decision leaves out are dropped (the round end reads those tensors from
        the spool). Returns the spool files the fold checked against their checksums (just before folding them):
        the round end does not check them again.
        """
        self._stopped = True
        with self._lock:
            done = set(decision.done)
            for key, summed in list(self._sums.items()):
                if any(collaborator not in done for collaborator, _ in summed.contributors):
                    del self._sums[key]
            return frozenset(self._checked)

    def folded(self, task: str) -> tuple[str, ...]:
        """The collaborators whose upload of ``task`` is in its sums, in the order they were folded."""
        with self._lock:
            return tuple(self._folded_by_task.get(task, ()))

    def prefix(self, task: str, tensor: str, expected: list[tuple[str, float]]) -> FoldedPrefix | None:
        """The folded sum of ``task``'s ``tensor`` if it is a prefix of ``expected`` ((collaborator, weight) in the
        round end's order); call after :meth:`stop`."""
        with self._lock:
            summed = self._sums.get((task, tensor))
            return None if summed is None else summed.prefix(expected)

    def close(self) -> None:
        """Stop and drop the sums (after the round committed, or after a round end failed); the sum file is free
        for the next round from then on."""
        with self._lock:
            self._stopped = True
            self._sums.clear()
            self._file.reset()

    def _next_turns(self) -> tuple[str, list[AcceptedUpload | None]] | None:
        """A task's uploads that are next in plan order (None for one that was rejected); None when none is."""
        with self._round_lock:
            for task, order in self._orders.items():
                if task in self._blocked:
                    continue
                receipts = []
                for name in order[self._next[task] :]:
                    receipt = self._round.received.get(name, {}).get(task)
                    if receipt is None:
                        break
                    receipts.append(receipt if isinstance(receipt, AcceptedUpload) else None)
                if receipts:
                    return task, receipts
        return None

    def _check(self, upload: AcceptedUpload) -> bool:
        """Verify ``upload`` against its acknowledged checksum; False (and a warning) when it does not hold."""
        try:
            verify_upload(upload)
        except (CorruptFile, OSError) as error:
            log.warning("round %d: not folding %s: %s", self._round.number, upload.entry.path.name, error)
            return False
        self._checked.add(upload.entry.path)
        return True

    def _fold(self, task: str, uploads: list[AcceptedUpload]) -> None:
        """Fold ``uploads`` (in order) into the task's sums, tensor by tensor, each tensor in one pass."""
        started = time.monotonic()
        aggregator = self._aggregators[task]
        model = self._round.model
        foldable: dict[str, list[tuple[AcceptedUpload, UploadedTensor]]] = {}  # by name, in upload order
        for upload in uploads:
            for tensor in upload.contribution.weights:
                values = model.tensors.get(tensor.name)
                if (
                    values is not None
                    and tensor.shape == values.shape
                    and sums_by_weight(aggregator, tensor.name)
                ):
                    foldable.setdefault(tensor.name, []).append((upload, tensor))
        names = [name for name in model.tensors if name in foldable]  # in the model's order
        if not names:
            return
        try:
            for name in names:
                if self._stopped:
                    return
                parts = [
                    Contribution(
                        u.contribution.collaborator, u.contribution.weight, u.entry.path, tensor, model
                    )
                    for u, tensor in foldable[name]
                ]
                summed = self._sums.get((task, name))
                if summed is None:
                    summed = self._sums[(task, name)] = FoldedSum(self._file, parts[0].size)
                try:
                    summed.add(parts)
                finally:
                    for part in parts:
                        part.close()
        except (CorruptFile, OSError) as error:  # a sum may be half-written: use none of them
            log.warning(
                "round %d: folding contributions as they arrive failed (%s); the round end sums them from the spool",
                self._round.number,
                error,
            )
            self._stopped = True
            self._sums.clear()
            self._folded_by_task.clear()
            return
        seconds = time.monotonic() - started
        collaborators = [upload.contribution.collaborator for upload in uploads]
        log.debug("round %d: folded %s's %r in %.2fs", self._round.number, collaborators, task, seconds)
        self._folded_by_task.setdefault(task, []).extend(collaborators)
        for collaborator in collaborators:
            self._listener.contribution_folded(collaborator, task, self._round.number, seconds)
