"""Receiving one SendLocalTaskResults stream: authorise from the header, spool, validate, commit.

The upload is decoded as its chunks arrive. The header precedes the tensors, so the sender is authenticated
and the upload admitted (or marked to be ignored) before the bulk arrives. Accepted bytes go straight to a
spool file; each tensor is validated as soon as its last byte is in. Only a complete, valid, fsynced upload is
committed, and only after the commit is it acknowledged: a failure at any point leaves the round untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor

from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.federation import Admission, Federation
from fedagg.federation.store import SpoolFile
from fedagg.logs import in_current_context, set_log_context
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.results import ResultsEvent, ResultsHeader, TaskResultsDecoder

log = logging.getLogger(__name__)

Authenticate = Callable[[aggregator_pb2.MessageHeader], Awaitable[str]]


class UploadReceiver:
    """State of one upload. Use :meth:`receive` once."""

    def __init__(
        self,
        federation: Federation,
        authenticate: Authenticate,
        io_executor: Executor,
        commit_executor: Executor,
    ) -> None:
        self._federation = federation
        self._authenticate = authenticate
        self._io = io_executor
        self._commit = commit_executor
        self._decoder = TaskResultsDecoder()
        self._early_chunks: list[bytes] = []
        self._spool: SpoolFile | None = None
        self._tensors: list[UploadedTensor] = []
        self.collaborator = ""
        self.admission: Admission | None = None
        self.received_bytes = 0

    async def receive(self, chunks: AsyncIterator[base_pb2.DataStream]) -> Admission:
        """Consume the stream and commit it; returns the final admission (accepted or ignored)."""
        loop = asyncio.get_running_loop()
        committed = False
        try:
            async for chunk in chunks:
                data = chunk.npbytes
                if not data:
                    continue
                self.received_bytes += len(data)
                events = self._decoder.feed(data)
                if self._spool is not None:
                    await loop.run_in_executor(self._io, self._spool.write, data)
                elif self.admission is None:
                    self._early_chunks.append(data)
                await self._handle(events)
            await self._handle(self._decoder.finish())
            admission = self.admission
            assert admission is not None
            if self._spool is None:
                return admission
            await loop.run_in_executor(self._io, self._spool.sync)
            tensors = tuple(self._tensors)
            commit = in_current_context(self._federation.commit, admission, self._spool, tensors)
            result = await loop.run_in_executor(self._commit, commit)
            committed = True
            return result
        finally:
            if self._spool is not None and not committed:
                self._spool.discard()

    async def _handle(self, events: list[ResultsEvent]) -> None:
        for event in events:
            if isinstance(event, ResultsHeader):
                await self._admit(event)
            elif self.admission is not None and self.admission.accepted:
                self._tensors.append(self._federation.check_tensor(self.admission, event))

    async def _admit(self, results: ResultsHeader) -> None:
        self.collaborator = await self._authenticate(results.header)
        set_log_context(round_number=results.round_number, task=results.task_name)
        self.admission = self._federation.admit(self.collaborator, results)
        if self.admission.accepted:
            spool = self._spool = self._federation.open_spool()
            early, self._early_chunks = self._early_chunks, []
            await asyncio.get_running_loop().run_in_executor(self._io, _write_all, spool, early)
        else:
            self._early_chunks = []
            log.warning(
                "ignoring %s's results for %r: %s",
                self.collaborator,
                results.task_name,
                self.admission.ignored_because,
            )


def _write_all(spool: SpoolFile, chunks: list[bytes]) -> None:
    for chunk in chunks:
        spool.write(chunk)
