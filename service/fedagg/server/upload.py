"""Receiving one SendLocalTaskResults stream: authenticate from the header, check, spool, commit.

The upload is decoded as its chunks arrive, and nothing is held that has not been bounded:

* before the TaskResults header authenticates the sender, and until the first tensor begins (the header area),
  at most ``header_bytes`` are decoded and buffered; a stream that needs more is refused;
* decoding runs off the event loop, one chunk at a time (once admitted, a chunk is decoded, checked and spooled in
  one executor hop), and its work is bounded by the decode limits (every field
  costs descriptor budget, and the number of tensors is capped), so no upload stalls the calls of others;
* one caller may have at most ``concurrent_uploads_per_task`` uploads of one task open at once
  (:class:`UploadSlots`);
* from admission on, bytes go straight to a spool file, each tensor is checked as soon as its data begins (name,
  shape, size budget) and its values as they pass (finite), so an unusable upload is refused before its bulk is
  spooled, and reading stops;
* an upload is committed (accepted, or rejected with a durable record) only once it arrived whole and was synced,
  and only after the commit is it acknowledged. A failure at any point leaves the round untouched.

Uploads that are ignored (wrong round, duplicate, straggler) or rejected are answered OK at once, without reading
the rest: OpenFL 1.7.1 clients re-send anything else in a hot loop, and the content cannot get better by being
sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from fedagg.failpoints import failpoint
from fedagg.federation.errors import InvalidRequest
from fedagg.federation.federation import Outcome
from fedagg.federation.intake import Admission, UploadIntake
from fedagg.logs import in_current_context, set_log_context
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.results import ResultsEvent, ResultsHeader, SenderHeader, TaskResultsDecoder
from fedagg.protocol.stream import DecodeLimits, LimitExceeded
from fedagg.protocol.tensor_fields import TensorRecord
from fedagg.protocol.wire import datastream_payload
from fedagg.server.errors import Unavailable
from fedagg.server.gate import CallGate
from fedagg.server.observer import Limit, ServerObserver
from fedagg.server.options import CallerLimits

log = logging.getLogger(__name__)

DECODE_LIMITS = {
    "tensors": Limit.TENSORS_PER_UPLOAD,
    "field_bytes": Limit.FIELD_BYTES,
    "descriptor_bytes": Limit.DESCRIPTOR_BYTES,
    "tags_per_tensor": Limit.TAGS_PER_TENSOR,
    "metadata_per_tensor": Limit.METADATA_PER_TENSOR,
}
"""The decoder's limits by the name it reports, as breaches are counted."""

T = TypeVar("T")
Authenticate = Callable[[aggregator_pb2.MessageHeader], Awaitable[str]]


async def upload_payloads(
    chunks: AsyncIterator[bytes], gate: CallGate, limits: CallerLimits, observer: ServerObserver
) -> AsyncIterator[memoryview]:
    """An upload's DataStream payloads until it ends, the gate cuts it, or it sends nothing for the idle time."""
    iterator = aiter(chunks)
    idle = limits.upload_idle_seconds
    while True:
        try:
            message = await gate.until_cut(anext(iterator), idle)
        except StopAsyncIteration:
            return
        except TimeoutError:
            observer.limit_breached(Limit.UPLOAD_IDLE)
            raise Unavailable(
                f"the upload sent nothing for {idle:.0f} s (server.caller_limits.upload_idle_seconds); send it again"
            ) from None
        yield datastream_payload(message)


class UploadTarget(Protocol):
    """What an upload is received into (a :class:`~fedagg.federation.federation.Federation`'s round, or an ingest
    replica's): each method as the federation's, called from the same place (the event loop, the I/O executor or
    the commit executor)."""

    def admit(self, collaborator: str, results: ResultsHeader) -> Admission: ...

    def note_ignored(self, admission: Admission) -> None: ...

    def open_intake(self, admission: Admission) -> UploadIntake: ...

    def absorb(self, intake: UploadIntake, data: memoryview, offset: int) -> None: ...

    def seal(self, intake: UploadIntake) -> None: ...

    def commit(self, intake: UploadIntake) -> Outcome: ...


def _retrieve(future: asyncio.Future[Outcome]) -> None:
    """Take a finished commit's exception (the federation logged it) so asyncio does not report it again."""
    if not future.cancelled():
        future.exception()


class UploadSlots:
    """Uploads open per (collaborator, task), at most ``per_task``. Event-loop only (no lock)."""

    def __init__(self, per_task: int, observer: ServerObserver) -> None:
        self._per_task = per_task
        self._observer = observer
        self._open: Counter[tuple[str, str]] = Counter()

    @contextlib.contextmanager
    def slot(self, collaborator: str, task: str) -> Iterator[None]:
        """Hold one of ``collaborator``'s upload slots for ``task`` (UNAVAILABLE when all are taken)."""
        key = (collaborator, task)
        if self._open[key] >= self._per_task:
            self._observer.limit_breached(Limit.CONCURRENT_UPLOADS)
            raise Unavailable(
                f"{collaborator!r} already has {self._open[key]} uploads of task {task[:64]!r} open "
                "(server.caller_limits.concurrent_uploads_per_task); send again once they end"
            )
        self._open[key] += 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]


