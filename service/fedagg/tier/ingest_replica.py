"""An ingest replica, assembled: its link to the root, its federation port, its uploads and its round watch.

:class:`IngestReplica` is what ``fedagg serve`` runs for the ``ingest`` role. It owns:

* the :class:`~fedagg.tier.root_link.RootLink` (one mTLS channel to the root's tier address, with the replica's own
  tier certificate), shared by the claims, the deliveries, the round notices and the relayed collaborator calls;
* the federation port (:class:`~fedagg.tier.ingest_server.IngestServer`) with the federation's server certificate;
* the uploads (:class:`~fedagg.tier.ingest_uploads.IngestUploads`), the round's model server and the round watch
  (:class:`~fedagg.tier.round_watch.RoundWatch`), which state lives under ``state_dir`` (``spool/``, ``models/``,
  ``tier-generation``);
* own results (:mod:`fedagg.tier.own_results_holder`): served to their collaborator from the spool, and to the
  root's asks on behalf of another replica (:class:`~fedagg.tier.own_results_holder.AskAnswers`);
* two executors: the I/O one (decoding, spooling, models) and the one-thread commit executor (spool order, claims
  awaited, folds).

Readiness (:attr:`IngestReplica.ready`): the root's round notices arrive and the open round's model is in place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from fedagg.federation.plan import FederationPlan
from fedagg.federation.serving import TensorServer
from fedagg.federation.spool import Spool
from fedagg.protocol import tier_pb2
from fedagg.server.options import ServerOptions
from fedagg.server.tls import CertificateSource
from fedagg.tier.events import TierListener
from fedagg.tier.forwarding import RootForwarder
from fedagg.tier.ingest_round import Plain, next_generation
from fedagg.tier.ingest_server import IngestServer
from fedagg.tier.ingest_uploads import IngestUploads
from fedagg.tier.model_files import ModelCopies
from fedagg.tier.own_results_holder import AskAnswers, HeldResults
from fedagg.tier.root_link import LinkTimings, RootLink, TierRefusal
from fedagg.tier.round_watch import RoundWatch

log = logging.getLogger(__name__)


class IngestReplica:
    """One ingest replica (module docstring). Construct, then :meth:`start` and :meth:`stop` on one event loop.

    Args:
        plan: the federation's plan (the same the root runs).
        replica: this replica's name: the CN of its tier client certificate.
        state_dir: its persistent directory (spool, model copies, generation).
        root_address: the root's tier address (``host:port``), which also serves the root's federation port.
        root_credentials: the replica's tier client credentials (CA of the root, its certificate and key).
        certificate_source: the federation's server certificate and collaborator CA (mutual TLS).
        port: the federation port (0 picks a free one: see :attr:`port` after :meth:`start`).
        options: the server settings (bind address, limits, interceptors, extra services such as health).
        timings: the link's deadlines, patience and back-off.
        root_server_name: the name the root's certificate is checked against, when not the address's host.
        listener: tier events for metrics.
        plain: which tensors are summed unweighted (FedCurv's Fisher terms), by (task, tensor).
    """

    def __init__(
        self,
        plan: FederationPlan,
        replica: str,
        state_dir: Path,
        root_address: str,
        root_credentials: grpc.ChannelCredentials,
        certificate_source: CertificateSource,
        *,
        port: int = 0,
        options: ServerOptions | None = None,
        timings: LinkTimings | None = None,
        root_server_name: str | None = None,
        listener: TierListener | None = None,
        plain: Plain | None = None,
    ) -> None:
        self._options = options = options or ServerOptions()
        self._plan = plan
        self._replica = replica
        self._state_dir = state_dir
        self._plain = plain
        self._io = ThreadPoolExecutor(options.executor_workers, thread_name_prefix="fedagg-io")
        self._commit = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedagg-commit")
        self.link = RootLink(root_address, root_credentials, timings, root_server_name, listener)
        self._spool = Spool(state_dir / "spool")
        self.uploads = IngestUploads(plan, self._spool, self._granted, root_address)
        self._tensors = TensorServer()
        held = HeldResults(self.uploads, self._spool)
        self._answers = AskAnswers(self.link, held, plan.collaborators, self._io)
        self._server = IngestServer(
            plan,
            self.uploads,
            self._tensors,
            RootForwarder(self.link),
            self._reached,
            certificate_source,
            port,
            options,
            self._io,
            self._commit,
            held,
            self.link.fetch_own_results,
        )
        self.watch: RoundWatch | None = None
        self._watching: asyncio.Task[None] | None = None
        self._answering: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The federation port (the bound one once started)."""
        return self._server.port

    @property
    def ready(self) -> bool:
        """gRPC readiness: the root's notices arrive and the open round's model is in place. Cheap (no I/O, no
        lock held long): the assembly polls it into the health service's readiness."""
        return self.watch is not None and self.watch.ready

    async def acted_on(self, round_number: int, phase: tier_pb2.RoundPhase.ValueType) -> None:
        """Return once the root's notice (round_number, phase) has been acted on (call after :meth:`start`)."""
        assert self.watch is not None, "started"
        await self.watch.acted_on(round_number, phase)

    async def root_gone_after_finish(self) -> None:
        """Return once the root finished the experiment and then went away (call after :meth:`start`)."""
        assert self.watch is not None, "started"
        await self.watch.root_gone_after_finish()

    async def start(self) -> None:
        """Prepare the state directory, follow the root and serve the collaborators."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._spool.prepare)
        generation = await loop.run_in_executor(self._io, next_generation, self._state_dir)
        copies = await loop.run_in_executor(self._io, ModelCopies, self._state_dir / "models")
        self.watch = RoundWatch(
            self.link,
            self.uploads,
            self._tensors,
            copies,
            self._spool,
            self._replica,
            generation,
            self._plan.limits,
            self._recovered_claim,
            self._io,
            self._commit,
            self._plain,
        )
        self._watching = asyncio.create_task(self.watch.run())
        self._answering = asyncio.create_task(self._answers.run())
        await self._server.start()
        log.info(
            "ingest replica %s (generation %d) follows the root %s",
            self._replica,
            generation,
            self.link.address,
        )

    async def stop(self, grace: float | None) -> None:
        """Stop serving (calls in flight get ``grace`` seconds), stop following the root, close the link."""
        await self._server.stop(grace)
        for task in (self._watching, self._answering):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._answers.stop()
        if self.watch is not None:
            await self.watch.stop()
        await self.link.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._io.shutdown, cancel_futures=True))
        await loop.run_in_executor(None, self._commit.shutdown)

    async def _reached(self, round_number: int, timeout: float) -> bool:
        """Whether this replica serves ``round_number`` (or a later one, or the end) within ``timeout`` seconds."""
        return self.watch is not None and await self.watch.reached(round_number, timeout)

    async def _granted(self, collaborator: str, round_number: int, task: str, rejected: str = "") -> bool:
        """Claim an upload (or report it rejected) at the root: whether this replica holds it (raises as the link
        does)."""
        return (await self.link.claim(collaborator, round_number, task, rejected)).granted

    async def _recovered_claim(self, collaborator: str, round_number: int, task: str) -> bool:
        """Claim a spooled upload again after a restart; one the root refuses (FAILED_PRECONDITION) is dropped."""
        try:
            return await self._granted(collaborator, round_number, task)
        except TierRefusal as refusal:
            if refusal.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            log.warning(
                "round %d: the root refuses the claim of %s's %r: %s; dropped",
                round_number,
                collaborator,
                task,
                refusal,
            )
            return False
