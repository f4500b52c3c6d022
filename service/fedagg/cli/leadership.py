"""``fedagg status --ops``: leadership as one replica's ops port tells it (fedagg.protocol.ops_leadership), and at
a tier's root its ingest replicas (fedagg.protocol.ops_tier)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fedagg.cli.exits import EXIT_CONNECTION, EXIT_REFUSED
from fedagg.cli.formatting import ago, table
from fedagg.protocol.ops_leadership import ask_leadership
from fedagg.protocol.ops_tier import ask_tier

T = TypeVar("T")


def replica_leadership(address: str, timeout: float) -> dict[str, Any]:
    """The replica's leadership document. No answer is one ``fedagg: ...`` line and exit status 3 when the ops
    port or the lease behind it is unavailable (unreachable, timed out), 1 for any other refusal."""
    return _asked("leadership", lambda: ask_leadership(address, timeout), address)


def root_tier(address: str, timeout: float) -> dict[str, Any] | None:
    """A tier root's report of its ingest replicas (None from any other process); errors as for leadership."""
    return _asked("tier report", lambda: ask_tier(address, timeout), address)


def tier_lines(document: dict[str, Any]) -> str:
    """The replicas in the root's current round, as a table."""
    rows = [
        [
            state["replica"],
            str(state["claimed"]),
            f"yes (generation {state['generation']})" if state["delivered"] else "no",
            "never" if state["seconds_since_contact"] is None else ago(state["seconds_since_contact"]),
            "LOST" if state["lost"] else "-",
        ]
        for state in document["replicas"]
    ]
    header = f"tier: round {document['round']}, {len(rows)} ingest replica(s)"
    return header + "\n" + table(rows, ["replica", "claimed", "partial delivered", "last contact", "lost"])


def _asked(what: str, ask: Callable[[], T], address: str) -> T:
    try:
        return ask()
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        unavailable = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        print(
            f"fedagg: no {what} from the ops port {address} ({code.name}): {details}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_CONNECTION if unavailable else EXIT_REFUSED) from None


def leadership_line(address: str, document: dict[str, Any]) -> str:
    """One line: this replica's role and identity, who leads, the term and the transitions it saw."""
    who = document.get("identity") or address
    if document.get("term") is None:  # the state lock alone elects
        holder = document.get("leader") or "unknown"
        return f"leadership: {who} is the {document.get('role')} (state lock held by {holder})"
    leader = document.get("leader") or "nobody (the lease is vacant)"
    return (
        f"leadership: {who} is the {document.get('role')}; leader {leader}, term {document['term']} "
        f"(leaseTransitions), {document.get('transitions_seen')} transition(s) seen by {who}; "
        f"{document.get('election')}"
    )