class UploadReceiver:
    """State of one upload. Use :meth:`receive` once.

    Single owner: the receiver owns its decoder (used by one executor call at a time, awaited in turn) and its
    intake until it hands the intake to :meth:`UploadTarget.commit`, which owns (and disposes of) it from then on.
    """

    def __init__(
        self,
        federation: UploadTarget,
        authenticate: Authenticate,
        io_executor: Executor,
        commit_executor: Executor,
        *,
        header_bytes: int,
        decode_limits: DecodeLimits,
        slots: UploadSlots,
        observer: ServerObserver,
    ) -> None:
        self._federation = federation
        self._authenticate = authenticate
        self._io = io_executor
        self._commit = commit_executor
        self._header_bytes = header_bytes
        self._decoder = TaskResultsDecoder(decode_limits)
        self._header_area: list[memoryview] = []  # chunks received before admission (not copied)
        self._header_size = 0
        self._offset = 0
        self._intake: UploadIntake | None = None
        self._outcome: Outcome | None = None
        self._slots = slots
        self._observer = observer
        self._slot = contextlib.ExitStack()
        self.collaborator = ""

    async def receive(self, chunks: AsyncIterator[memoryview]) -> Outcome:
        """Consume the stream (or as much of it as needed) and commit it; return what became of it."""
        loop = asyncio.get_running_loop()
        with self._slot:
            try:
                async for data in chunks:
                    if data and await self._take(data):
                        break
                else:
                    await self._handle(self._decoder.finish())
                    if self._outcome is None and self._intake is not None:
                        await self._absorb(memoryview(b""))
                if self._outcome is not None:
                    return self._outcome
                intake = self._intake
                assert intake is not None, "a complete upload has been admitted"
                await loop.run_in_executor(self._io, self._federation.seal, intake)
                self._intake = None  # handed to the commit, which owns (and disposes of) it from here
                commit = in_current_context(self._federation.commit, intake)
                committed = loop.run_in_executor(self._commit, commit)
                committed.add_done_callback(_retrieve)  # a commit whose call went away still ends, quietly
                return await asyncio.shield(committed)  # never cancelled before it starts: it owns the intake
            finally:
                if self._intake is not None:
                    # Not handed to the commit: discard it (when the executor is gone, the restart clears it).
                    with contextlib.suppress(RuntimeError):
                        loop.run_in_executor(self._io, self._intake.discard)

    async def _take(self, data: memoryview) -> bool:
        """Process one chunk; True when the upload's fate is sealed and the rest need not be read.

        Before admission the chunk is decoded in pieces that keep the header area within ``header_bytes``, so at
        most that much is decoded before the sender is known.
        """
        while data:
            if self._intake is not None:  # admitted before this chunk: decode, check and spool it in one hop
                await self._decode_and_absorb(data)
                return self._intake.rejection is not None
            room = self._header_bytes - self._header_size
            if room <= 0:
                self._observer.limit_breached(Limit.HEADER_BYTES)
                raise InvalidRequest(
                    f"the upload's header area (everything before its first tensor) exceeds "
                    f"limits.header_bytes ({self._header_bytes} bytes)"
                )
            piece, data = data[:room], data[room:]
            self._header_area.append(piece)
            self._header_size += len(piece)
            events = await self._decoding(functools.partial(self._decoder.feed, piece))
            await self._handle(events)
            if self._outcome is not None:
                return True
            if self._intake is not None:
                await self._absorb(piece)
                if self._intake.rejection is not None:
                    return True
        return False

    async def _decode_and_absorb(self, piece: memoryview) -> None:
        """Once admitted: decode a chunk, check the tensors it begins and spool it, in one executor hop."""
        intake = self._intake
        assert intake is not None
        offset, self._offset = self._offset, self._offset + len(piece)

        def decode_and_absorb() -> None:
            for event in self._decoder.feed(piece):
                assert isinstance(event, TensorRecord), "the headers come before the first tensor"
                intake.tensor(event)
            self._federation.absorb(intake, piece, offset)

        await self._decoding(decode_and_absorb)
        failpoint("upload.chunk")

    async def _decoding(self, work: Callable[[], T]) -> T:
        """Run decoding ``work`` on the I/O executor, counting a decode limit it runs into as a breach."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._io, work)
        except LimitExceeded as error:
            self._observer.limit_breached(DECODE_LIMITS[error.limit])
            raise

    async def _absorb(self, data: memoryview) -> None:
        """Pass the upload's next bytes to its intake (the chunks held before admission first)."""
        pieces, self._header_area = self._header_area or [data], []
        for piece in pieces:
            if piece:
                await self._absorb_piece(piece)

    async def _absorb_piece(self, piece: memoryview) -> None:
        intake = self._intake
        assert intake is not None
        offset, self._offset = self._offset, self._offset + len(piece)
        await asyncio.get_running_loop().run_in_executor(
            self._io, self._federation.absorb, intake, piece, offset
        )
        failpoint("upload.chunk")

    async def _handle(self, events: list[ResultsEvent]) -> None:
        for count, event in enumerate(events, 1):
            if count % 256 == 0:
                await asyncio.sleep(0)  # many small tensors: let the others' calls run in between
            if isinstance(event, SenderHeader):
                self.collaborator = await self._authenticate(event.header)
            elif isinstance(event, ResultsHeader):
                await self._admit(event)
            elif self._intake is not None:
                self._intake.tensor(event)

    async def _admit(self, results: ResultsHeader) -> None:
        if not self.collaborator:
            self.collaborator = await self._authenticate(results.header)
        set_log_context(round_number=results.round_number, task=results.task_name[:64])
        self._slot.enter_context(self._slots.slot(self.collaborator, results.task_name))
        admission = self._federation.admit(self.collaborator, results)
        if not admission.accepted:
            self._ignore(admission)
            return
        loop = asyncio.get_running_loop()
        self._intake = await loop.run_in_executor(self._io, self._federation.open_intake, admission)

    def _ignore(self, admission: Admission) -> None:
        log.warning(
            "ignoring %s's results for %r: %s", self.collaborator, admission.task[:64], admission.message
        )
        self._federation.note_ignored(admission)
        self._outcome = Outcome(admission)
