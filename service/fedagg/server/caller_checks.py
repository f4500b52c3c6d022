"""Who is calling: authentication of collaborators and observers, with counted, delayed, rate-limited refusals."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from typing import Any, Protocol, cast

import grpc

from fedagg.federation.errors import NotFound
from fedagg.federation.plan import FederationPlan
from fedagg.logs import set_log_context
from fedagg.protocol import aggregator_pb2
from fedagg.server.auth import Authenticator, IdentityError, metadata_client_id, peer_common_name
from fedagg.server.observer import ServerObserver
from fedagg.server.refusals import RefusalLog

ServerContext = grpc.aio.ServicerContext[Any, Any]


def when_done(context: ServerContext, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the event loop when the call ends (answered, cancelled or failed)."""
    context.add_done_callback(cast("grpc.aio.DoneCallback[Any, Any]", lambda _context: callback()))


class CallerRegister(Protocol):
    """Where authenticated calls are noted (a federation, or an ingest replica), and the plan they are checked
    against."""

    @property
    def plan(self) -> FederationPlan: ...

    def contact_started(self, collaborator: str) -> None: ...

    def contact_ended(self, collaborator: str) -> None: ...


class CallerChecks:
    """Authenticates each call's caller; a refusal is counted, logged once per caller and reason, and delayed."""

    def __init__(
        self,
        authenticator: Authenticator,
        federation: CallerRegister,
        observer: ServerObserver,
        auth_failure_max_delay: float,
    ) -> None:
        self.authenticator = authenticator
        self._federation = federation
        self._observer = observer
        self._max_delay = auth_failure_max_delay
        self._refusals = RefusalLog()

    async def collaborator(self, header: aggregator_pb2.MessageHeader, context: ServerContext) -> str:
        """The collaborator ``header`` names, vouched for by the peer certificate; tracked as in contact."""
        try:
            collaborator = self.authenticator.authenticate(header, peer_common_name(context))
        except IdentityError as error:
            await self._refuse(error, context, header.sender)
            raise
        set_log_context(collaborator=collaborator)
        self._federation.contact_started(collaborator)
        when_done(context, functools.partial(self._federation.contact_ended, collaborator))
        return collaborator

    async def uploader(self, context: ServerContext) -> None:
        """Refuse an upload at once when the peer certificate names no collaborator (before reading it)."""
        try:
            self.authenticator.check_peer(peer_common_name(context))
        except IdentityError as error:
            await self._refuse(error, context)
            raise

    async def observer(self, experiment_name: str, context: ServerContext) -> str:
        """The observer (or collaborator) reading metrics, models or status of ``experiment_name``."""
        try:
            caller = self.authenticator.authorize_observer(
                peer_common_name(context), metadata_client_id(context)
            )
        except IdentityError as error:
            await self._refuse(error, context)
            raise
        plan = self._federation.plan
        if experiment_name not in ("", plan.name):
            raise NotFound(
                f"experiment {experiment_name!r} is not served here; this aggregator serves {plan.name!r}"
            )
        return caller

    async def _refuse(self, error: IdentityError, context: ServerContext, sender: str = "") -> None:
        """Count, log (rate-limited per caller) and delay a refusal; the caller then gets UNAUTHENTICATED."""
        self._observer.auth_failed(error.reason)
        caller = peer_common_name(context) or sender or context.peer()
        self._refusals.refused(caller, error.reason, str(error))
        if self._max_delay > 0:
            await asyncio.sleep(random.uniform(0, self._max_delay))
