"""The ops port's leadership report as servers and ``fedagg status --ops`` share it (grpc and protobuf only, so the
client-side install has it): ``fedagg.ops.v1.Leadership/Describe`` (protos/fedagg/ops/v1/leadership.proto), and the
plain document both sides work with (:mod:`fedagg.ops.leadership_report` says what each key means; an optional field
the replica leaves unset is ``None``)."""

from __future__ import annotations

from typing import Any

import grpc

from fedagg.protocol import leadership_pb2, leadership_pb2_grpc

SERVICE = leadership_pb2.DESCRIPTOR.services_by_name["Leadership"].full_name


def report_from_document(document: dict[str, Any]) -> leadership_pb2.LeadershipReport:
    """The reply for ``document`` (``None`` values left unset)."""
    return leadership_pb2.LeadershipReport(
        **{key: value for key, value in document.items() if value is not None}
    )


def document_from_report(report: leadership_pb2.LeadershipReport) -> dict[str, Any]:
    """The document of ``report``: every key present, ``None`` for an optional field the replica left unset."""
    return {
        "election": report.election,
        "identity": report.identity if report.HasField("identity") else None,
        "role": report.role,
        "leader": report.leader if report.HasField("leader") else None,
        "term": report.term if report.HasField("term") else None,
        "transitions_seen": report.transitions_seen if report.HasField("transitions_seen") else None,
    }


def ask_leadership(address: str, timeout: float) -> dict[str, Any]:
    """The document of the replica whose ops port is ``address`` (plaintext, as the ops port is); raises
    grpc.RpcError."""
    with grpc.insecure_channel(address) as channel:
        stub = leadership_pb2_grpc.LeadershipStub(channel)
        reply = stub.Describe(
            leadership_pb2.DescribeLeadershipRequest(), timeout=timeout, wait_for_ready=True
        )
    return document_from_report(reply)
