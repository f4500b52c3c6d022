"""``fedagg status --ops``: leadership as one replica's ops port tells it (fedagg.protocol.ops_leadership)."""

from __future__ import annotations

import sys
from typing import Any

import grpc

from fedagg.cli.exits import EXIT_CONNECTION, EXIT_REFUSED
from fedagg.protocol.ops_leadership import ask_leadership


def replica_leadership(address: str, timeout: float) -> dict[str, Any]:
    """The replica's leadership document. No answer is one ``fedagg: ...`` line and exit status 3 when the ops
    port or the lease behind it is unavailable (unreachable, timed out), 1 for any other refusal."""
    try:
        return ask_leadership(address, timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        unavailable = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        print(
            f"fedagg: no leadership from the ops port {address} ({code.name}): {details}",
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
