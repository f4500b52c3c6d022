"""An ingest replica's own results: a collaborator's own uploaded tensors of the round, served from this spool.

A restarted OpenFL 1.8/1.9 collaborator asks for its own results of the round (:mod:`fedagg.federation.own_results`)
on a new connection, which may land on any replica. :class:`HeldResults` answers from what this replica acknowledged,
with the standalone server's own pieces and checks (only that collaborator may ask; the same reply bytes). An upload
recovered after a restart of this replica is found by reading the round's spool again (each entry once a round).

A request this replica cannot answer from its spool is relayed through the root (:mod:`fedagg.tier.own_results_relay`);
:class:`AskAnswers` answers the root's asks for what this replica holds: the serialized NamedTensor, in chunks, or the
status it would have answered (NOT_FOUND, PERMISSION_DENIED, ...) as a refusal.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Executor
from pathlib import Path

import grpc

from fedagg.federation.contribution import Contribution
from fedagg.federation.errors import InvalidRequest, NotFound
from fedagg.federation.own_results import HeldUpload, check_requester, tensor_in_results
from fedagg.federation.serving import ServedTensor, TensorRequest, tensor_owner
from fedagg.federation.spool import EntryKind, Spool
from fedagg.protocol import tier_pb2
from fedagg.server.errors import bounded_details, status_for
from fedagg.tier.ingest_uploads import IngestUploads, ReplicaRound
from fedagg.tier.root_link import RootLink, RootUnreachable, TierRefusal
from fedagg.tier.wire import CHUNK_BYTES

log = logging.getLogger(__name__)


class HeldResults:
    """Own results this replica holds (module docstring). Thread-safe: ``_lock`` guards ``_read``, the round's
    spool entries read back (path -> contribution, None for one that does not hold), and ``_read_round``; it is
    held only to look up and note, never across the disk."""

    def __init__(self, uploads: IngestUploads, spool: Spool) -> None:
        self._uploads = uploads
        self._spool = spool
        self._lock = threading.Lock()
        self._read: dict[Path, Contribution | None] = {}
        self._read_round = -1

    def served(self, request: TensorRequest, collaborator: str, requester: str) -> ServedTensor:
        """The tensor ``request`` names among ``collaborator``'s results of the round held here, measured; only
        ``collaborator`` may ask. NOT_FOUND when this replica does not hold it. Blocks on the disk."""
        check_requester(collaborator, requester)
        round_, held, tasks = self._uploads.held(collaborator)
        if round_ is None:
            raise NotFound(f"{collaborator}'s results are served for the current round only")
        recovered = tasks - {upload.contribution.task for upload in held}
        if recovered and request.round_number == round_.number:
            held = [*held, *self._recovered(round_, collaborator, recovered)]
        return tensor_in_results(request, collaborator, round_.number, round_.model, held)

    def _recovered(self, round_: ReplicaRound, collaborator: str, tasks: set[str]) -> Iterable[HeldUpload]:
        """``collaborator``'s uploads of ``tasks`` that this replica recovered from its spool at its start."""
        with self._lock:
            if self._read_round != round_.number:
                self._read, self._read_round = {}, round_.number
        for entry in self._spool.entries(round_.number):
            if entry.kind != EntryKind.RESULTS:
                continue
            with self._lock:
                known = entry.path in self._read
                contribution = self._read.get(entry.path)
            if not known:
                contribution = round_.ingest.read(entry)
                with self._lock:
                    self._read[entry.path] = contribution
            if contribution is None or contribution.collaborator != collaborator:
                continue
            if contribution.task in tasks:
                yield HeldUpload(entry, contribution)


class AskAnswers:
    """Answers the root's asks for own results held here, while :meth:`run` runs (event loop; the look-ups and the
    reading run on ``executor``). At most ``limit`` answers at once; beyond, an ask is refused UNAVAILABLE."""

    def __init__(
        self,
        link: RootLink,
        results: HeldResults,
        collaborators: Iterable[str],
        executor: Executor,
        limit: int = 8,
    ) -> None:
        self._link = link
        self._results = results
        self._collaborators = frozenset(collaborators)
        self._executor = executor
        self._limit = limit
        self._answering: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Answer the root's asks until cancelled (the stream is kept open through the root's restarts)."""
        backoff = 0.5
        while True:
            try:
                async for ask in self._link.own_results_asks():
                    answer = asyncio.create_task(self._answer(ask))
                    self._answering.add(answer)
                    answer.add_done_callback(self._answering.discard)
                    backoff = 0.5
            except TierRefusal as refused:
                log.warning("the root %s refuses the own-results asks: %s", self._link.address, refused)
            except Exception:  # a bug must not end the answering for good
                log.exception("answering the root's own-results asks failed; trying again in %gs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        """Cancel the answers under way."""
        for answer in list(self._answering):
            answer.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)

    async def _answer(self, ask: tier_pb2.OwnResultsAsk) -> None:
        try:
            await self._link.deliver_own_results(self._chunks(ask))
        except (RootUnreachable, grpc.aio.AioRpcError) as error:
            log.warning("could not answer the root's ask %d for own results: %s", ask.ask, error)

    async def _chunks(self, ask: tier_pb2.OwnResultsAsk) -> AsyncIterator[tier_pb2.OwnResultsChunk]:
        """The answer to ``ask``: the serialized NamedTensor this replica serves, or its refusal."""
        if len(self._answering) > self._limit:
            yield refusal(
                ask.ask, grpc.StatusCode.UNAVAILABLE, f"answering {self._limit} asks already; ask again"
            )
            return
        loop = asyncio.get_running_loop()
        asked = ask.request
        request = TensorRequest(
            asked.tensor_name, asked.round, asked.report, tuple(asked.tags), asked.require_lossless
        )
        served: ServedTensor | None = None
        try:
            owner = tensor_owner(request, self._collaborators)
            if owner is None:
                raise InvalidRequest(f"the tags {list(request.tags)[:8]} name no collaborator's own results")
            served = await loop.run_in_executor(
                self._executor, self._results.served, request, owner, asked.collaborator
            )
            parts = await loop.run_in_executor(self._executor, served.parts)
        except Exception as error:  # the status this replica would answer the collaborator with
            if served is not None:
                served.release()
            code = status_for(error)
            if code is None:
                log.warning("the root's ask %d for own results failed here: %r", ask.ask, error)
            yield refusal(ask.ask, code or grpc.StatusCode.UNAVAILABLE, bounded_details(f"{error}"))
            return
        try:
            size = sum(len(part) for part in parts)
            first = True
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), CHUNK_BYTES):
                    data = await loop.run_in_executor(
                        self._executor, bytes, view[start : start + CHUNK_BYTES]
                    )
                    yield tier_pb2.OwnResultsChunk(
                        ask=ask.ask if first else 0, size=size if first else 0, data=data
                    )
                    first = False
        finally:
            served.release()


def refusal(ask: int, code: grpc.StatusCode, message: str) -> tier_pb2.OwnResultsChunk:
    """The answer to ``ask`` that this replica does not serve it: ``code`` and why."""
    return tier_pb2.OwnResultsChunk(ask=ask, refused_code=code.value[0], refused=message)
