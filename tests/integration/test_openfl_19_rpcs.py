"""What OpenFL 1.8/1.9 collaborators add on the wire: Ping, InteropRelay, and fetching their own results."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedagg.federation.events import ExperimentStatus
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.codec import decode_tensor
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import zero_model
from tests.support.servers import (
    AGGREGATOR_UUID,
    FEDERATION_UUID,
    ServerThread,
    make_federation,
    make_plan,
    raw_stub,
    refusal,
    serving,
)
from tests.support.uploads import TASKS, submit, weights


def header(sender: str) -> aggregator_pb2.MessageHeader:
    return aggregator_pb2.MessageHeader(
        sender=sender, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
    )


def state(status: ExperimentStatus) -> ExperimentStatus:
    """The status without the collaborators' last contact."""
    return replace(status, collaborators=tuple(replace(c, last_contact=None) for c in status.collaborators))


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ServerThread]:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())
    with serving(federation, pki) as thread:
        yield thread


def test_ping_is_authenticated_and_answered_with_the_header(server: ServerThread, pki: Pki) -> None:
    channel, one = raw_stub(server.address, pki.client("one"))
    impostor_channel, impostor = raw_stub(server.address, pki.client("rogue"))
    before = server.server.aggregator.describe()

    reply = one.Ping(aggregator_pb2.PingRequest(header=header("one")))
    refused = refusal(lambda: impostor.Ping(aggregator_pb2.PingRequest(header=header("rogue"))))
    server.run(server.server.stop_accepting)
    draining = refusal(lambda: one.Ping(aggregator_pb2.PingRequest(header=header("one"))))
    channel.close()
    impostor_channel.close()

    assert reply.header == aggregator_pb2.MessageHeader(
        sender=AGGREGATOR_UUID, receiver="one", federation_uuid=FEDERATION_UUID
    )
    assert refused == (grpc.StatusCode.UNAUTHENTICATED, "collaborator 'rogue' is not authorized here")
    assert draining[0] == grpc.StatusCode.UNAVAILABLE
    assert state(server.server.aggregator.describe()) == state(before), (
        "a ping changes nothing but last contact"
    )


def test_interop_relay_is_unimplemented_with_a_reason(server: ServerThread, pki: Pki) -> None:
    channel, one = raw_stub(server.address, pki.client("one"))

    code, details = refusal(lambda: one.InteropRelay(aggregator_pb2.InteropMessage(header=header("one"))))
    channel.close()

    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "does not support Flower interop" in details


@pytest.mark.parametrize("delta", [False, True], ids=["full", "delta"])
def test_a_restarted_collaborator_fetches_its_own_results_of_the_round(
    server: ServerThread, pki: Pki, delta: bool
) -> None:
    federation = server.server.aggregator
    submit(federation, "one", 0, TASKS[1], 10, [weights("w", 2.5, (2, 3), 0, delta=delta)])
    channel, one = raw_stub(server.address, pki.client("one"))
    other_channel, two = raw_stub(server.address, pki.client("two"))

    def ask(stub: object, sender: str, tags: list[str]) -> object:
        request = aggregator_pb2.GetAggregatedTensorRequest(
            header=header(sender), tensor_name="w", round_number=0, tags=tags, require_lossless=True
        )
        return stub.GetAggregatedTensor(request)  # type: ignore[attr-defined]

    reply = ask(one, "one", ["one", "trained"])
    reordered = ask(one, "one", ["trained", "one"])
    denied = refusal(lambda: ask(two, "two", ["one", "trained"]))
    missing = refusal(lambda: ask(two, "two", ["two", "trained"]))
    channel.close()
    other_channel.close()

    tensor = reply.tensor  # type: ignore[attr-defined]
    assert (list(tensor.tags), tensor.round_number, tensor.lossless) == (
        ["compressed", "one", "trained"],
        0,
        True,
    )
    np.testing.assert_array_equal(decode_tensor(tensor), np.full((2, 3), 2.5))
    assert reordered == reply, "tags are matched as a set"
    assert denied[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "may only fetch its own results" in denied[1]
    assert missing[0] == grpc.StatusCode.NOT_FOUND
