"""Leadership as ``fedagg status --ops`` shows it, asked of one replica's ops port (leader or standby alike).

One unary method on the ops port (``fedagg.ops.v1.Leadership/Describe``, :mod:`fedagg.protocol.ops_leadership`)
answers a document:

- ``election``: where the lease is (``ha.enabled``), or ``"state lock"`` (the lock alone elects);
- ``identity``: this replica's (``ha.identity``; null without an election);
- ``role``: ``leader`` (holds the lock and, with an election, the lease) or ``standby``;
- ``leader``: the lease's holder (null while vacant), or without an election who holds the state lock;
- ``term``: the lease's ``leaseTransitions`` (null without an election);
- ``transitions_seen``: takeovers this replica saw on the lease, its own included (as
  ``fedagg_leader_transitions_total``; null without an election).

The lease is read when asked (a standby waiting on the lock never reads it otherwise), off the event loop; a lease
that cannot be read answers UNAVAILABLE naming the lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.ops.leadership import Leadership
from fedagg.ops.lease import LeaseStoreError
from fedagg.protocol import leadership_pb2, leadership_pb2_grpc
from fedagg.protocol.ops_leadership import report_from_document

LEASE_READ_SECONDS = 5.0


def leadership_document(leadership: Leadership | None, lock: StateDirectoryLock | None) -> dict[str, Any]:
    """This replica's leadership (module docstring). Blocks on the lease store; raises LeaseStoreError."""
    holds_lock = lock is None or lock.held
    if leadership is None:
        return {
            "election": "state lock",
            "identity": None,
            "role": "leader" if holds_lock else "standby",
            "leader": lock.holder() if lock is not None else None,
            "term": None,
            "transitions_seen": None,
        }
    record = leadership.read_lease(LEASE_READ_SECONDS)
    return {
        "election": leadership.description,
        "identity": leadership.identity,
        "role": "leader" if holds_lock and leadership.leading else "standby",
        "leader": record.holder if record is not None and not record.vacant else None,
        "term": record.transitions if record is not None else None,
        "transitions_seen": leadership.metrics.transitions_seen,
    }


class LeadershipService(leadership_pb2_grpc.LeadershipServicer):
    """Answers Describe with ``describe()``, which blocks on the lease store: run on the default executor."""

    def __init__(self, describe: Callable[[], dict[str, Any]]) -> None:
        self._describe = describe

    async def Describe(
        self,
        request: leadership_pb2.DescribeLeadershipRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> leadership_pb2.LeadershipReport:
        try:
            document = await asyncio.get_running_loop().run_in_executor(None, self._describe)
        except LeaseStoreError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read the lease: {error}")
        return report_from_document(document)


def register_leadership(server: grpc.aio.Server, describe: Callable[[], dict[str, Any]]) -> None:
    """Serve ``describe()`` as Describe on ``server``."""
    leadership_pb2_grpc.add_LeadershipServicer_to_server(LeadershipService(describe), server)
