"""Leadership on the ops port (``fedagg status --ops``): the document a replica answers, over a real gRPC server on
loopback, and what the CLI makes of an answer or of no answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.ports import free_port
from fedagg.cli.exits import EXIT_CONNECTION
from fedagg.cli.leadership import leadership_line, replica_leadership
from fedagg.federation.state_lock import StateDirectoryLock
from fedagg.ops.leadership_report import leadership_document, register_leadership
from fedagg.ops.lease import LeaseStoreError
from fedagg.protocol.ops_leadership import ask_leadership

ELECTED = {
    "election": "etcd key /fedagg/leases/x at http://127.0.0.1:1",
    "identity": "replica1",
    "role": "standby",
    "leader": "replica0",
    "term": 7,
    "transitions_seen": 2,
}


def test_without_an_election_the_state_lock_decides_the_role(tmp_path: Path) -> None:
    holder, waiting = StateDirectoryLock(tmp_path), StateDirectoryLock(tmp_path)
    assert holder.try_acquire()
    assert not waiting.try_acquire()  # flock: another open file description of the same lock file
    try:
        leads, waits = leadership_document(None, holder), leadership_document(None, waiting)
    finally:
        holder.release()

    assert (leads["role"], waits["role"]) == ("leader", "standby")
    assert leads["leader"] == waits["leader"] == holder.holder()
    assert leads["leader"].startswith("pid ")
    assert (waits["election"], waits["identity"], waits["term"], waits["transitions_seen"]) == (
        "state lock",
        None,
        None,
        None,
    )
    assert leadership_line("10.0.0.2:9090", waits) == (
        f"leadership: 10.0.0.2:9090 is the standby (state lock held by {holder.holder()})"
    )


def ask_served(describe: Any) -> dict[str, Any]:
    """Serve ``describe`` on a real loopback gRPC server and ask it as ``fedagg status --ops`` does."""

    async def main() -> dict[str, Any]:
        server = grpc.aio.server()
        register_leadership(server, describe)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.to_thread(ask_leadership, f"127.0.0.1:{port}", 10)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def test_the_document_crosses_the_ops_port_with_its_integers() -> None:
    answer = ask_served(lambda: ELECTED)

    assert answer == ELECTED
    assert isinstance(answer["term"], int)
    assert leadership_line("x", answer) == (
        "leadership: replica1 is the standby; leader replica0, term 7 (leaseTransitions), 2 transition(s) seen "
        "by replica1; etcd key /fedagg/leases/x at http://127.0.0.1:1"
    )
    vacant = {**ELECTED, "leader": None}
    assert "leader nobody (the lease is vacant), term 7" in leadership_line("x", vacant)


def test_an_unreadable_lease_is_unavailable_naming_it() -> None:
    def describe() -> dict[str, Any]:
        raise LeaseStoreError("etcd key /fedagg/leases/x at http://127.0.0.1:1: connection refused")

    with pytest.raises(grpc.RpcError) as raised:
        ask_served(describe)

    assert isinstance(raised.value, grpc.Call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == (
        "cannot read the lease: etcd key /fedagg/leases/x at http://127.0.0.1:1: connection refused"
    )


def test_an_ops_port_nobody_listens_on_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"

    with pytest.raises(SystemExit) as exited:
        replica_leadership(address, 0.5)

    assert exited.value.code == EXIT_CONNECTION
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedagg: no leadership from the ops port {address} (DEADLINE_EXCEEDED): "), line
