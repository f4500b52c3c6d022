"""Folding a round's contributions into running weighted sums as they are committed, so the round end only divides.

For a task aggregated by the plain weighted average (OpenFL's; FedCurv's non-Fisher tensors), the round end
computes ``sum(w_i * x_i) / sum(w_i)`` in float64, summing in the plan's collaborator order. That sum is built here
ahead of time, in the same order with the same operations (:func:`~fedagg.federation.aggregators.base.add_weighted`),
so the round end starts from it and gets the same bits as if it had read every contribution from the spool.

Per task, a frontier walks the collaborators in plan order. A collaborator's upload is folded only once the
collaborator is done (every task of its round in), because OpenFL's straggler rule leaves a straggler's partial
work out; a done collaborator never becomes a straggler. The frontier passes a done collaborator whose upload of
the task was rejected; it stops at one that is not done yet, and an upload that arrives ahead of the frontier
waits in the spool (still in the page cache) until the gap closes. Folding runs on the federation's fold worker,
after the commit and its acknowledgement, off the event loop and off the commit lock.

Each upload is verified against its acknowledged checksum just before it is folded (a corrupt one is not folded
and the frontier stays before it: the round end's own check finds it, quarantines it and has the task done again).
The round end stops the fold, does not check again what was folded, and sums only the rest from the spool: the
collaborators past the frontier, those whose turn came while the round closed, or all of them after a restart or
a failure of the scratch file (:mod:`fedagg.federation.fold_sums`), which only makes the round end slower.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fedagg.federation.aggregators.elementwise import sums_by_weight
from fedagg.federation.events import FederationListener
from fedagg.federation.fold_sums import FoldedPrefix, FoldedSum, SumFile
from fedagg.federation.integrity import CorruptFile, verify_footer
from fedagg.federation.model_building import TaskAggregators
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.sources import uploaded_values

log = logging.getLogger(__name__)


def verify_upload(upload: AcceptedUpload) -> None:
    """Raise :class:`CorruptFile` unless ``upload``'s spool file holds exactly what was acknowledged."""
    if verify_footer(upload.entry.path) != upload.digest:
        raise CorruptFile(f"{upload.entry.path}: differs from the upload that was acknowledged")


class RoundFold:
    """The running sums of one round (module docstring).

    ``_lock`` guards the sums, the frontiers, the folded set and the stopped flag. It is held by the fold worker
    while it folds (one upload at a time) and by the round end while it stops the fold and reads the sums. Lock
    order: this lock, then the round lock (taken briefly to read the round's receipts); never the commit lock.
    """

    def __init__(
        self,
        round_: Round,
        aggregators: TaskAggregators,
        round_lock: threading.Lock,
        directory: Path,
        listener: FederationListener | None = None,
    ) -> None:
        self._round = round_
        self._listener = listener or FederationListener()
        self._round_lock = round_lock
        self._directory = directory
        self._lock = threading.Lock()
        self._aggregators = {task: aggregators[task] for task in round_.task_order}
        self._orders = {
            task: [name for name, tasks in round_.assignment.items() if task in tasks]
            for task in round_.task_order
        }
        self._next = dict.fromkeys(round_.task_order, 0)
        self._blocked: set[str] = set()
        self._sums: dict[tuple[str, str], FoldedSum] = {}
        self._folded: set[Path] = set()
        self._folded_by_task: dict[str, list[str]] = {}
        self._file: SumFile | None = None
        self._stopped = False

    def advance(self) -> None:
        """Fold every upload whose turn has come (the fold worker calls this after each commit)."""
        with self._lock:
            while not self._stopped and (turn := self._next_turn()) is not None:
                task, upload = turn
                if upload is not None and not self._fold(task, upload):
                    self._blocked.add(task)
                    continue
                self._next[task] += 1

    def stop(self) -> frozenset[Path]:
        """Fold nothing more (the round is closing); return the spool files of the uploads folded, which the round
        end need not check again."""
        with self._lock:
            self._stopped = True
            return frozenset(self._folded)

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
        """Stop and delete the sums (after the round committed, or when it is replaced at a restart)."""
        with self._lock:
            self._stopped = True
            self._sums.clear()
            if self._file is not None:
                self._file.close()
                self._file = None

    def _next_turn(self) -> tuple[str, AcceptedUpload | None] | None:
        """The next (task, upload) to fold, with None for an upload to pass over; None when nothing is due."""
        with self._round_lock:
            done = self._round.done()
            for task, order in self._orders.items():
                position = self._next[task]
                if task in self._blocked or position >= len(order) or order[position] not in done:
                    continue
                receipt = self._round.received.get(order[position], {}).get(task)
                return task, receipt if isinstance(receipt, AcceptedUpload) else None
        return None

    def _fold(self, task: str, upload: AcceptedUpload) -> bool:
        """Fold ``upload`` into the task's sums; False (and nothing folded) when it cannot be."""
        aggregator = self._aggregators[task]
        model = self._round.model
        contribution = upload.contribution
        tensors = [
            tensor
            for tensor in contribution.weights
            if tensor.name in model.tensors
            and tensor.shape == model.tensors[tensor.name].shape
            and sums_by_weight(aggregator, tensor.name)
        ]
        if not tensors:
            return True
        started = time.monotonic()
        try:
            verify_upload(upload)
        except (CorruptFile, OSError) as error:
            log.warning("round %d: not folding %s: %s", self._round.number, upload.entry.path.name, error)
            return False
        try:
            if self._file is None:
                self._file = SumFile(self._directory)
            for tensor in tensors:
                summed = self._sums.get((task, tensor.name))
                if summed is None:
                    summed = self._sums[(task, tensor.name)] = FoldedSum(self._file, tensor.size)
                values = uploaded_values(upload.entry.path, tensor, model)
                summed.add(contribution.collaborator, contribution.weight, values)
        except (CorruptFile, OSError) as error:  # a sum may be half-written: use none of them
            log.warning(
                "round %d: folding contributions as they arrive failed (%s); the round end sums them from the spool",
                self._round.number,
                error,
            )
            self._stopped = True
            self._sums.clear()
            self._folded_by_task.clear()
            return False
        self._folded.add(upload.entry.path)
        self._folded_by_task.setdefault(task, []).append(contribution.collaborator)
        self._listener.contribution_folded(
            contribution.collaborator, task, self._round.number, time.monotonic() - started
        )
        return True
