"""One SendLocalTaskResults call, from the caller check to the reply's trailing metadata, for any upload target.

The standalone server receives into its federation, an ingest replica into its round
(:mod:`fedagg.tier.ingest_uploads`); both answer the same way: the caller's certificate is checked before anything
is read, the sender is authenticated from the upload's header, and an upload that was ignored or rejected is
answered OK with ``fedagg-contribution`` trailing metadata saying so (``ignored:<reason>``, ``rejected:<reason>``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

import grpc

from fedagg.federation.federation import Outcome
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.extensions import CONTRIBUTION_METADATA
from fedagg.server.caller_checks import CallerChecks
from fedagg.server.gate import CallGate
from fedagg.server.options import ServerOptions
from fedagg.server.upload import UploadReceiver, UploadSlots, UploadTarget, upload_payloads

ServerContext = grpc.aio.ServicerContext[Any, Any]


def outcome_metadata(outcome: Outcome) -> tuple[tuple[str, str], ...]:
    """The trailing metadata telling a client what became of its upload (none when it was used)."""
    if outcome.rejected is not None:
        return ((CONTRIBUTION_METADATA, f"rejected:{outcome.rejected}"),)
    if not outcome.admission.accepted:
        return ((CONTRIBUTION_METADATA, f"ignored:{outcome.admission.ignored}"),)
    return ()


class UploadCalls:
    """Receives each upload call into ``target``. Event-loop only; the executors do the disk and decoding work."""

    def __init__(
        self,
        target: UploadTarget,
        callers: CallerChecks,
        options: ServerOptions,
        gate: CallGate,
        io_executor: Executor,
        commit_executor: Executor,
    ) -> None:
        self._target = target
        self._callers = callers
        self._options = options
        self._gate = gate
        self._io = io_executor
        self._commit = commit_executor
        self._slots = UploadSlots(options.caller_limits.concurrent_uploads_per_task, options.observer)

    async def receive(self, chunks: AsyncIterator[bytes], context: ServerContext) -> str:
        """Receive one upload call's stream; return the collaborator it came from (to address the reply)."""
        await self._callers.uploader(context)

        async def authenticate(header: aggregator_pb2.MessageHeader) -> str:
            return await self._callers.collaborator(header, context)

        options = self._options
        limits = options.receive_limits
        receiver = UploadReceiver(
            self._target,
            authenticate,
            self._io,
            self._commit,
            header_bytes=limits.header_bytes,
            decode_limits=limits.decode_limits(),
            slots=self._slots,
            observer=options.observer,
        )
        outcome = await receiver.receive(
            upload_payloads(chunks, self._gate, options.caller_limits, options.observer)
        )
        metadata = outcome_metadata(outcome)
        if metadata:
            context.set_trailing_metadata(metadata)
        return receiver.collaborator
