"""An ingest replica following its root's round: open the round, serve its model, deliver its partial.

:class:`RoundWatch` reads the root's round notices (:meth:`~fedagg.tier.root_link.RootLink.watch_rounds`) and acts
on each:

* OPEN r: fetch round r's model once (checked by SHA-256, kept in :class:`~fedagg.tier.model_files.ModelCopies`),
  start round r's :class:`~fedagg.tier.ingest_round.IngestRound` (clipping the tasks the notice names to their
  norms), recovering what the spool already holds of it
  (after a restart: claimed again and folded, under this start's generation), then take uploads for r
  (:class:`~fedagg.tier.ingest_uploads.IngestUploads`) and serve its model (with round r-1's, when kept, for
  deltas). The spool of earlier rounds is deleted: the root opened r only once it had collected them.
* COLLECTING r: stop taking uploads for r, let the commits in flight end (the commit executor has one thread and
  runs in order), then deliver r's partial and keep it delivered (a restarted root has lost it) until the root
  moves on. A replica that (re)starts while the root collects r opens r from its spool first.
* FINISHED: uploads are ignored as after the end; everything else is still relayed to the root (the collaborators
  get their quit jobs from it).

A failure on the way (the root unreachable for longer than the link's patience, a model that does not match its
checksum, anything unexpected) is logged and the notices are read again after a back-off: the latest one is acted
on again. Model copies and spooled rounds the root has moved past are deleted.

:attr:`RoundWatch.ready` is the replica's readiness: the root's notices arrive and, while a round is open, its
model is in place. Event-loop object; the disk work runs on ``executor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor

from fedagg.federation.checkpoint import ModelShape
from fedagg.federation.plan import UploadLimits
from fedagg.federation.serving import TensorServer
from fedagg.federation.spool import Spool
from fedagg.protocol import tier_pb2
from fedagg.protocol.model_file import LoadedModel, ModelFileError, read_model
from fedagg.tier.ingest_round import Claim, IngestRound, Plain
from fedagg.tier.ingest_uploads import IngestUploads, ReplicaRound
from fedagg.tier.model_files import ModelCopies, ModelMismatch
from fedagg.tier.partials import RoundPartial
from fedagg.tier.root_link import RootLink, RootUnreachable, TierRefusal
from fedagg.tier.round_notices import RoundNotice

log = logging.getLogger(__name__)

OPEN, COLLECTING, FINISHED = tier_pb2.OPEN, tier_pb2.COLLECTING, tier_pb2.FINISHED
FOLLOW_FAILURES = (RootUnreachable, TierRefusal, ModelMismatch, ModelFileError, OSError)


class RoundWatch:
    """Follows the root's round for one replica (module docstring)."""

    def __init__(
        self,
        link: RootLink,
        uploads: IngestUploads,
        tensors: TensorServer,
        copies: ModelCopies,
        spool: Spool,
        replica: str,
        generation: int,
        limits: UploadLimits,
        recovery_claim: Claim,
        executor: Executor,
        commit_executor: Executor,
        plain: Plain | None = None,
    ) -> None:
        self._link = link
        self._uploads = uploads
        self._tensors = tensors
        self._copies = copies
        self._spool = spool
        self._replica = replica
        self._generation = generation
        self._limits = limits
        self._recovery_claim = recovery_claim
        self._executor = executor
        self._commit_executor = commit_executor
        self._plain = plain
        self._models: dict[int, LoadedModel] = {}
        self._delivered = asyncio.Event()
        self._delivery: asyncio.Task[None] | None = None
        self._left_out: frozenset[str] = frozenset()
        """The stragglers the partial being delivered leaves out (event-loop state)."""
        self.notice: RoundNotice | None = None
        """The root's latest notice, once acted on."""
        self._acted = asyncio.Condition()

    @property
    def ready(self) -> bool:
        """The root's notices arrive and, while a round is open, its model is served."""
        notice, current = self.notice, self._uploads.round
        if not self._link.watching or notice is None:
            return False
        return notice.phase != OPEN or (current is not None and current.number == notice.round_number)

    async def run(self) -> None:
        """Follow the root until cancelled."""
        backoff = 0.5
        while True:
            try:
                async for notice in self._link.watch_rounds():
                    await self._follow(notice)
                    async with self._acted:
                        self.notice = notice
                        self._acted.notify_all()
                    backoff = 0.5
            except FOLLOW_FAILURES as error:  # the root or the disk, for now: try again
                log.warning(
                    "following the root %s failed: %s; trying again in %gs",
                    self._link.address,
                    error,
                    backoff,
                )
            except Exception:  # a bug must not end the following for good (the replica would never be ready)
                log.exception(
                    "following the root %s failed; trying again in %gs", self._link.address, backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def reached(self, round_number: int, timeout: float) -> bool:
        """Whether round ``round_number`` (or a later one) is served here, or the experiment has finished, within
        ``timeout`` seconds: the root may tell a collaborator of a round a moment before this replica opens it."""

        def served() -> bool:
            current, notice = self._uploads.round, self.notice
            finished = notice is not None and notice.phase == FINISHED
            return finished or (current is not None and current.number >= round_number)

        async with self._acted:
            try:
                await asyncio.wait_for(self._acted.wait_for(served), timeout)
            except TimeoutError:
                return False
        return True

    async def acted_on(self, round_number: int, phase: tier_pb2.RoundPhase.ValueType) -> None:
        """Return once the notice (round_number, phase) has been acted on (for start-up and tests)."""
        async with self._acted:
            await self._acted.wait_for(
                lambda: (
                    self.notice is not None
                    and (self.notice.round_number, self.notice.phase) == (round_number, phase)
                )
            )

    async def root_gone_after_finish(self) -> None:
        """Return once the root finished the experiment and then stopped answering (a root exits after the last
        collaborator's quit job, which the replicas relay)."""
        async with self._acted:
            await self._acted.wait_for(lambda: self.notice is not None and self.notice.phase == FINISHED)
        while self._link.watching:
            self._link.watch_ended.clear()
            if self._link.watching:
                await self._link.watch_ended.wait()

    async def stop(self) -> None:
        """End the delivery under way (the partial stays in the spool, delivered again after a restart)."""
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery

    async def _follow(self, notice: RoundNotice) -> None:
        if notice.phase == FINISHED:
            self._delivered.set()
            self._uploads.finish()
            return
        if notice.phase not in (OPEN, COLLECTING):
            return
        current = self._uploads.round
        if current is None or current.number != notice.round_number:
            self._delivered.set()  # the root moved on: the last round's partial was collected
            current = await self._open(notice.round_number, dict(notice.clipping_norms))
        if notice.phase == COLLECTING and (
            not current.collecting or frozenset(notice.stragglers) != self._left_out
        ):
            self._uploads.close_round(current.number)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._commit_executor, _after_earlier_commits)
            if self._delivery is not None:  # a delivery of the round with fewer stragglers left out
                self._delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._delivery
            self._left_out = frozenset(notice.stragglers)
            partial = await loop.run_in_executor(self._executor, current.ingest.without, self._left_out)
            self._delivered = asyncio.Event()
            self._delivery = asyncio.create_task(self._deliver(partial, self._delivered))

    async def _open(self, round_number: int, clipping: dict[str, float]) -> ReplicaRound:
        loop = asyncio.get_running_loop()
        path = await self._link.fetch_model(round_number, self._copies, self._executor)
        model = await loop.run_in_executor(self._executor, read_model, path)
        models = {round_number: model}
        previous = self._models.get(round_number - 1)
        if previous is None and round_number > 0:
            kept = await loop.run_in_executor(self._executor, self._copies.kept, round_number - 1)
            previous = None if kept is None else await loop.run_in_executor(self._executor, read_model, kept)
        if previous is not None:
            models[round_number - 1] = previous
        partial = RoundPartial(round_number, self._replica, self._generation)
        # The round's model has the initial model's shape (a tier's root lets no tensor join), so the limits
        # resolved from it are the root's.
        limits = self._limits.resolve(ModelShape.of(model.tensors).data_bytes)
        ingest = await loop.run_in_executor(
            self._executor, IngestRound, self._spool, partial, model.tensors, limits, self._plain, clipping
        )
        recovered = await ingest.recover(self._recovery_claim, self._executor)
        if recovered:
            log.info("round %d: %d spooled contributions claimed and folded again", round_number, recovered)
        round_ = ReplicaRound(ingest, model, limits)
        self._uploads.install(round_)
        self._tensors.install(models, round_number)
        self._models = models
        await loop.run_in_executor(self._executor, self._spool.drop_rounds_before, round_number)
        await loop.run_in_executor(self._executor, self._copies.drop_before, round_number - 1)
        log.info("round %d: serving its model and taking uploads", round_number)
        return round_

    async def _deliver(self, partial: RoundPartial, done: asyncio.Event) -> None:
        """Deliver ``partial`` and keep it delivered until ``done``, through the root's restarts."""
        backoff = 0.5
        while not done.is_set():
            try:
                await self._link.keep_delivered(partial, done)
            except (RootUnreachable, TierRefusal) as error:
                log.warning(
                    "round %d: delivering the partial failed: %s; trying again", partial.round_number, error
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), backoff)
                backoff = min(backoff * 2, 30.0)


def _after_earlier_commits() -> None:
    """Run on the one-thread commit executor: returns once every commit submitted before it has ended."""
