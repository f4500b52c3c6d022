"""Publishing the best and last models (what GetTrainedModel serves), after a round's commit point only.

A published file is always a committed round's model: the round end publishes after its checkpoint is durable
(:mod:`fedagg.federation.round_close`), and a start-up publishes what the restored checkpoint names wherever the
published file is not that model (a crash or a disk error came between a commit and its publication).

A published file is a hard link, not a copy: to the model already published under the other name when there is
one (the best model is usually the round the last model was until now: validation of a model comes in the round
after it is made, and with ``rounds_kept: 1`` that model is no longer kept), else to the kept model
(``models/round-*.pbuf``). Nothing is copied at a round end, where every collaborator waits (a copy of 200 MB and
its fsync took 0.5 s of each round's end on the benchmark's machine). A kept model is written once and never over
(pruning unlinks it, :mod:`fedagg.federation.store`), so a reader outside this process that opened best.pbuf rounds
ago keeps reading the bytes it opened. The price: a kept model and its published name share their blocks, so a
corrupt kept model is corrupt in both and the state falls back one round (:mod:`fedagg.federation.recovery`); a
kept model that is missing is restored from its published name. Where a link cannot be made (the two paths on
different filesystems) the model is copied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedagg.federation.checkpoint import Checkpoint
from fedagg.federation.files import atomic_link
from fedagg.federation.integrity import CorruptFile, verify_file
from fedagg.federation.progress_health import describe_os_error
from fedagg.federation.store import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOutputs:
    """Where the OpenFL-format best and last models are published."""

    best: Path
    last: Path


class PublishedModels:
    """Publishes the best and last models a committed checkpoint names (after the commit point only), and
    remembers the publications that failed, so they are tried again at the next round end."""

    def __init__(self, store: StateStore, outputs: ModelOutputs) -> None:
        self._store = store
        self._outputs = outputs
        self._failed: dict[Path, int] = {}

    def publish(self, checkpoint: Checkpoint, before: Checkpoint) -> None:
        """Publish what ``checkpoint`` names that ``before`` did not (or whose publication failed); a disk error
        is logged, not raised (the round has committed; the previous files stay served until a later attempt or a
        restart publishes)."""
        published = {path: round_number for round_number, path in self._named(before)}
        done = {
            round_number: path
            for round_number, path in self._named(before)
            if self._failed.get(path) != round_number and path.exists()
        }
        for round_number, path in self._named(checkpoint):
            retry = (
                self._failed.get(path) == round_number and checkpoint.model_digest(round_number) is not None
            )
            if published.get(path) != round_number or retry:
                self._publish(round_number, path, done)

    def restore(self, checkpoint: Checkpoint) -> None:
        """At start-up: publish what ``checkpoint`` names wherever the published file is not that model (a crash
        or a disk error came between the commit and the publication)."""
        done: dict[int, Path] = {}
        for round_number, path in self._named(checkpoint):
            digest = checkpoint.model_digest(round_number)
            if digest is None:
                continue
            try:
                verify_file(path, digest)
            except (CorruptFile, OSError):
                log.info("publishing round %d's committed model as %s", round_number, path.name)
                self._publish(round_number, path, done)

    def _named(self, checkpoint: Checkpoint) -> list[tuple[int, Path]]:
        named = ((checkpoint.best_round, self._outputs.best), (checkpoint.last_round, self._outputs.last))
        return [(round_number, path) for round_number, path in named if round_number is not None]

    def _publish(self, round_number: int, path: Path, done: dict[int, Path]) -> None:
        """Publish round ``round_number``'s model as ``path``: a link to ``done[round_number]`` (that model,
        published under another name) when there is one, else to the kept model; record it in ``done``."""
        try:
            twin = done.get(round_number)
            if twin is None or twin == path or not atomic_link(twin, path):
                self._store.publish(round_number, path)
        except OSError as error:
            log.warning(
                "round %d's model is committed but %s could not be published (%s); the previous one is served "
                "until the next round end or a restart publishes it",
                round_number,
                path.name,
                describe_os_error(error),
            )
            self._failed[path] = round_number
        else:
            self._failed.pop(path, None)
            for other in [number for number, published in done.items() if published == path]:
                del done[other]  # path no longer holds that round's model
            done[round_number] = path
